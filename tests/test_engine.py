"""The training and evaluation loops on a tiny shapes set and a tiny model: a run stopped and
resumed ends bit-identical to one that never stopped; a NaN loss stops training with an error
naming the iteration, the term, the settings and what to try, and leaves the last checkpoint
loadable and named with how to resume; a run that cannot start leaves no folder, and a start
clears what a killed run left half written; evaluation writes COCOeval metrics; torchvision
weights load with mismatched heads left as built."""
import dataclasses
import json
import math

import numpy as np
import pytest

from tinymaskrcnn import engine, weights
from tinymaskrcnn.data import CocoDetection, make_shapes_dataset

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on NumPy 2

# small enough that an iteration takes a fraction of a second, large enough to be Mask R-CNN
TINY_MODEL = dict(min_size=64, max_size=96, fpn_channels=16, representation_size=32, mask_channels=16,
                  anchor_sizes=(8, 16, 32, 64, 128), rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50,
                  rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20, box_batch_size_per_image=32)


def make_tiny_shapes(root):
    """8 training and 4 val images of 64x64 in COCO layout under ``root``."""
    return make_shapes_dataset(root, num_train=8, num_val=4, image_size=(64, 64), max_objects=3)


def tiny_config(data, out_dir, **overrides):
    # one process: these tests patch the loop in this process (several: tests/test_mpi.py)
    values = dict(data=str(data), model_kwargs=dict(TINY_MODEL), iterations=4, batch_size=2, lr=0.01, processes=1,
                  warmup_iters=1, checkpoint_period=2, num_predictions=0, out_dir=str(out_dir), progress=False)
    values.update(overrides)
    return engine.TrainConfig(**values)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine") / "shapes"
    make_tiny_shapes(root)
    return root


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# with several processes: tests/test_mpi.py (a rank killed, the run resumed)
@pytest.mark.parametrize("optimizer, processes", [("adamw", 1), ("sgd", 1)])
def test_resume_is_bit_identical(shapes_root, tmp_path, monkeypatch, optimizer, processes):
    straight = engine.train(tiny_config(shapes_root, tmp_path / "straight", optimizer=optimizer, processes=processes))

    # the interrupted run dies during iteration 3, after the checkpoint of iteration 2
    append = engine.append_jsonl

    def interrupt(path, record):
        append(path, record)
        if record.get("iteration") == 3 and "eval" not in record:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine.loop, "append_jsonl", interrupt)
    with pytest.raises(KeyboardInterrupt):
        engine.train(tiny_config(shapes_root, tmp_path / "stopped", optimizer=optimizer, processes=processes))
    monkeypatch.setattr(engine.loop, "append_jsonl", append)
    assert weights.load(tmp_path / "stopped" / engine.CHECKPOINT)["iteration"] == 2
    resumed = engine.train(tiny_config(shapes_root, tmp_path / "stopped", optimizer=optimizer, processes=processes,
                                       resume=True))

    a, b = weights.load(straight["checkpoint"]), weights.load(resumed["checkpoint"])
    assert a["iteration"] == b["iteration"] == 4
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert np.array_equal(a["model"][key], b["model"][key]), key
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for index, state in a["optimizer"]["state"].items():
        assert state.keys() == b["optimizer"]["state"][index].keys() and state
        for name in state:
            assert np.array_equal(state[name], b["optimizer"]["state"][index][name]), (index, name)
    assert a["rng"] == b["rng"] and a["loader"] == b["loader"] and a["scheduler"] == b["scheduler"]
    # the log of the resumed run has each iteration once, with the same losses
    train_a = [r for r in _records(tmp_path / "straight") if "loss" in r]
    train_b = [r for r in _records(tmp_path / "stopped") if "loss" in r]
    assert [r["iteration"] for r in train_b] == [1, 2, 3, 4]
    assert [r["loss"] for r in train_a] == [r["loss"] for r in train_b]
    assert straight["metrics"] == resumed["metrics"]


def test_data_parallel_drops_an_epochs_last_single_image(shapes_root, tmp_path):
    # 8 training images in batches of 7: without dropping the remainder, iteration 2 would be a
    # batch of one image, which cannot be split between two processes
    result = engine.train(tiny_config(shapes_root, tmp_path / "run", batch_size=7, iterations=2, processes=2,
                                      checkpoint_period=0))
    assert weights.load(result["checkpoint"])["iteration"] == 2
    assert [r["iteration"] for r in _records(tmp_path / "run") if "loss" in r] == [1, 2]


@pytest.mark.parametrize("clip", [10.0, 0.0])
def test_nan_loss_stops_with_the_iteration_and_term(shapes_root, tmp_path, monkeypatch, clip):
    build = engine.build_model

    def build_poisoned(*args, **kwargs):
        model = build(*args, **kwargs)
        forward, calls = model.forward, []

        def poisoned(images, targets=None, **kw):
            out = forward(images, targets, **kw)
            if model.training:
                calls.append(1)
                if len(calls) == 3:
                    out["loss_mask"] = out["loss_mask"] * float("nan")
            return out

        object.__setattr__(model, "forward", poisoned)
        return model

    monkeypatch.setattr(engine.loop, "build_model", build_poisoned)
    with pytest.raises(FloatingPointError, match=r"iteration 3: loss_mask = nan") as info:
        engine.train(tiny_config(shapes_root, tmp_path / "run", clip_grad_norm=clip))
    message = str(info.value)
    assert str(tmp_path / "run" / engine.CHECKPOINT) in message
    # what was on, and what to try given that
    assert "a lower lr (peak 0.01" in message and "a longer warmup (warmup_iters 1)" in message
    if clip:
        assert "a lower clip_grad_norm (gradients were clipped at norm 10)" in message
        assert "clip_grad_norm, e.g. 10" not in message
    else:
        assert "gradient clipping (clip_grad_norm, e.g. 10; it was off)" in message
    # the checkpoint it can continue from, and how
    (note,) = info.value.__notes__
    assert f"last checkpoint is {tmp_path / 'run' / engine.CHECKPOINT} (iteration 2)" in note
    assert f"resume=True, out_dir={str(tmp_path / 'run')!r}" in note
    monkeypatch.setattr(engine.loop, "build_model", build)
    model, state = engine.load_model(tmp_path / "run" / engine.CHECKPOINT)
    assert state["iteration"] == 2  # the last good one; nothing was written from the bad state
    assert all(np.isfinite(v).all() for v in model.state_dict().values())
    assert [r["iteration"] for r in _records(tmp_path / "run")] == [1, 2]


def test_evaluate_writes_coco_metrics(shapes_root, tmp_path):
    result = engine.train(tiny_config(shapes_root, tmp_path / "run", iterations=2, num_predictions=1))
    model, _ = engine.load_model(result["checkpoint"])
    val = CocoDetection(*engine.coco_layout(shapes_root)["val"])
    metrics = engine.evaluate(model, val, tmp_path / "eval", progress=False, verbose=False)
    assert set(metrics) == {"bbox", "segm"} and set(metrics["segm"]) >= {"AP", "AP50", "AP75"}
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == metrics
    assert isinstance(json.loads((tmp_path / "eval" / "results.json").read_text()), list)
    # the loaded model evaluates as the trained one did at the end of the run
    assert metrics == result["metrics"]
    assert all(math.isfinite(v) for t in metrics.values() for v in t.values())


def test_load_model_names_the_file_for_another_architecture(shapes_root, tmp_path):
    result = engine.train(tiny_config(shapes_root, tmp_path / "run", iterations=2, checkpoint_period=0))
    state = weights.load(result["checkpoint"])
    state["model_kwargs"] = {**state["model_kwargs"], "fpn_channels": 24}
    other = tmp_path / "other.npz"
    weights.save(other, state)
    with pytest.raises(ValueError, match=r"other\.npz does not fit maskrcnn_resnet18_fpn.*another architecture"):
        engine.load_model(other)
    plain = tmp_path / "plain.npz"
    weights.save(plain, {"model": state["model"]})
    with pytest.raises(ValueError, match=r"plain\.npz .*not one written by training"):
        engine.load_model(plain)
    cut = tmp_path / "cut.npz"
    weights.save(cut, {k: v for k, v in state.items() if k != "model_name"})
    with pytest.raises(ValueError, match=r"cut\.npz is a training checkpoint without model_name"):
        engine.load_model(cut)
    # resuming with another architecture names the checkpoint and the setting that differs
    with pytest.raises(ValueError, match=r"checkpoint\.npz: a resumed run continues as it was recorded, but these "
                                         r"settings differ: model_kwargs\.mask_channels 8 \(recorded: 16\)\. "):
        engine.train(dataclasses.replace(tiny_config(shapes_root, tmp_path / "run", iterations=2, checkpoint_period=0,
                                                     resume=True), model_kwargs={**TINY_MODEL, "mask_channels": 8}))


def test_bad_config_is_named(tmp_path):
    with pytest.raises(ValueError, match="model='resnet'"):
        engine.train(engine.TrainConfig(model="resnet", out_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="optimizer='adam'"):
        engine.train(engine.TrainConfig(optimizer="adam", out_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="weight_decay=-0.1"):
        engine.train(engine.TrainConfig(weight_decay=-0.1, out_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="resume=True needs out_dir"):
        engine.train(engine.TrainConfig(resume=True))
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        engine.train(engine.TrainConfig(resume=True, out_dir=str(tmp_path / "nothing")))
    with pytest.raises(ValueError, match="processes=3"):
        engine.train(engine.TrainConfig(processes=3, out_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="batch_size=1 needs to be at least 2"):
        engine.train(engine.TrainConfig(processes=2, batch_size=1, out_dir=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="not in COCO layout"):
        engine.train(engine.TrainConfig(data=str(tmp_path), out_dir=str(tmp_path / "run")))


def test_torchvision_weights_with_other_heads(torch, shapes_root, tmp_path):
    """A .pth for 5 classes into a model for 4: every array but the class-specific predictors
    is loaded; those keep their initial values and are reported."""
    source = engine.build_model("maskrcnn_resnet18_fpn", 5, TINY_MODEL)
    pth = tmp_path / "other_classes.pth"
    torch.save({k: torch.tensor(np.asarray(v) + 1) for k, v in source.state_dict().items()}, str(pth))
    model = engine.build_model("maskrcnn_resnet18_fpn", 4, TINY_MODEL)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    lines = weights.load_pretrained(model, str(pth))
    heads = {"roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias",
             "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias",
             "roi_heads.mask_predictor.mask_fcn_logits.weight", "roi_heads.mask_predictor.mask_fcn_logits.bias"}
    for key, value in model.state_dict().items():
        expected = before[key] if key in heads else source.state_dict()[key] + 1
        assert np.array_equal(value, expected.astype(value.dtype)), key
    report = "\n".join(lines)
    assert f"loaded {len(before) - len(heads)} of {len(before)}" in report
    assert all(k in report for k in heads)


def test_a_run_that_cannot_start_leaves_no_folder(shapes_root, tmp_path, monkeypatch):
    from tinymaskrcnn.engine import data_parallel

    runs = tmp_path / "runs"
    with pytest.raises(FileNotFoundError, match="not in COCO layout"):  # no data
        engine.train(tiny_config(tmp_path / "nothing", runs / "a"))
    with pytest.raises(FileNotFoundError):  # weights that are not there, after data and model
        engine.train(tiny_config(shapes_root, runs / "b", weights=str(tmp_path / "missing.pth")))
    # ranks that cannot start, after everything else
    monkeypatch.setattr(data_parallel, "_BOOTSTRAP", "raise SystemExit('no rank today')")
    with pytest.raises(data_parallel.RankFailedError, match="ended before it started training"):
        engine.train(tiny_config(shapes_root, runs / "c", processes=2))
    assert not runs.exists()


def test_a_start_removes_what_a_killed_write_left(shapes_root, tmp_path):
    """A run killed while writing its checkpoint leaves the hidden temporary file (nothing runs
    after SIGKILL to remove it): the next start or resume of that folder removes it."""
    run = tmp_path / "run"
    engine.train(tiny_config(shapes_root, run, iterations=2, checkpoint_period=0, processes=1))
    left = [run / ".checkpoint.npz.0123456789ab.tmp", run / ".metrics.jsonl.tmp", run / ".config.json.4242.tmp"]
    for path in left:
        path.write_bytes(b"\0" * 1000)
    unrelated = run / ".notes.tmp"  # not one of the run's files: kept
    unrelated.write_text("mine")
    engine.train(tiny_config(shapes_root, run, iterations=2, checkpoint_period=0, processes=1, resume=True))
    assert not any(path.exists() for path in left) and unrelated.exists()
    (run / ".checkpoint.npz.ba9876543210.tmp").write_bytes(b"\0" * 1000)
    engine.train(tiny_config(shapes_root, run, iterations=1, warmup_iters=0, checkpoint_period=0, processes=1,
                             overwrite=True))  # fresh
    assert sorted(p.name for p in run.glob(".*")) == [".notes.tmp"]


def test_an_unknown_model_keyword_is_named():
    with pytest.raises(ValueError, match=r"maskrcnn_resnet18_fpn takes no keyword argument 'fpn_chanels'.*fpn_channels"):
        engine.build_model("maskrcnn_resnet18_fpn", 4, {"fpn_chanels": 8})


def test_warmup_defaults_to_a_quarter_of_a_short_run(shapes_root, tmp_path):
    """--iterations 20 works as typed: the default warmup (50) shrinks to a quarter of a shorter run."""
    assert engine.with_optimizer_defaults(engine.TrainConfig(iterations=20)).warmup_iters == 5
    assert engine.with_optimizer_defaults(engine.TrainConfig(iterations=1900)).warmup_iters == 50
    assert engine.with_optimizer_defaults(engine.TrainConfig(iterations=20, warmup_iters=3)).warmup_iters == 3
    config = dataclasses.replace(tiny_config(shapes_root, tmp_path / "run", iterations=3, checkpoint_period=0),
                                 warmup_iters=None)
    engine.train(config)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["warmup_iters"] == 0


def test_resuming_a_finished_run_logs_its_final_evaluation_once(shapes_root, tmp_path):
    run = tmp_path / "run"
    engine.train(tiny_config(shapes_root, run, iterations=2, checkpoint_period=0, processes=1))
    engine.train(tiny_config(shapes_root, run, iterations=2, checkpoint_period=0, processes=1, resume=True))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "eval" in r] == [2]
    assert [r["iteration"] for r in records if "loss" in r] == [1, 2]
