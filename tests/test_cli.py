"""The ``tinymaskrcnn`` command line: every subcommand has --help; ``train`` on tiny settings
writes every artefact of a run folder and a report; ``evaluate`` and ``predict`` read its
checkpoint; ``shapes`` and ``coco-subset`` write data; bad input ends with a clear error
naming the file, not a traceback (exit code 2), while a bug keeps its traceback; a run that
fails after a checkpoint prints the command that resumes it; ``evaluate`` never writes over
the run's own results."""
import contextlib
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinymaskrcnn import cli, engine, weights
from tinymaskrcnn.engine import data_parallel
from test_engine import TINY_MODEL, make_tiny_shapes

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on NumPy 2

SUBCOMMANDS = ("demo", "shapes", "train", "evaluate", "predict", "coco-subset")
TINY_FLAGS = ["--min-size", "64", "--max-size", "96",
              "--model-kwargs", json.dumps({k: v for k, v in TINY_MODEL.items() if k not in ("min_size", "max_size")}),
              "--iterations", "2", "--batch-size", "2", "--warmup-iters", "1",
              "--lr", "0.01", "--num-predictions", "2", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny ``tinymaskrcnn train`` run through cli.main: (data root, run folder, stdout)."""
    base = tmp_path_factory.mktemp("cli")
    make_tiny_shapes(base / "shapes")
    capture = base / "stdout.txt"
    with open(capture, "w") as f, contextlib.redirect_stdout(f):
        rc = cli.main(["train", "--data", str(base / "shapes"), "--out-dir", str(base / "run")] + TINY_FLAGS)
    assert rc == 0
    return base / "shapes", base / "run", capture.read_text()


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    assert f"usage: tinymaskrcnn {command}" in capsys.readouterr().out


def test_train_writes_the_whole_run_folder(run):
    _, run_dir, stdout = run
    for name in ("checkpoint.npz", "config.json", "metrics.jsonl", "losses.png", "metrics.json", "results.json"):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "predictions").iterdir()) == \
        ["val_000001.json", "val_000001.png", "val_000002.json", "val_000002.png"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 2]  # two iterations, then the evaluation
    for key in ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg", "loss",
                "lr", "time", "rpn_num_positive"):
        assert key in records[0], key
    assert records[0]["loss"] == pytest.approx(sum(v for k, v in records[0].items() if k.startswith("loss_")))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert records[-1]["eval"] == metrics and set(metrics) == {"bbox", "segm"}
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model_kwargs"] == json.loads(json.dumps(TINY_MODEL)) and config["iterations"] == 2
    # the lr given, and the default optimizer's weight decay written down rather than left None
    assert config["optimizer"] == "adamw" and config["lr"] == 0.01 and config["weight_decay"] == 0.05
    state = weights.load(run_dir / "checkpoint.npz")
    assert state["iteration"] == 2 and state["class_names"] == ["__background__", "circle", "square", "triangle"]
    for line in ("box  AP", "mask AP", str(run_dir / "checkpoint.npz"), str(run_dir / "losses.png")):
        assert line in stdout, line


def test_evaluate_and_predict_read_the_checkpoint(run, tmp_path, capsys):
    data, run_dir, _ = run
    checkpoint = str(run_dir / "checkpoint.npz")
    assert cli.main(["evaluate", checkpoint, "--data", str(data), "--out-dir", str(tmp_path / "eval"),
                     "--no-progress"]) == 0
    # same model, same val set: the numbers of the end of training
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == \
        json.loads((run_dir / "metrics.json").read_text())
    assert "mask AP" in capsys.readouterr().out

    images = [str(data / "images" / "val" / "000001.png"), str(data / "images" / "val" / "000003.png")]
    assert cli.main(["predict", checkpoint, *images, "--out-dir", str(tmp_path / "pred"),
                     "--score-threshold", "0"]) == 0
    for stem in ("000001", "000003"):
        record = json.loads((tmp_path / "pred" / f"{stem}.json").read_text())
        assert record["image_size"] == [64, 64] and len(record["boxes"]) == len(record["scores"]) == len(record["masks"])
        assert Image.open(tmp_path / "pred" / f"{stem}.png").size[0] >= 64


def test_bad_inputs_end_with_a_clear_error(run, tmp_path, capsys):
    data, run_dir, _ = run
    checkpoint = str(run_dir / "checkpoint.npz")

    assert cli.main(["predict", checkpoint, str(tmp_path / "missing.png")]) == 2
    assert f"image file not found: {tmp_path / 'missing.png'}" in capsys.readouterr().err

    not_coco = tmp_path / "not_coco.json"
    not_coco.write_text(json.dumps({"images": []}))
    assert cli.main(["evaluate", checkpoint, "--val-ann", str(not_coco), "--val-images", str(data / "images" / "val"),
                     "--no-progress"]) == 2
    assert f"{not_coco} is not a COCO instances file" in capsys.readouterr().err

    state = weights.load(checkpoint)
    state["model_name"] = "maskrcnn_resnet50_fpn"
    state["model_kwargs"] = {"min_size": 64, "max_size": 96}
    other = tmp_path / "resnet50_labelled.npz"
    weights.save(other, state)
    assert cli.main(["predict", str(other), str(data / "images" / "val" / "000001.png")]) == 2
    err = capsys.readouterr().err
    assert f"{other} does not fit maskrcnn_resnet50_fpn" in err and "another architecture" in err

    not_a_checkpoint = tmp_path / "weights.npz"
    np.savez(not_a_checkpoint, w=np.zeros(3))
    assert cli.main(["evaluate", str(not_a_checkpoint), "--data", str(data)]) == 2
    assert f"{not_a_checkpoint} is not a tinymaskrcnn checkpoint" in capsys.readouterr().err

    assert cli.main(["train", "--data", str(tmp_path), "--out-dir", str(tmp_path / "r")] + TINY_FLAGS) == 2
    assert "is not in COCO layout" in capsys.readouterr().err


def test_shapes_and_coco_subset(tmp_path, capsys):
    root = tmp_path / "shapes"
    assert cli.main(["shapes", "--root", str(root), "--num-train", "3", "--num-val", "2",
                     "--height", "48", "48", "--width", "40", "56"]) == 0
    (folder,) = root.iterdir()  # the set's own folder in the root: train3-val2-seed0-<hash of its settings>
    assert folder.name.startswith("train3-val2-seed0-")
    train_ann = folder / "annotations" / "instances_train.json"
    assert str(train_ann) in capsys.readouterr().out
    images = json.loads(train_ann.read_text())["images"]
    assert len(images) == 3 and all(im["height"] == 48 and 40 <= im["width"] <= 56 for im in images)

    out = tmp_path / "subset.json"
    assert cli.main(["coco-subset", str(train_ann), str(out), "--num-images", "2", "--categories", "circle,2"]) == 0
    subset = json.loads(out.read_text())
    assert len(subset["images"]) == 2 and {c["name"] for c in subset["categories"]} == {"circle", "square"}
    assert cli.main(["coco-subset", str(train_ann), str(out), "--categories", "hexagon"]) == 2
    assert "category 'hexagon' is not in" in capsys.readouterr().err


def test_evaluate_on_other_data_keeps_the_runs_own_results(run, capsys):
    data, run_dir, _ = run
    # the files themselves, not only their content: a tiny model's metrics may be all zeros on any data
    def files():
        return {name: ((run_dir / name).stat().st_ino, (run_dir / name).stat().st_mtime_ns, (run_dir / name).read_bytes())
                for name in ("metrics.json", "results.json")}

    own = files()
    # the train split as "other data", with the default output folder
    assert cli.main(["evaluate", str(run_dir / "checkpoint.npz"), "--val-ann",
                     str(data / "annotations" / "instances_train.json"), "--val-images", str(data / "images" / "train"),
                     "--no-progress"]) == 0
    assert files() == own
    (written,) = (run_dir / "evaluate").glob("instances_train-*/metrics.json")
    assert str(written) in capsys.readouterr().out and (written.parent / "results.json").is_file()


def test_ranks_that_cannot_start_end_in_one_line_and_leave_no_run_folder(tmp_path, monkeypatch, capsys):
    make_tiny_shapes(tmp_path / "shapes")
    monkeypatch.setattr(data_parallel, "_BOOTSTRAP", "import sys; sys.exit('ImportError: no tinymaskrcnn here')")
    assert cli.main(["train", "--data", str(tmp_path / "shapes"), "--out-dir", str(tmp_path / "runs" / "a"),
                     "--processes", "2"] + TINY_FLAGS) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "a rank of 2 ended before it started training (mpiexec's exit status 1; its error above)" in err
    assert not (tmp_path / "runs").exists()


def test_running_out_of_memory_says_what_and_what_to_try(tmp_path, monkeypatch, capsys):
    """A training step that asks for an array of 32 TiB (sizes that large are refused before any
    work now, so the step asks itself): refused at once under Linux's overcommit heuristic."""
    if Path("/proc/sys/vm/overcommit_memory").read_text().strip() not in ("0", "2"):
        pytest.skip("this kernel may grant any allocation (overcommit_memory=1) and kill the process later")
    make_tiny_shapes(tmp_path / "shapes")
    monkeypatch.setattr(engine.loop, "forward_backward", lambda *args: np.zeros((2 ** 20, 2 ** 20, 8), np.float32))
    assert cli.main(["train", "--data", str(tmp_path / "shapes"), "--out-dir", str(tmp_path / "run"),
                     "--processes", "1"] + TINY_FLAGS) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "error: out of memory: Unable to allocate" in err and "TiB" in err
    assert "--min-size/--max-size" in err and "--batch-size" in err and "--processes" in err


def test_a_run_that_fails_after_a_checkpoint_prints_the_resume_command(tmp_path, monkeypatch, capsys):
    make_tiny_shapes(tmp_path / "shapes")
    build, calls = engine.build_model, []

    def build_poisoned(*args, **kwargs):  # the fourth training forward pass (iteration 4) returns a NaN loss
        model = build(*args, **kwargs)
        forward = model.forward

        def poisoned(images, targets=None, **kw):
            out = forward(images, targets, **kw)
            if model.training:
                calls.append(1)
                if len(calls) == 4:
                    out["loss_mask"] = out["loss_mask"] * float("nan")
            return out

        object.__setattr__(model, "forward", poisoned)
        return model

    monkeypatch.setattr(engine.loop, "build_model", build_poisoned)
    run_dir = tmp_path / "run with space"
    flags = ["train", "--data", str(tmp_path / "shapes"), "--out-dir", str(run_dir), "--processes", "1"] + TINY_FLAGS \
        + ["--iterations", "5", "--checkpoint-period", "2"]
    assert cli.main(flags) == 2
    first, note = capsys.readouterr().err.splitlines()
    assert first.startswith("tinymaskrcnn train: error: iteration 4: loss_mask = nan")
    prefix = f"  the run's last checkpoint is {run_dir / 'checkpoint.npz'} (iteration 2); continue from it with: "
    assert note.startswith(prefix)
    command = shlex.split(note[len(prefix):])
    assert command[:2] == ["tinymaskrcnn", "train"] and command[-1] == "--resume"
    # the command given, with --resume, is what it says: it continues the run to the end
    monkeypatch.setattr(engine.loop, "build_model", build)
    assert cli.main(command[1:]) == 0
    assert weights.load(run_dir / "checkpoint.npz")["iteration"] == 5
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "loss" in r] == [1, 2, 3, 4, 5]


def test_resume_command_repeats_every_flag_given():
    argv = ["train", "--data", "d", "--val-ann", "v.json", "--val-images", "v", "--train-ann", "t.json",
            "--train-images", "t", "--shapes-root", "s", "--shapes-train", "3", "--shapes-val", "2",
            "--model", "maskrcnn_resnet50_fpn", "--min-size", "64", "--max-size", "96",
            "--model-kwargs", '{"fpn_channels": 8}', "--weights", "w.pth", "--iterations", "7", "--batch-size", "4",
            "--processes", "1", "--optimizer", "sgd", "--lr", "0.015", "--momentum", "0.8", "--weight-decay", "0.001",
            "--warmup-iters", "3", "--schedule", "step", "--clip-grad-norm", "5.5", "--eval-period", "2",
            "--checkpoint-period", "3", "--num-predictions", "1", "--seed", "9", "--no-progress"]
    parser = cli.build_parser()
    args = parser.parse_args(argv)
    command = shlex.split(cli._resume_command(args, "runs/x"))
    assert command[0] == "tinymaskrcnn"
    again = parser.parse_args(command[1:])
    assert vars(again) == {**vars(args), "out_dir": "runs/x", "resume": True}


def test_a_bug_keeps_its_traceback_and_ctrl_c_is_not_one(monkeypatch, capsys):
    def bug(config, resume_command=None):
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(engine, "train", bug)
    with pytest.raises(TypeError, match="unsupported operand"):
        cli.main(["train"])

    def interrupted(config, resume_command=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "train", interrupted)
    assert cli.main(["train"]) == 130
    assert capsys.readouterr().err == "tinymaskrcnn train: interrupted\n"
