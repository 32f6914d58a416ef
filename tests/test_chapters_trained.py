"""Where the whole-model chapters get their model (tinymaskrcnn/chapters/trained.py): the run
folder they pick, the title every picture carries, and the departures table read from the code."""
import json

import pytest

from tinymaskrcnn import engine
from tinymaskrcnn.chapters import trained


def _run(folder, iterations=1900, ap50=0.85, finished=True, **config):
    folder.mkdir(parents=True)
    (folder / "checkpoint.npz").write_bytes(b"")
    (folder / "config.json").write_text(json.dumps({"model": trained.MODEL, "train_ann": None, "data": None,
                                                    "iterations": iterations, **config}))
    if finished:
        (folder / "metrics.json").write_text(json.dumps({"segm": {"AP50": ap50}, "bbox": {"AP50": ap50}}))
    return folder


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setattr(trained, "ROOT", tmp_path)
    monkeypatch.delenv(trained.RUN_VARIABLE, raising=False)
    return tmp_path / "runs"


def test_find_run_takes_the_newest_finished_shapes_run(runs):
    assert trained.find_run() is None
    old = _run(runs / "a")
    _run(runs / "b", finished=False)                      # still training: no metrics.json yet
    _run(runs / "c", train_ann="coco.json")               # not the shapes set
    _run(runs / "d", model="maskrcnn_resnet50_fpn")       # not the main job's model
    assert trained.find_run() == old
    assert trained.run_summary(old) == (1900, {"segm": {"AP50": 0.85}, "bbox": {"AP50": 0.85}},
                                        "trained, 1900 iterations, mask AP50 0.85")


def test_the_variable_names_the_run_and_must_hold_one(runs, monkeypatch):
    named = _run(runs / "x" / "mine", iterations=40, ap50=0.02)
    _run(runs / "newer")
    monkeypatch.setenv(trained.RUN_VARIABLE, "runs/x/mine")          # relative to the checkout
    assert trained.find_run() == named
    monkeypatch.setattr(trained, "QUICK", True)
    assert trained.shown_run() == named                                # named: shown even in quick mode
    monkeypatch.setenv(trained.RUN_VARIABLE, str(runs / "missing"))
    with pytest.raises(FileNotFoundError, match="does not hold a finished shapes run"):
        trained.find_run()


def test_quick_mode_shows_random_weights_and_says_so(runs, monkeypatch):
    _run(runs / "a")
    monkeypatch.setattr(trained, "QUICK", True)
    assert trained.shown_run() is None
    got = trained.trained_model()
    assert not got.trained and got.title == "random weights (quick mode)" and got.metrics_jsonl is None
    assert got.class_names == ["__background__", "circle", "square", "triangle"]
    assert not got.model.training


def test_ensure_trained_run_trains_only_when_there_is_none(runs, monkeypatch):
    def train(config):
        raise AssertionError("trained although a run exists")

    monkeypatch.setattr(engine, "train", train)
    existing = _run(runs / "a")
    assert trained.ensure_trained_run() == existing


def test_departures_are_the_codes_values_with_a_reason_each(monkeypatch):
    rows = {row[0]: row[1:] for row in trained.departures()}
    assert list(rows) == list(engine.SHAPES_MODEL_DEFAULTS)
    assert rows["box_positive_fraction"][:3] == ("0.5", "0.25", "0.25")
    assert rows["fpn_channels"][2] == "256" and rows["norm"][2] == "FrozenBatchNorm2d"
    assert rows["mask_batch_size_per_image"][1] == "every positive RoI"
    monkeypatch.setitem(engine.SHAPES_MODEL_DEFAULTS, "rpn_nms_thresh", 0.6)   # a default without a reason
    with pytest.raises(AssertionError, match="say why for each"):
        trained.departures()
