"""The fuzzing harness (tests/fuzz/, docs/untrusted-files.md) and a short fixed-seed run of it.

First the harness itself: stub readers that load, fail cleanly, raise the wrong thing, allocate
past the bound, segfault, hang and run a command are each classified as such, with the place
in the code; a known-good seed loads and a truncated one fails cleanly; the structure-aware
mutators make what they claim; a finding shrinks to the bytes that cause it; the documented
command runs; every reader's seeds load.

Then the readers: every kept finding (tests/fuzz/findings/, each a file that once escaped,
crashed, hung or took too much memory) must end cleanly within its memory bound, and a short
fixed-seed campaign of each reader (about a minute for all) must find nothing.
"""
import ctypes
import io
import json
import os
import random
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on NumPy 2
harness = pytest.importorskip("fuzz.harness", reason="the fuzzing harness needs Linux (fork, /proc, RLIMIT_AS)")
from fuzz import mutators, readers  # noqa: E402
from fuzz.__main__ import main as fuzz_main  # noqa: E402

FINDINGS = Path(__file__).parent / "fuzz" / "findings"
# cases a reader in the CI run: about a minute for all of them together on a 2-core machine
CI_CASES = {"pth": 120, "npz": 120, "pretrained": 80, "checkpoint": 80, "coco": 120, "image": 120, "predict": 100, "metrics": 100}


class Stub(readers.Reader):
    """A reader that does whatever ``action(path)`` does."""
    name, suffix = "stub", ".bin"

    def __init__(self, action):
        self.action = action

    def seeds(self, workdir):
        return [("seed.bin", b"seed")]

    def run(self, path):
        self.action(path)


def loads(path):
    Path(path).read_bytes()


def fails_cleanly(path):
    raise ValueError(f"{path}: not what it claims to be")


def fails_without_the_name(path):
    raise ValueError("not what it claims to be")


def raises_key_error(path):
    {}["weights"]


def allocates_far_too_much(path):
    bytearray(2 ** 34)  # 16 GiB: past the cap, so a MemoryError


def touches_past_the_bound(path):
    np.ones(260 * 2 ** 20, np.uint8)  # over the bound (200 MB here), far under the cap: the peak tells


def segfaults(path):
    ctypes.string_at(0)


def hangs(path):
    time.sleep(60)


def runs_a_command(path):
    os.system(f"touch {path}.pwned")  # refused by the child's audit hook: the file never appears


@pytest.mark.parametrize("action, cls, kind", [
    (loads, "loaded", ""),
    (fails_cleanly, "clean", "ValueError"),
    (fails_without_the_name, "other", "ValueError"),
    (raises_key_error, "other", "KeyError"),
    (allocates_far_too_much, "memory", "MemoryError"),
    (touches_past_the_bound, "memory", ""),
    (segfaults, "crash", "SIGSEGV"),
    (hangs, "timeout", ""),
    (runs_a_command, "code", "os.system"),
])
def test_the_harness_classifies_every_outcome(tmp_path, action, cls, kind):
    path = tmp_path / "case.bin"
    # a loaded machine may take seconds to touch 260 MB: only the stub that hangs meets the limit
    outcome = harness.run_bytes(Stub(action), b"hello", path, timeout=2 if action is hangs else 30)
    assert outcome.cls == cls and outcome.type.endswith(kind), outcome
    if cls not in ("loaded", "clean") and action is not touches_past_the_bound:
        assert f"tests/test_fuzz.py:{action.__name__}" in outcome.where, outcome  # where it happened
    if action is touches_past_the_bound:
        assert outcome.memory > outcome.bound
    assert not path.with_name("case.bin.pwned").exists()


def test_a_good_seed_loads_and_a_truncated_one_fails_cleanly(tmp_path):
    reader = readers.NpzReader()
    reader.prepare(tmp_path)
    ((_, seed), *_) = reader.seeds(tmp_path)
    assert harness.run_bytes(reader, seed, tmp_path / "good.npz").cls == "loaded"
    outcome = harness.run_bytes(reader, seed[: len(seed) // 2], tmp_path / "cut.npz")
    assert outcome.cls == "clean", outcome
    assert "CheckpointError" in outcome.type


def test_overlapping_records_are_valid_and_read_the_file_many_times():
    data = readers.npz_overlap(readers.npz_meta_bytes("{}"), random.Random(0))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None  # every CRC right
        claimed = sum(info.file_size for info in archive.infolist())
        first = archive.infolist()[1]
        assert np.lib.format.read_array(archive.open(first)).size > 0.9 * first.file_size  # an honest .npy
    assert claimed > 50 * len(data)


def test_structure_aware_mutators_change_one_thing_and_keep_the_rest_valid(tmp_path):
    rng = random.Random(0)
    pickle_bytes = b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01K\x05s."
    indices = [op[1] for _ in range(10) for op in mutators.pickle_ops(
        mutators.memo_index(pickle_bytes, mutators.pickle_ops(pickle_bytes), rng)) if op[0] == "LONG_BINPUT"]
    assert indices and min(indices) >= 2 ** 20  # the rest of the pickle still parses
    archive = dict(readers.NpzReader().seeds(tmp_path))["small.npz"]
    for _ in range(10):  # an entry changed, the archive rebuilt around it with sizes and CRCs right
        mutated = mutators.zip_entry_mutation(archive, rng)
        assert mutated != archive and zipfile.ZipFile(io.BytesIO(mutated)).testzip() is None
    text = mutators.dump_json({"a": mutators.deep(5000), "b": mutators.huge_int(4301)}, rng)
    assert text.count("[") + text.count("{") > 5000 and "9" * 4301 in text


def test_a_finding_shrinks_to_the_bytes_that_cause_it(tmp_path):
    def fails_on_marker(path):
        if b"BAD" in Path(path).read_bytes():
            raise KeyError("marker")

    reader = Stub(fails_on_marker)
    data = bytes(random.Random(1).randrange(60, 90) for _ in range(120)).replace(b"BAD", b"") + b"BAD" + b"x" * 80
    key = harness.run_bytes(reader, data, tmp_path / "case.bin").key()
    assert harness.minimize(reader, data, key, tmp_path / "case.bin", seconds=60) == b"BAD"


def test_the_documented_command_writes_its_report(tmp_path, capsys):
    assert fuzz_main(["--reader", "metrics", "--cases", "20", "--seed", "1", "--out", str(tmp_path),
                      "--minimize-seconds", "0"]) == 0
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert sum(report["outcomes"].values()) == 20 and set(report["outcomes"]) == set(harness.CLASSES)
    assert report["seeds"] == {"metrics.jsonl": "loaded"}
    assert "| metrics | 20 |" in capsys.readouterr().out


@pytest.fixture(params=list(readers.READERS))
def reader(request, tmp_path):
    if request.param == "pth":
        request.getfixturevalue("torch")  # its seeds are written by torch.save
    reader = readers.READERS[request.param]()
    reader.prepare(tmp_path)
    return reader


def test_every_seed_loads(reader, tmp_path):
    """A reader whose valid files fail would make every finding meaningless (the checkpoint's
    seed carries only part of a model: it is meant to end in a clean 'does not fit' error)."""
    expected = "clean" if reader.name == "checkpoint" else "loaded"
    seeds = reader.seeds(tmp_path)
    outcomes = {name: harness.run_bytes(reader, data, tmp_path / f"seed{reader.suffix}").cls for name, data in seeds}
    assert outcomes == dict.fromkeys(outcomes, expected)


def test_a_short_campaign_finds_nothing(reader, tmp_path):
    # 20 s a case, not the long run's 10: a CI machine may be loaded by other jobs
    report = harness.campaign(reader, CI_CASES[reader.name], seed=0, out=tmp_path, timeout=20, minimize_seconds=0)
    bad = {cls: n for cls, n in report["outcomes"].items() if cls not in harness.GOOD and n}
    assert not bad, f"{reader.name}: {bad}\n" + "\n".join(
        f"{f['count']} x {f['class']} {f['type']} at {f['line']}: {f['message'][:150]}" for f in report["findings"])


def test_every_kept_finding_ends_cleanly_within_its_bound(tmp_path):
    """Each file that once escaped, crashed, hung or took too much memory: it loads or fails
    with the project's error naming it, its peak within 10 x its size + 200 MB (+ the image the
    reader may decode). ``run_case`` counts a peak over the bound as ``memory`` whatever else
    happened, so a clean error after gigabytes still fails here."""
    index = json.loads((FINDINGS / harness.INDEX).read_text())
    assert len(index) >= 44 and {v["reader"] for v in index.values()} <= set(readers.READERS)
    results = harness.replay(FINDINGS, readers.READERS, tmp_path, timeout=20)  # loaded CI machines, as above
    failing = [f"{name}: {outcome.cls} {outcome.type} at {outcome.line}: {outcome.message[:200]} "
               f"({outcome.memory / harness.MB:.0f} MB, bound {outcome.bound / harness.MB:.0f} MB)"
               for name, _, outcome in results if outcome.cls not in harness.GOOD or outcome.memory > outcome.bound]
    assert not failing, f"{len(failing)} of {len(results)} kept findings fail:\n" + "\n".join(failing)


# ---------------------------------------------------------------------------------------------
# The command line: a hostile file is one line and exit code 2
# ---------------------------------------------------------------------------------------------

def _kept(name, path):
    path.write_bytes(harness.read_kept(FINDINGS / name))
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A shapes set and a checkpoint load_model reads (an untrained tiny model, no training)."""
    from test_engine import TINY_MODEL, make_tiny_shapes
    from tinymaskrcnn import weights
    from tinymaskrcnn.engine.checkpoint import CHECKPOINT_FORMAT
    from tinymaskrcnn.models.registry import build_model

    root = tmp_path_factory.mktemp("cli")
    make_tiny_shapes(root / "shapes")
    model = build_model("maskrcnn_resnet18_fpn", 4, dict(TINY_MODEL))
    weights.save(root / "checkpoint.npz", {
        "format": CHECKPOINT_FORMAT, "model_name": "maskrcnn_resnet18_fpn", "model_kwargs": dict(TINY_MODEL),
        "num_classes": 4, "class_names": ["__background__", "circle", "square", "triangle"],
        "model": model.state_dict()})
    return root


@pytest.mark.parametrize("command, finding", [
    ("train", "pth/other-UnicodeDecodeError-read-zip-643106.pt"),
    ("evaluate", "checkpoint/other-IndexError-init-98f6d8.npz"),
    ("predict", "checkpoint/other-ValueError-init-6f70e7.npz"),
    ("predict", "predict/memory-ArrayMemoryError-unit-rgb-in-bands-6458e4.img.gz"),
    ("predict", "image/other-ValueError-unit-rgb-511da9.img"),
    ("coco-subset", "coco/other-OSError-image-problems-b355f4.json"),
    ("coco-subset", "coco/other-ValueError-load-instances-621013.json"),
])
def test_each_command_reports_a_hostile_file_in_one_line(tiny_run, tmp_path, capsys, command, finding):
    from tinymaskrcnn import cli

    suffix = {"pth": ".pth", "checkpoint": ".npz", "coco": ".json"}.get(finding.split("/")[0], ".png")
    bad = _kept(finding, tmp_path / f"bad{suffix}")
    data, image = tiny_run / "shapes", tiny_run / "shapes" / "images" / "val"
    argv = {"train": ["train", "--data", str(data), "--out-dir", str(tmp_path / "run"), "--weights", str(bad),
                      "--iterations", "1", "--no-progress"],
            "evaluate": ["evaluate", str(bad), "--data", str(data), "--no-progress"],
            "coco-subset": ["coco-subset", str(bad), str(tmp_path / "subset.json")]}.get(command)
    if command == "predict":
        checkpoint = bad if suffix == ".npz" else tiny_run / "checkpoint.npz"
        picture = next(image.iterdir()) if suffix == ".npz" else bad
        argv = ["predict", str(checkpoint), str(picture), "--out-dir", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tinymaskrcnn {command}: error: ") and err.count("\n") == 1 and str(bad) in err, err
