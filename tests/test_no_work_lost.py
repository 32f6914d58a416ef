"""Nothing a user does by mistake destroys a run or quietly gives wrong numbers: run folders
(never reused silently, locked while in use), the shapes set (only its own files, never redrawn
under a run), settings (every number checked before any work; a resume runs as recorded), a
model's categories against the data's, memory (bounded by the image, measured in a subprocess),
hostile files (checked before anything is allocated or built) and the errors a user meets (one
line naming the file or flag, exit code 2). Each case is a crafted folder or file; each test
asserts the message, the exit code and what is left on disk."""
import contextlib
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinymaskrcnn import cli, engine, weights
from tinymaskrcnn.core import files
from tinymaskrcnn.core import random as tm_random
from tinymaskrcnn.data.shapes import CATEGORIES
from test_cli import TINY_FLAGS
from test_engine import TINY_MODEL, make_tiny_shapes
from test_weights_untrusted import LEGACY_HEADER, read_in_subprocess, write_zip_pth
from helpers import PEAK_RSS_MB

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),  # pycocotools
              pytest.mark.filterwarnings("ignore:evaluate_coco. no detections:UserWarning")]  # two iterations
ONE_PROCESS = ["--processes", "1"]  # a data-parallel worker adds seconds and nothing these tests look at


def one_line(capsys, command, *parts):
    """The error the command printed: one line, no traceback, containing every one of ``parts``."""
    err = capsys.readouterr().err
    assert err.startswith(f"tinymaskrcnn {command}: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for part in parts:
        assert str(part) in err, (part, err)
    return err


def snapshot(folder):
    """Every file under ``folder``: its bytes and modification time, by relative path."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def train(data, out_dir, *flags):
    with contextlib.redirect_stdout(io.StringIO()):
        return cli.main(["train", "--data", str(data), "--out-dir", str(out_dir)] + ONE_PROCESS + TINY_FLAGS
                        + list(flags))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "shapes"
    make_tiny_shapes(root)
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory, data):
    """A finished two-iteration run folder; tests that change it work on a copy."""
    folder = tmp_path_factory.mktemp("runs") / "run"
    assert train(data, folder) == 0
    return folder


def copy_of(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def crafted_checkpoint(path, **kwargs):
    """A training checkpoint of an untrained tiny model that keeps 20 detections on any image
    (score threshold 0), so that predicting and evaluating have 20 masks to paste and draw."""
    model_kwargs = {**TINY_MODEL, "box_score_thresh": 0.0, "box_detections_per_img": 20, **kwargs}
    tm_random.manual_seed(0)
    model = engine.build_model("maskrcnn_resnet18_fpn", 4, model_kwargs)
    weights.save(path, {"format": engine.CHECKPOINT_FORMAT, "model_name": "maskrcnn_resnet18_fpn",
                        "model_kwargs": model_kwargs, "num_classes": 4,
                        "class_names": ["__background__"] + [c["name"] for c in CATEGORIES],
                        "category_ids": [c["id"] for c in CATEGORIES], "model": model.state_dict(), "config": {}})
    return path


# ---------------------------------------------------------------------------------------------
# 1. A run folder is never reused silently
# ---------------------------------------------------------------------------------------------

def test_training_into_a_run_folder_is_refused_before_any_work(data, run, monkeypatch, capsys):
    before = snapshot(run)

    def no_work(config, create=True):
        raise AssertionError("the data was read: the refusal came after work")

    monkeypatch.setattr(engine.loop, "resolve_data", no_work)
    assert train(data, run) == 2
    one_line(capsys, "train", f"{run} holds a run (checkpoint.npz, config.json, metrics.jsonl, metrics.json, "
                              "results.json, losses.png, predictions)", "--resume", "--out-dir", "--overwrite")
    assert snapshot(run) == before


def test_overwrite_deletes_all_of_the_old_run_and_nothing_else(data, run, tmp_path):
    old = copy_of(run, tmp_path)
    for stale in ("evaluate/other-0123abcd/metrics.json", "eval/iter_000001/metrics.json",
                  "predictions/val_000003.png"):  # a picture the new run will not draw again
        (old / stale).parent.mkdir(parents=True, exist_ok=True)
        (old / stale).write_text("of the old model")
    (old / "notes.txt").write_text("mine")
    assert train(data, old, "--overwrite", "--iterations", "1", "--warmup-iters", "0", "--num-predictions", "1") == 0
    assert sorted(p.name for p in old.iterdir()) == ["checkpoint.npz", "config.json", "losses.png", "metrics.json",
                                                     "metrics.jsonl", "notes.txt", "predictions", "results.json"]
    assert (old / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (old / "predictions").iterdir()) == ["val_000001.json", "val_000001.png"]
    assert weights.load(old / "checkpoint.npz")["iteration"] == 1
    assert json.loads((old / "config.json").read_text())["iterations"] == 1
    assert [json.loads(line)["iteration"] for line in (old / "metrics.jsonl").read_text().splitlines()] == [1, 1]


def test_resume_and_overwrite_together_are_refused(data, run, capsys):
    before = snapshot(run)
    assert train(data, run, "--resume", "--overwrite") == 2
    one_line(capsys, "train", "resume=True continues the run in out_dir and overwrite=True deletes it")
    assert snapshot(run) == before


def test_a_folder_in_use_is_refused_with_the_process_holding_it(data, tmp_path, capsys):
    """A lock held by another process (a subprocess here) refuses the second training; killed
    with SIGKILL, the holder leaves no lock behind (the kernel releases it)."""
    folder = tmp_path / "busy"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from tinymaskrcnn.engine import RunLock; "
                               "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); sys.stdin.read()",
                               str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert train(data, folder) == 2
        one_line(capsys, "train", f"{folder} is in use: another training (process {holder.pid}) is writing into it")
        assert os.listdir(folder) == [".train.lock"]
    finally:
        holder.kill()
        holder.wait()
    assert train(data, folder, "--iterations", "1", "--warmup-iters", "0", "--num-predictions", "0") == 0
    assert (folder / "checkpoint.npz").is_file() and not (folder / ".train.lock").exists()


def test_a_run_finished_in_the_folder_while_this_one_loaded_is_not_overwritten(data, tmp_path, monkeypatch, capsys):
    """The folder is checked again once it is locked: another process may have finished a run
    there between this one's first check and its start."""
    folder = tmp_path / "raced"
    resolve = engine.loop.resolve_data

    def another_run_finishes(config, create=True):
        folder.mkdir()
        (folder / "checkpoint.npz").write_bytes(b"the other run's")
        return resolve(config, create)

    monkeypatch.setattr(engine.loop, "resolve_data", another_run_finishes)
    assert train(data, folder) == 2
    one_line(capsys, "train", f"{folder} holds a run (checkpoint.npz)")
    assert sorted(os.listdir(folder)) == ["checkpoint.npz"] and (folder / "checkpoint.npz").read_bytes() == \
        b"the other run's"


def test_default_run_folders_never_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt: "20990101-000000")  # every name in the same second
    pid = os.getpid()
    assert [engine.default_out_dir() for _ in range(3)] == \
        [f"runs/20990101-000000-{pid}", f"runs/20990101-000000-{pid}-2", f"runs/20990101-000000-{pid}-3"]
    Path(f"runs/20990101-000000-{pid}-4").mkdir(parents=True)  # already on disk (a run of an earlier process)
    assert engine.default_out_dir() == f"runs/20990101-000000-{pid}-5"
    # another process, in the same second: its own process id
    other = subprocess.run([sys.executable, "-c", "from tinymaskrcnn import engine; print(engine.default_out_dir())"],
                           capture_output=True, text=True, check=True).stdout.strip().split("-")
    assert len(other) == 3 and other[0].startswith("runs/") and other[2] != str(pid)


# ---------------------------------------------------------------------------------------------
# 2. The shapes set writes and deletes only its own files, and is never redrawn under a run
# ---------------------------------------------------------------------------------------------

SHAPES_FLAGS = ["--shapes-train", "2", "--shapes-val", "1", "--iterations", "1", "--warmup-iters", "0",
                "--num-predictions", "0"]


def test_shapes_refuses_a_root_holding_a_run_and_deletes_nothing(tmp_path, capsys):
    root = tmp_path / "data_cache"
    (root / "run1").mkdir(parents=True)
    (root / "run1" / "checkpoint.npz").write_bytes(b"a week of training")
    assert cli.main(["shapes", "--root", str(root), "--num-train", "2", "--num-val", "1"]) == 2
    one_line(capsys, "shapes", f"{root} holds things other than shapes sets (run1)")
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["run1", "run1/checkpoint.npz"]


def test_another_seed_gets_its_own_set_and_the_first_is_untouched(tmp_path):
    root = tmp_path / "cache"
    flags = ["--shapes-root", str(root), "--no-progress"] + ONE_PROCESS + TINY_FLAGS + SHAPES_FLAGS
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["train", "--out-dir", str(tmp_path / "a")] + flags) == 0
        (first,) = root.iterdir()
        before = snapshot(first)
        assert cli.main(["train", "--out-dir", str(tmp_path / "b"), "--seed", "1"] + flags) == 0
    assert snapshot(first) == before and len(list(root.iterdir())) == 2


def test_evaluate_never_creates_the_shapes_set_a_checkpoint_names(run, tmp_path, capsys):
    """A checkpoint whose run trained on a shapes set that is not here: evaluate says how to make
    it again, and creates nothing where the configuration points; made, the set evaluates."""
    state = weights.load(run / "checkpoint.npz")
    gone = tmp_path / "gone" / "cache"
    state["config"].update(data=None, shapes_root=str(gone), shapes_train=2, shapes_val=1,
                           shapes_size=((48, 48), (48, 48)))
    moved = tmp_path / "moved" / "checkpoint.npz"
    moved.parent.mkdir()
    weights.save(moved, state)
    assert cli.main(["evaluate", str(moved), "--no-progress"]) == 2
    err = one_line(capsys, "evaluate", "the run's val split is not there: no shapes set with num_train 2, num_val 1",
                   "make it again with: tinymaskrcnn shapes --root")
    assert not (tmp_path / "gone").exists() and sorted(os.listdir(tmp_path / "moved")) == ["checkpoint.npz"]
    command = shlex.split(err.split("make it again with: ")[1].split(", or evaluate")[0])
    assert cli.main(command[1:]) == 0
    assert cli.main(["evaluate", str(moved), "--no-progress"]) == 0


# ---------------------------------------------------------------------------------------------
# 3. Every number is checked before any work
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--clip-grad-norm", "-1"], "clip_grad_norm=-1.0: expected a finite non-negative maximum gradient norm"),
    (["--lr", "inf"], "lr=inf: expected a finite positive learning rate"),
    (["--lr", "nan"], "lr=nan: expected a finite positive learning rate"),
    (["--weight-decay", "-0.1"], "weight_decay=-0.1: expected a finite non-negative number"),
    (["--momentum", "1.5"], "momentum=1.5: expected a number in [0, 1)"),
    (["--min-size", "0"], "min_size=0 (model_kwargs / --model-kwargs): expected an integer from 32 to 4096"),
    (["--max-size", "1"], "max_size=1 (model_kwargs / --model-kwargs): expected an integer from 32 to 8192"),
    (["--shapes-val", "0"], "shapes_val=0: expected a positive integer"),
    (["--batch-size", "0"], "batch_size=0: expected a positive integer"),
    (["--eval-period", "-5"], "eval_period=-5: expected a non-negative integer"),
    (["--model-kwargs", '{"fpn_channels": "64"}'], "fpn_channels='64' (model_kwargs / --model-kwargs): expected an "
                                                   "integer from 1 to 1024"),
    (["--model-kwargs", '{"box_nms_thresh": 5}'], "box_nms_thresh=5 (model_kwargs / --model-kwargs): expected a number "
                                                  "from 0 to 1"),
    (["--model-kwargs", '{"anchor_sizes": "big"}'], "anchor_sizes='big' (model_kwargs / --model-kwargs): expected a "
                                                    "list of numbers"),
    (["--model-kwargs", "[" * 100_000 + "]" * 100_000], "--model-kwargs nests lists or objects too deeply to read"),
    (["--resume"], "--resume continues the run in a folder: name it with --out-dir"),
])
def test_a_bad_setting_is_refused_before_any_work(tmp_path, monkeypatch, capsys, flags, message):
    monkeypatch.chdir(tmp_path)
    out = [] if flags == ["--resume"] else ["--out-dir", "run"]
    assert cli.main(["train", "--shapes-root", "cache"] + out + flags) == 2
    one_line(capsys, "train", message)
    assert os.listdir(tmp_path) == []  # no shapes set drawn, no run folder made


@pytest.mark.parametrize("command, message", [
    (["predict", "CKPT", "IMAGE", "--score-threshold", "nan"], "--score-threshold nan: expected a number from 0 to 1"),
    (["demo", "--steps", "0"], "--steps 0: expected a positive integer"),
    (["demo", "--lr", "inf"], "--lr inf: expected a finite positive learning rate"),
])
def test_other_commands_check_their_numbers_first(tmp_path, capsys, command, message):
    command = [str(tmp_path / word) if word in ("CKPT", "IMAGE") else word for word in command]
    assert cli.main(command) == 2
    one_line(capsys, command[0], message)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# 4. evaluate compares the model's categories with the data's
# ---------------------------------------------------------------------------------------------

def relabelled(data, tmp_path, categories):
    """The val annotation file with its categories replaced: ``categories`` maps each old id to
    (new id, new name); annotations follow their category's new id."""
    coco = json.loads((data / "annotations" / "instances_val.json").read_text())
    coco["categories"] = [{**c, "id": categories[c["id"]][0], "name": categories[c["id"]][1]}
                          for c in coco["categories"]]
    for ann in coco["annotations"]:
        ann["category_id"] = categories[ann["category_id"]][0]
    path = tmp_path / "instances_val_relabelled.json"
    path.write_text(json.dumps(coco))
    return path


def test_categories_under_other_ids_are_matched_by_name_and_said(data, tmp_path, capsys):
    """The val file's ids permuted, names kept: the detections are scored under the ids of their
    names (without the match, box AP of a trained model fell from 0.357 to 0.113 without a word)."""
    checkpoint = crafted_checkpoint(tmp_path / "checkpoint.npz")
    images = str(data / "images" / "val")
    assert cli.main(["evaluate", str(checkpoint), "--data", str(data), "--out-dir", str(tmp_path / "same"),
                     "--no-progress"]) == 0
    assert "matched by name" not in capsys.readouterr().out
    permuted = relabelled(data, tmp_path, {1: (3, "circle"), 2: (1, "square"), 3: (2, "triangle")})
    assert cli.main(["evaluate", str(checkpoint), "--val-ann", str(permuted), "--val-images", images,
                     "--out-dir", str(tmp_path / "permuted"), "--no-progress"]) == 0
    assert "categories matched by name, not by id (model -> data): circle (1 -> 3), square (2 -> 1), " \
           "triangle (3 -> 2)" in capsys.readouterr().out
    same, permuted_results = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("same", "permuted"))
    assert len(same) == len(permuted_results) == 20 * 4  # 20 detections on each of the 4 images
    new_id = {1: 3, 2: 1, 3: 2}
    for a, b in zip(same, permuted_results):
        assert b["category_id"] == new_id[a["category_id"]] and (b["bbox"], b["score"]) == (a["bbox"], a["score"])
    assert json.loads((tmp_path / "permuted" / "metrics.json").read_text()) == \
        json.loads((tmp_path / "same" / "metrics.json").read_text())


def test_other_categories_are_an_error_showing_both_lists(data, tmp_path, capsys):
    checkpoint = crafted_checkpoint(tmp_path / "checkpoint.npz")
    renamed = relabelled(data, tmp_path, {1: (1, "dog"), 2: (2, "cat"), 3: (3, "car")})
    assert cli.main(["evaluate", str(checkpoint), "--val-ann", str(renamed), "--val-images",
                     str(data / "images" / "val"), "--no-progress"]) == 2
    one_line(capsys, "evaluate", f"{checkpoint} was trained on the categories [1 circle, 2 square, 3 triangle] but "
                                 f"{renamed} has [1 dog, 2 cat, 3 car]")
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz", renamed.name]  # no evaluate/ folder


# ---------------------------------------------------------------------------------------------
# 5. A resume runs as recorded; config.json says what ran
# ---------------------------------------------------------------------------------------------

def test_resume_with_other_settings_is_refused_and_changes_nothing(run, tmp_path, capsys):
    folder = copy_of(run, tmp_path)
    before = snapshot(folder)
    assert cli.main(["train", "--out-dir", str(folder), "--resume", "--iterations", "10", "--lr", "0.02",
                     "--no-progress"]) == 2
    one_line(capsys, "train", "a resumed run continues as it was recorded, but these settings differ: iterations 10 "
                              "(recorded: 2); lr 0.02 (recorded: 0.01)", "--overwrite")
    assert snapshot(folder) == before
    # compared before the settings are checked together: the recorded warmup (1) is not what refuses --iterations 1
    assert cli.main(["train", "--out-dir", str(folder), "--resume", "--iterations", "1"]) == 2
    one_line(capsys, "train", "these settings differ: iterations 1 (recorded: 2). ")
    # the run's own settings are read from its checkpoint: --out-dir and --resume are enough
    assert cli.main(["train", "--out-dir", str(folder), "--resume", "--no-progress"] + ONE_PROCESS) == 0
    assert "report (2 iterations" in capsys.readouterr().out
    ran, recorded = json.loads((folder / "config.json").read_text()), json.loads(before["config.json"][0])
    may_change = ("out_dir", "resume", "overwrite", "progress")  # where and how it was called, not what it computes
    assert {k: v for k, v in ran.items() if k not in may_change} == \
        {k: v for k, v in recorded.items() if k not in may_change}
    assert ran["out_dir"] == str(folder) and ran["resume"] is True
    assert weights.load(folder / "checkpoint.npz")["iteration"] == 2


# ---------------------------------------------------------------------------------------------
# 6. Memory bounded by the image, not by what is drawn or found
# ---------------------------------------------------------------------------------------------

PEAK = PEAK_RSS_MB + """
import json, sys
from tinymaskrcnn import cli
rc = cli.main(sys.argv[1:])
print(json.dumps({"rc": rc, "peak_mb": peak_rss_mb()}))
"""


def peak_of(argv, cwd):
    """Exit code and peak resident memory (MB) of the command ``argv`` in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", PEAK, *argv], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def photo(path, height=3024, width=4032):
    """A smooth 12-megapixel picture (a phone's size), quick to write and read."""
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([xs * 255 // width, ys * 255 // height, (xs + ys) * 255 // (width + height)], -1)
    Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)
    return path


@pytest.mark.skipif(sys.platform != "linux", reason="VmHWM of /proc/self/status is Linux's")
def test_predict_on_a_phone_photo_with_20_detections_stays_within_2_gb(tmp_path):
    """Before: 10.4 GB (20 full-size masks, a contour over the whole photo for each, a picture
    at the photo's size); after: each mask pasted when it is encoded or drawn, the picture at
    most 2048 pixels long."""
    crafted_checkpoint(tmp_path / "checkpoint.npz")
    photo(tmp_path / "photo.jpg")
    result = peak_of(["predict", "checkpoint.npz", "photo.jpg", "--score-threshold", "0"], tmp_path)
    assert result["rc"] == 0 and result["peak_mb"] < 2048, result
    assert len(json.loads((tmp_path / "predictions" / "photo.json").read_text())["masks"]) == 20
    with Image.open(tmp_path / "predictions" / "photo.png") as picture:
        assert picture.size == (2048, 1536)


@pytest.mark.skipif(sys.platform != "linux", reason="VmHWM of /proc/self/status is Linux's")
def test_evaluate_memory_does_not_grow_with_the_detections(tmp_path):
    """One 4032x3024 image evaluated with a model keeping 1 detection and, in another fresh
    interpreter, with one keeping 20: the second may not take more memory than the first (in one
    process the second run's peak would also hold what the allocator kept from the first).
    Before: 930 MB more (20 masks pasted at full size at once, and binarised at once); after:
    each mask pasted, binarised and encoded alone, and no ground-truth masks built at all."""
    for n in (1, 20):
        crafted_checkpoint(tmp_path / f"keeps{n}.npz", box_detections_per_img=n)
    (tmp_path / "images").mkdir()
    photo(tmp_path / "images" / "photo.jpg")
    polygon = [1000.0, 1000.0, 3000.0, 1000.0, 2000.0, 2500.0]
    (tmp_path / "val.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "photo.jpg", "height": 3024, "width": 4032}], "categories": list(CATEGORIES),
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1000, 1000, 2000, 1500],
                         "segmentation": [polygon], "area": 1.5e6, "iscrowd": 0}]}))
    one, twenty = (peak_of(["evaluate", f"keeps{n}.npz", "--val-ann", "val.json", "--val-images", "images",
                            "--out-dir", f"eval{n}", "--no-progress"], tmp_path) for n in (1, 20))
    assert one["rc"] == twenty["rc"] == 0, (one, twenty)
    one, twenty = one["peak_mb"], twenty["peak_mb"]
    assert twenty - one < 50 and twenty < 2048, (one, twenty)
    assert [len(json.loads((tmp_path / f"eval{n}" / "results.json").read_text())) for n in (1, 20)] == [1, 20]


def test_pictures_of_long_images_are_drawn_at_a_bounded_size(tmp_path):
    from tinymaskrcnn import visualize
    from tinymaskrcnn.ops import PastedMasks

    strip = np.linspace(0, 1, 3 * 20 * 5000, dtype=np.float32).reshape(3, 20, 5000)
    boxes = np.array([[100.0, 2.0, 900.0, 18.0]], np.float32)
    masks = PastedMasks(np.ones((1, 1, 28, 28), np.float32), boxes, (20, 5000))
    visualize.save_prediction(strip, {"boxes": boxes, "labels": np.array([1]), "scores": np.array([0.9]),
                                      "masks": masks}, ["__background__", "a"], tmp_path / "strip.png")
    with Image.open(tmp_path / "strip.png") as picture:  # before: enlarged 20 times, 100000 x 400
        assert picture.size == (2048, 8)


# ---------------------------------------------------------------------------------------------
# 7. Hostile files cost nothing before they are checked
# ---------------------------------------------------------------------------------------------

MEMO_BOMB = b"\x80\x02}r" + (2 ** 29).to_bytes(4, "little") + b"."  # EMPTY_DICT, LONG_BINPUT 2^29, STOP


@pytest.mark.skipif(sys.platform != "linux", reason="VmHWM of /proc/self/status is Linux's")
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_a_pickle_memo_index_far_ahead_is_refused_before_the_table_grows(tmp_path, fmt):
    """Before: 8.6 GB for a file of under a kilobyte (the C unpickler grows its memo table to
    twice the index it is told to store at)."""
    path = tmp_path / "memo.pth"
    if fmt == "zip":
        write_zip_pth(path, MEMO_BOMB, {})
    else:
        path.write_bytes(LEGACY_HEADER + MEMO_BOMB)
    assert path.stat().st_size < 1000
    result = read_in_subprocess("read_pth", path)
    assert "memo index 536870912 at opcode 2: no pickler numbers its memo so far ahead" in result.get("error", ""), \
        result
    assert result["error"].startswith(f"{path}: ") and result["peak_mb"] < 200, result


CHECKPOINT_PEAK = PEAK_RSS_MB + """
import json, sys
from tinymaskrcnn import engine
before = peak_rss_mb()
try:
    engine.load_model(sys.argv[1])
    error = None
except ValueError as e:
    error = str(e)
print(json.dumps({"error": error, "peak_mb": peak_rss_mb() - before}))
"""


def architecture_checkpoint(path, **fields):
    state = {"format": engine.CHECKPOINT_FORMAT, "model_name": "maskrcnn_resnet18_fpn", "model_kwargs": {},
             "num_classes": 4, "class_names": ["__background__", "a", "b", "c"], "model": {}, "config": {}}
    weights.save(path, {**state, **fields})
    return path


@pytest.mark.skipif(sys.platform != "linux", reason="VmHWM of /proc/self/status is Linux's")
@pytest.mark.parametrize("fields, message", [
    (dict(num_classes=200_000), "num_classes=200000: expected an integer from 2 (background and one class) to 10000"),
    (dict(model_kwargs={"fpn_channels": 10 ** 6}), "fpn_channels=1000000 (model_kwargs / --model-kwargs): expected an "
                                                   "integer from 1 to 1024"),
    (dict(num_classes=5000, class_names=["x"] * 5000), "records num_classes=5000 but its box predictor "
                                                        "(roi_heads.box_predictor.cls_score.weight) has shape None"),
])
def test_a_checkpoints_architecture_is_checked_before_a_model_is_built(tmp_path, fields, message):
    """Before: a 1.3 kB file claiming 200,000 classes built the whole model (3.6 GB, 16 s)."""
    path = architecture_checkpoint(tmp_path / "claims.npz", **fields)
    done = subprocess.run([sys.executable, "-c", CHECKPOINT_PEAK, str(path)], capture_output=True, text=True,
                          check=True)
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["error"] is not None and result["error"].startswith(str(path)) and message in result["error"], result
    assert result["peak_mb"] < 100, result


# ---------------------------------------------------------------------------------------------
# 8. One line naming the file or flag, exit code 2
# ---------------------------------------------------------------------------------------------

def edited_val(data, tmp_path, edit):
    coco = json.loads((data / "annotations" / "instances_val.json").read_text())
    edit(coco)
    path = tmp_path / "val.json"
    path.write_text(coco if isinstance(coco, str) else json.dumps(coco))
    return path


def _set(entry, key, value):
    entry[key] = value


@pytest.mark.parametrize("edit, message", [
    (lambda c: _set(c["images"][0], "id", [1]), "image number 0 has id [1]: COCO ids are integers"),
    (lambda c: _set(c["images"][0], "id", {"a": 1}), "image number 0 has id {'a': 1}: COCO ids are integers"),
    (lambda c: _set(c["images"][0], "id", "000001"), "image number 0 has id '000001': COCO ids are integers"),
    (lambda c: _set(c["annotations"][0], "image_id", [1]), "annotation 1 has image_id [1]: COCO ids are integers"),
    (lambda c: _set(c["categories"][1], "id", 2.0), "category number 1 has id 2.0: COCO ids are integers"),
])
def test_annotation_ids_that_are_not_integers_are_named(data, run, tmp_path, capsys, edit, message):
    path = edited_val(data, tmp_path, edit)
    assert cli.main(["evaluate", str(run / "checkpoint.npz"), "--val-ann", str(path), "--val-images",
                     str(data / "images" / "val"), "--out-dir", str(tmp_path / "eval"), "--no-progress"]) == 2
    one_line(capsys, "evaluate", f"{path}: {message}")


def test_json_nested_thousands_deep_is_named(data, run, tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text('{"images": ' + "[" * 100_000 + "]" * 100_000 + ', "annotations": [], "categories": []}')
    assert cli.main(["evaluate", str(run / "checkpoint.npz"), "--val-ann", str(deep), "--val-images",
                     str(data / "images" / "val"), "--out-dir", str(tmp_path / "eval"), "--no-progress"]) == 2
    one_line(capsys, "evaluate", f"{deep} nests lists or objects too deeply to read")

    checkpoint = tmp_path / "deep.npz"
    files.atomic_write(checkpoint, lambda f: weights.npz._write_npz(
        f, {"__tinymaskrcnn__": np.array('{"format": "tinymaskrcnn-checkpoint", "version": 1, "tree": '
                                          + "[" * 100_000 + "]" * 100_000 + "}")}))
    assert cli.main(["evaluate", str(checkpoint), "--data", str(data), "--no-progress"]) == 2
    one_line(capsys, "evaluate", f"{checkpoint}: its '__tinymaskrcnn__' entry nests too deeply to read")


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("class_names"), "is a training checkpoint without class_names: it was cut short or edited"),
    (lambda s: s.update(num_classes="4"), "records an architecture that cannot be built: num_classes='4': expected an "
                                          "integer"),
    (lambda s: s.update(class_names=["a", "b"]), "class_names ['a', 'b'] is not a list of 4 names"),
    (lambda s: s.update(model_kwargs=[1, 2]), "model_kwargs must be a dict of keyword arguments"),
])
def test_a_checkpoint_with_malformed_fields_is_named(data, run, tmp_path, capsys, edit, message):
    state = weights.load(run / "checkpoint.npz")
    edit(state)
    path = tmp_path / "edited.npz"
    weights.save(path, state)
    assert cli.main(["predict", str(path), str(data / "images" / "val" / "000001.png"),
                     "--out-dir", str(tmp_path / "out")]) == 2
    one_line(capsys, "predict", f"{path}", message)
    assert not (tmp_path / "out").exists()


def test_predict_reports_each_unreadable_or_too_thin_image_and_goes_on(run, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "c.png"):
        Image.new("RGB", (40, 30), (200, 50, 50)).save(folder / name)
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.new("RGB", (5000, 20)).save(folder / "d.png")  # 20 x 5000: 0 pixels high at max_size 96
    out = tmp_path / "out"
    assert cli.main(["predict", str(run / "checkpoint.npz"), str(folder), "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"tinymaskrcnn predict: error: {folder / 'b.png'}: cannot read the image")
    assert err[1] == (f"tinymaskrcnn predict: error: {folder / 'd.png'} is 20x5000 (HxW): the model resizes it to a "
                      "short side of min_size 64 with the long side at most max_size 96, which leaves 0x95 pixels; "
                      "crop it into less elongated pieces")
    assert err[2] == f"tinymaskrcnn predict: 2 of 4 images skipped (the errors above); the others' outputs are in {out}"
    assert len(err) == 3 and sorted(os.listdir(out)) == ["a.json", "a.png", "c.json", "c.png"]


def test_evaluate_names_an_image_too_thin_for_the_model_before_evaluating(run, tmp_path, capsys):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (5000, 20)).save(tmp_path / "images" / "strip.png")
    (tmp_path / "val.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "strip.png", "height": 20, "width": 5000}], "categories": list(CATEGORIES),
        "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 2, 100, 10],
                         "segmentation": [[10.0, 2.0, 110.0, 2.0, 110.0, 12.0]]}]}))
    assert cli.main(["evaluate", str(run / "checkpoint.npz"), "--val-ann", str(tmp_path / "val.json"), "--val-images",
                     str(tmp_path / "images"), "--out-dir", str(tmp_path / "eval"), "--no-progress"]) == 2
    one_line(capsys, "evaluate", f"image 7 (strip.png of {tmp_path / 'val.json'}) is 20x5000 (HxW): the model resizes "
                                 "it to a short side of min_size 64 with the long side at most max_size 96, which "
                                 "leaves 0x95 pixels")
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_sigterm_stops_training_as_ctrl_c_does_with_the_resume_command(data, tmp_path, monkeypatch, capsys):
    step, calls = engine.loop.forward_backward, []

    def terminated_in_iteration_3(*args):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # what `kill`, a scheduler or a container's stop sends
        return step(*args)

    handler = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(engine.loop, "forward_backward", terminated_in_iteration_3)
    folder = tmp_path / "run"
    assert train(data, folder, "--iterations", "4", "--checkpoint-period", "2", "--num-predictions", "0") == 143
    first, note = capsys.readouterr().err.splitlines()
    assert first == "tinymaskrcnn train: terminated (SIGTERM)"
    assert note.startswith(f"  the run's last checkpoint is {folder / 'checkpoint.npz'} (iteration 2); continue from "
                           "it with: tinymaskrcnn train ") and note.endswith("--resume")
    assert signal.getsignal(signal.SIGTERM) == handler  # the command line's handler is gone with it
    assert sorted(p.name for p in folder.glob(".*")) == []  # no lock, no temporary file left
    monkeypatch.setattr(engine.loop, "forward_backward", step)
    assert cli.main(shlex.split(note.split("continue from it with: ")[1])[1:]) == 0
    assert weights.load(folder / "checkpoint.npz")["iteration"] == 4


def test_evaluate_checks_its_output_folder_before_evaluating(run, tmp_path, monkeypatch, capsys):
    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated before finding that the results cannot be written")

    monkeypatch.setattr(engine, "evaluate", no_evaluation)
    (tmp_path / "a file").write_text("")
    assert cli.main(["evaluate", str(run / "checkpoint.npz"), "--out-dir", str(tmp_path / "a file" / "eval"),
                     "--no-progress"]) == 2
    one_line(capsys, "evaluate", f"cannot write the evaluation into {tmp_path / 'a file' / 'eval'}",
             "choose a writable --out-dir")
    if os.geteuid() != 0:  # root writes into a read-only folder anyway
        folder = copy_of(run, tmp_path)
        folder.chmod(0o555)
        try:
            assert cli.main(["evaluate", str(folder / "checkpoint.npz"), "--no-progress"]) == 2
            one_line(capsys, "evaluate", f"cannot write the evaluation into {folder / 'evaluate'}")
        finally:
            folder.chmod(0o755)


# ---------------------------------------------------------------------------------------------
# 9. ResNet-50 trains on the shapes set
# ---------------------------------------------------------------------------------------------

def test_resnet50_trains_on_the_shapes_set(tmp_path):
    """The shapes defaults it takes (box_detections_per_img, ..., min_size/max_size), not the
    ResNet-18's fpn_channels and norm it has no argument for."""
    small = {k: v for k, v in TINY_MODEL.items() if k.startswith(("rpn_", "box_"))}
    flags = ["train", "--model", "maskrcnn_resnet50_fpn", "--shapes-root", str(tmp_path / "cache"),
             "--out-dir", str(tmp_path / "run"), "--batch-size", "2", "--min-size", "64", "--max-size", "96",
             "--model-kwargs", json.dumps(small), "--no-progress"] + ONE_PROCESS + SHAPES_FLAGS
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(flags) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"] == "maskrcnn_resnet50_fpn"
    assert {k: config["model_kwargs"][k] for k in ("box_detections_per_img", "mask_batch_size_per_image",
                                                   "box_positive_fraction", "min_size")} == \
        {"box_detections_per_img": 20, "mask_batch_size_per_image": 8, "box_positive_fraction": 0.5, "min_size": 64}
    assert "fpn_channels" not in config["model_kwargs"] and "norm" not in config["model_kwargs"]
    assert weights.load(tmp_path / "run" / "checkpoint.npz")["iteration"] == 1
