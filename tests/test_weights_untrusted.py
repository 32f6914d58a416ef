"""Weights and checkpoint files as a user may really have them: damaged in a copy, cut off by
a full disk, crafted by someone else. Every one ends in a ``CheckpointError`` (a ValueError)
naming the file and what is wrong, never another exception, and no record makes the reader
allocate more than the file's own bytes allow. The files are written by hand (zip records and
pickle opcodes), so these tests need no torch; where torch is there, it confirms that the
crafted files are what it writes.
"""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from tinymaskrcnn import cli, weights
from tinymaskrcnn.core import files

from helpers import PEAK_RSS_MB

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on NumPy 2

# ---------------------------------------------------------------------------------------------
# Writing .pth files by hand: the pickle opcode by opcode (protocol 2, as torch.save writes),
# the storages as zip records or after the pickle (legacy format)
# ---------------------------------------------------------------------------------------------


def _text(s):
    return b"X" + len(s).to_bytes(4, "little") + s.encode()  # BINUNICODE


def _int(n):
    return b"J" + n.to_bytes(4, "little", signed=True) if n < 2 ** 31 else b"\x8a\x08" + n.to_bytes(8, "little")


def _tuple(items):
    return b"(" + b"".join(items) + b"t"  # MARK ... TUPLE


def tensor_record(storage_type, key, numel, size, stride, offset=0, fmt="zip"):
    """``_rebuild_tensor_v2(<storage_type key of numel>, offset, size, stride, False, OrderedDict())``;
    the legacy format's storage record has a sixth field, the view (None)."""
    storage = _tuple([_text("storage"), b"ctorch\n" + storage_type.encode() + b"\n", _text(key), _text("cpu"),
                      _int(numel)] + ([b"N"] if fmt == "legacy" else [])) + b"Q"  # BINPERSID
    return (b"ctorch._utils\n_rebuild_tensor_v2\n" + _tuple([storage, _int(offset), _tuple(map(_int, size)),
                                                            _tuple(map(_int, stride)), b"\x89",
                                                            b"ccollections\nOrderedDict\n)R"]) + b"R")


def state_pickle(**records):
    """A dict pickle: {name: record, ...}."""
    return b"\x80\x02}" + b"".join(_text(name) + record + b"s" for name, record in records.items()) + b"."


def write_zip_pth(path, pickle_bytes, storages):
    """A torch.save zip: archive/data.pkl, byteorder, version, and archive/data/<key> for each
    storage, every record stored (uncompressed) as torch.save writes them."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", data)
    return path


LEGACY_HEADER = b"".join([b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b".",  # magic
                          b"\x80\x02" + _int(1001) + b".",                                              # protocol
                          b"\x80\x02}."])                                                               # system info


def write_legacy_pth(path, pickle_bytes, storages):
    """The pre-1.6 stream: header pickles, the object, the key list, then per storage its element
    count (8 bytes) and little-endian bytes. ``storages`` maps key -> (numel, bytes)."""
    keys = b"\x80\x02]" + b"".join(_text(k) + b"a" for k in storages) + b"."
    with open(path, "wb") as f:
        f.write(LEGACY_HEADER + pickle_bytes + keys)
        for numel, data in storages.values():
            f.write(numel.to_bytes(8, "little") + data)
    return path


def small_pth(path, fmt):
    """A small valid file: w = arange(12) as a float32 3x4, b = a bfloat16 view of 3."""
    bf16 = (np.arange(4, dtype=np.float32) + 0.5).view(np.uint32) >> 16
    pkl = state_pickle(w=tensor_record("FloatStorage", "0", 12, (3, 4), (4, 1), fmt=fmt),
                       b=tensor_record("BFloat16Storage", "1", 4, (3,), (1,), offset=1, fmt=fmt))
    data = {"0": np.arange(12, dtype="<f4").tobytes(), "1": bf16.astype("<u2").tobytes()}
    if fmt == "zip":
        return write_zip_pth(path, pkl, data)
    return write_legacy_pth(path, pkl, {"0": (12, data["0"]), "1": (4, data["1"])})


def small_checkpoint(path):
    weights.save(path, {"model": {"conv.weight": np.arange(6, dtype=np.float32).reshape(2, 3) + 0.5}, "iteration": 7})
    return path


def assert_names_file(error, path):
    assert isinstance(error, ValueError) and str(path) in str(error)


# ---------------------------------------------------------------------------------------------
# The crafted files are what torch writes and reads
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_handwritten_files_are_torch_files(torch, tmp_path, fmt):
    path = small_pth(tmp_path / "small.pth", fmt)
    theirs = torch.load(path, weights_only=True)
    ours = weights.read_pth(path)
    assert np.array_equal(ours["w"], theirs["w"].numpy()) and ours["w"].dtype == np.float32
    assert np.array_equal(ours["b"], theirs["b"].float().numpy()) and ours["b"].dtype == np.float32
    assert np.array_equal(ours["b"], [1.5, 2.5, 3.5])


# ---------------------------------------------------------------------------------------------
# Point 5: damaged files end in a CheckpointError naming the file
# ---------------------------------------------------------------------------------------------

def _readers():
    return {"zip": (lambda p: small_pth(p, "zip"), weights.read_pth),
            "legacy": (lambda p: small_pth(p, "legacy"), weights.read_pth),
            "npz": (small_checkpoint, weights.load)}


@pytest.mark.parametrize("kind", ["zip", "legacy", "npz"])
def test_every_flipped_byte_is_read_or_reported(tmp_path, kind):
    """Flip each byte of a small file in turn: each read returns or raises CheckpointError naming
    the file (a flip inside a legacy storage's bytes cannot be seen: it only changes a value)."""
    write, read = _readers()[kind]
    original = write(tmp_path / "good").read_bytes()
    bad = tmp_path / "flipped"
    reported = 0
    for i in range(len(original)):
        bad.write_bytes(original[:i] + bytes([original[i] ^ 0x55]) + original[i + 1:])
        try:
            read(bad)
        except weights.CheckpointError as e:
            assert_names_file(e, bad)
            reported += 1
    assert reported > len(original) // 3  # the test does reach the errors


@pytest.mark.parametrize("kind", ["zip", "legacy", "npz"])
def test_every_truncation_is_reported(tmp_path, kind):
    write, read = _readers()[kind]
    original = write(tmp_path / "good").read_bytes()
    cut = tmp_path / "cut"
    for n in range(len(original)):
        cut.write_bytes(original[:n])
        with pytest.raises(weights.CheckpointError) as info:
            read(cut)
        assert_names_file(info.value, cut)


def _flip_inside(content, needle):
    i = content.index(needle) + len(needle) // 2
    return content[:i] + bytes([content[i] ^ 1]) + content[i + 1:]


def test_bit_flipped_zip_names_the_crc(tmp_path):
    pth = small_pth(tmp_path / "w.pth", "zip")
    pth.write_bytes(_flip_inside(pth.read_bytes(), np.arange(12, dtype="<f4").tobytes()))
    with pytest.raises(weights.CheckpointError, match=rf"{pth} is damaged or truncated \(Bad CRC-32.*copy it again"):
        weights.read_pth(pth)
    npz = small_checkpoint(tmp_path / "c.npz")
    npz.write_bytes(_flip_inside(npz.read_bytes(), weights.load(npz)["model"]["conv.weight"].tobytes()))
    with pytest.raises(weights.CheckpointError, match=rf"{npz} is damaged or truncated \(Bad CRC-32.*conv.weight"):
        weights.load(npz)


def test_corrupt_tensor_record_names_file_and_storage(tmp_path):
    path = write_zip_pth(tmp_path / "w.pth", state_pickle(w=tensor_record("FloatStorage", "0", 4, (3,), (1,), 2)),
                         {"0": np.zeros(4, "<f4").tobytes()})
    with pytest.raises(weights.CheckpointError, match=rf"{path}: archive/data.pkl: corrupt tensor record on storage "
                                                      r"'archive/data/0'.*reach element 4 of a storage of 4"):
        weights.read_pth(path)


def test_object_array_checkpoint_is_refused_by_name(tmp_path):
    path = tmp_path / "objects.npz"
    meta = json.dumps({"format": "tinymaskrcnn-checkpoint", "version": 1, "tree": {"__array__": "x"}})
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object), __tinymaskrcnn__=np.array(meta), allow_pickle=True)
    with pytest.raises(weights.CheckpointError, match=rf"{path}: entry 'x' is an object array.*refused"):
        weights.load(path)


def test_damaged_index_is_reported(tmp_path):
    path = tmp_path / "c.npz"
    files.atomic_write(path, lambda f: weights.npz._write_npz(f, {
        "__tinymaskrcnn__": np.array(json.dumps({"format": "tinymaskrcnn-checkpoint", "version": 1,
                                                 "tree": {"__array__": "absent"}}))}))
    with pytest.raises(weights.CheckpointError, match=rf"{path}: its '__tinymaskrcnn__' index does not match"):
        weights.load(path)
    files.atomic_write(path, lambda f: weights.npz._write_npz(f, {"__tinymaskrcnn__": np.array("{not json")}))
    with pytest.raises(weights.CheckpointError, match=rf"{path}: its '__tinymaskrcnn__' entry is not JSON"):
        weights.load(path)


# ---------------------------------------------------------------------------------------------
# Point 6: no small file takes large memory
# ---------------------------------------------------------------------------------------------

PEAK_SCRIPT = PEAK_RSS_MB + """
import json, sys
from tinymaskrcnn import weights
read = getattr(weights, sys.argv[1])
before = peak_rss_mb()
try:
    out = read(sys.argv[2])
    result = {"ok": {k: [list(v.shape), str(v.dtype), float(v.flat[0]), float(v.flat[-1])] for k, v in out.items()}}
except weights.CheckpointError as e:
    result = {"error": str(e)}
result["peak_mb"] = peak_rss_mb() - before
print(json.dumps(result))
"""


def read_in_subprocess(reader, path):
    """Read ``path`` in a fresh interpreter: what came back, and by how much the peak resident
    memory grew while reading."""
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, reader, str(path)], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.splitlines()[-1])


LIMIT_MB = 200


@pytest.mark.skipif(sys.platform != "linux", reason="VmHWM of /proc/self/status is Linux's")
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_stride0_bfloat16_costs_its_storage_not_its_size(tmp_path, fmt):
    """One bfloat16 element expanded to 2^28 (torch's expand saves stride 0): 1 GB of float32
    if widened after viewing, 4 bytes if the storage is widened before."""
    pkl = state_pickle(w=tensor_record("BFloat16Storage", "0", 1, (2 ** 28,), (0,), fmt=fmt))
    one = (np.float32(1.5).view(np.uint32) >> 16).astype("<u2").tobytes()
    path = (write_zip_pth(tmp_path / "bomb.pth", pkl, {"0": one}) if fmt == "zip"
            else write_legacy_pth(tmp_path / "bomb.pth", pkl, {"0": (1, one)}))
    assert path.stat().st_size < 1000
    result = read_in_subprocess("read_pth", path)
    assert result.get("ok") == {"w": [[2 ** 28], "float32", 1.5, 1.5]}, result
    assert result["peak_mb"] < LIMIT_MB, result


@pytest.mark.skipif(sys.platform != "linux", reason="VmHWM of /proc/self/status is Linux's")
def test_compressed_storage_is_refused_before_inflating(tmp_path):
    """256 MB of zeros deflate to a quarter MB: a compressed record may claim any size."""
    numel = 64 * 2 ** 20
    path = tmp_path / "deflated.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", state_pickle(w=tensor_record("FloatStorage", "0", numel, (numel,), (1,))))
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w", force_zip64=True) as f:
            zeros = bytes(2 ** 20)
            for _ in range(256):
                f.write(zeros)
    assert path.stat().st_size < 2 ** 20
    result = read_in_subprocess("read_pth", path)
    assert "error" in result, result
    assert result["error"].startswith(f"{path}: record 'archive/data/0' is compressed"), result
    assert result["peak_mb"] < LIMIT_MB, result


def _claim_more(content, name, nbytes):
    """``content`` (a zip) with the central directory entry of ``name`` claiming ``nbytes``."""
    i = content.index(b"PK\x01\x02")
    while content[i + 46: i + 46 + len(name)] != name.encode():
        i = content.index(b"PK\x01\x02", i + 1)
    size = nbytes.to_bytes(4, "little")
    return content[:i + 20] + size + size + content[i + 28:]


def test_record_claiming_more_than_the_file_is_refused(tmp_path):
    pkl = state_pickle(w=tensor_record("FloatStorage", "0", 2 ** 27, (2 ** 27,), (1,)))
    path = tmp_path / "claims.pth"
    with zipfile.ZipFile(path, "w") as z:  # no zip64 extra: the sizes sit in the 32-bit fields
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/data/0", np.zeros(4, "<f4").tobytes())
    path.write_bytes(_claim_more(path.read_bytes(), "archive/data/0", 2 ** 29))
    with pytest.raises(weights.CheckpointError, match=rf"{path}: record 'archive/data/0' claims {2 ** 29} bytes, "
                                                      "beyond the file's"):
        weights.read_pth(path)


def test_legacy_storages_together_bounded_by_the_file(tmp_path):
    """Each storage alone fits the file, the two together do not."""
    pkl = state_pickle(a=tensor_record("ByteStorage", "0", 400, (400,), (1,), fmt="legacy"),
                       b=tensor_record("ByteStorage", "1", 400, (400,), (1,), fmt="legacy"))
    path = write_legacy_pth(tmp_path / "two.pth", pkl, {"0": (400, bytes(400))})
    assert 400 + len(pkl) < path.stat().st_size < 800
    with pytest.raises(weights.CheckpointError,
                       match=rf"{path}: storage '1' claims 400 elements.*damaged or truncated"):
        weights.read_pth(path)


@pytest.mark.parametrize("size, stride", [((2 ** 20,) * 3, (0, 0, 0)), ((1,) * 33, (1,) * 33)])
def test_absurd_sizes_are_refused(tmp_path, size, stride):
    path = write_zip_pth(tmp_path / "absurd.pth", state_pickle(w=tensor_record("FloatStorage", "0", 1, size, stride)),
                         {"0": np.zeros(1, "<f4").tobytes()})
    with pytest.raises(weights.CheckpointError, match=rf"{path}: archive/data.pkl: corrupt tensor record on storage "
                                                      r"'archive/data/0': size .* is beyond any saved tensor"):
        weights.read_pth(path)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_pickle_length_field_beyond_memory(tmp_path, fmt):
    """A BINBYTES8 opcode claiming 2^40 bytes: found when the pickle is read ahead (no byte of
    it allocated), reported as the file's."""
    pkl = b"\x80\x04}" + _text("w") + b"\x8e" + (2 ** 40).to_bytes(8, "little") + b"abc"
    path = write_zip_pth(tmp_path / "long.pth", pkl, {}) if fmt == "zip" else write_legacy_pth(tmp_path / "long.pth",
                                                                                                  pkl, {})
    with pytest.raises(weights.CheckpointError, match=rf"{path}: .* is not a readable pickle \(ValueError: expected "
                                                      r"1099511627776 bytes in a bytes8, but only \d+ remain\)"):
        weights.read_pth(path)


def test_compressed_checkpoint_entry_is_refused(tmp_path):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, __tinymaskrcnn__=np.array("{}"), x=np.zeros(10))
    with pytest.raises(weights.CheckpointError, match=rf"{path}: record '__tinymaskrcnn__.npy' is compressed"):
        weights.load(path)


def test_checkpoint_entry_claiming_more_than_it_holds(tmp_path):
    """An .npy header claiming 4x3x3x9 floats over the bytes of 4x3x3x3 (CRC intact)."""
    path = tmp_path / "c.npz"
    meta = json.dumps({"format": "tinymaskrcnn-checkpoint", "version": 1, "tree": {"__array__": "w"}})
    with zipfile.ZipFile(path, "w") as z:
        with z.open("__tinymaskrcnn__.npy", "w") as f:
            np.lib.format.write_array(f, np.array(meta))
        with z.open("w.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (4, 3, 3, 9)})
            f.write(np.zeros((4, 3, 3, 3), "<f4").tobytes())
    with pytest.raises(weights.CheckpointError, match=rf"{path}: entry 'w' claims \(4, 3, 3, 9\) float32 \(1296 "
                                                      r"bytes\) but holds 432: the file is damaged"):
        weights.load(path)


# ---------------------------------------------------------------------------------------------
# Point 5 at the command line: one line, exit code 2
# ---------------------------------------------------------------------------------------------

def bad_pth(tmp_path, kind):
    """A .pth a user could be handed: damaged in a copy, cut off, crafted, or re-zipped."""
    path = tmp_path / f"{kind}.pth"
    if kind == "refused_pickle":  # a pickle that would call os.system
        return write_zip_pth(path, b"\x80\x02cos\nsystem\n" + _text("true") + b"\x85R.", {})
    if kind == "corrupt_record":
        return write_zip_pth(path, state_pickle(w=tensor_record("FloatStorage", "0", 4, (5,), (1,))),
                             {"0": np.zeros(4, "<f4").tobytes()})
    if kind == "compressed":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("archive/data.pkl", state_pickle(w=tensor_record("FloatStorage", "0", 4, (4,), (1,))))
            z.writestr("archive/data/0", np.zeros(4, "<f4").tobytes())
        return path
    content = small_pth(tmp_path / "good.pth", kind.split("_")[1]).read_bytes()
    if kind.startswith("flipped"):
        path.write_bytes(_flip_inside(content, np.arange(12, dtype="<f4").tobytes()))
    else:  # truncated
        path.write_bytes(content[: len(content) * 2 // 3])
    return path


def bad_npz(tmp_path, kind):
    path = tmp_path / "checkpoint.npz"
    if kind == "object_array":
        meta = json.dumps({"format": "tinymaskrcnn-checkpoint", "version": 1, "tree": {"__array__": "x"}})
        np.savez(path, x=np.array([None], dtype=object), __tinymaskrcnn__=np.array(meta), allow_pickle=True)
        return path
    content = small_checkpoint(tmp_path / "good.npz").read_bytes()
    if kind == "flipped":
        path.write_bytes(_flip_inside(content, (np.arange(6, dtype=np.float32) + 0.5).tobytes()))
    else:  # truncated
        path.write_bytes(content[: len(content) // 2])
    return path


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from test_engine import make_tiny_shapes

    root = tmp_path_factory.mktemp("data") / "shapes"
    make_tiny_shapes(root)
    return root


def assert_one_line(capsys, command, path):
    err = capsys.readouterr().err
    assert err.startswith(f"tinymaskrcnn {command}: error: ") and err.count("\n") == 1, err
    assert str(path) in err, err
    return err


BAD_PTH = ["flipped_zip", "truncated_zip", "truncated_legacy", "refused_pickle", "corrupt_record", "compressed"]


@pytest.mark.parametrize("kind", BAD_PTH)
def test_train_with_bad_weights(tiny_data, tmp_path, capsys, kind):
    from test_cli import TINY_FLAGS

    path = bad_pth(tmp_path, kind)
    assert cli.main(["train", "--data", str(tiny_data), "--out-dir", str(tmp_path / "run"), "--weights", str(path)]
                    + TINY_FLAGS) == 2
    assert_one_line(capsys, "train", path)


@pytest.mark.parametrize("kind", ["flipped", "truncated", "object_array"])
def test_evaluate_and_resume_bad_checkpoint(tiny_data, tmp_path, capsys, kind):
    from test_cli import TINY_FLAGS

    path = bad_npz(tmp_path, kind)
    assert cli.main(["evaluate", str(path), "--data", str(tiny_data), "--no-progress"]) == 2
    assert_one_line(capsys, "evaluate", path)
    assert cli.main(["train", "--data", str(tiny_data), "--out-dir", str(tmp_path), "--resume"] + TINY_FLAGS) == 2
    assert_one_line(capsys, "train", path)


def test_console_script_reports_a_damaged_checkpoint(tmp_path):
    """The real process: exit code 2, one line, no traceback."""
    path = bad_npz(tmp_path, "flipped")
    done = subprocess.run([sys.executable, "-m", "tinymaskrcnn.cli", "evaluate", str(path)], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"tinymaskrcnn evaluate: error: {path} is damaged or truncated (Bad CRC-32 for file " \
                          "'model/conv.weight.npy'): download or copy it again\n"


# ---------------------------------------------------------------------------------------------
# Point 7 at the command line: an ImageNet ResNet for --weights
# ---------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:evaluate_coco. no detections:UserWarning")  # two iterations find nothing
def test_train_weights_imagenet_backbone(torch, tiny_data, tmp_path, capsys):
    import torchvision

    from test_cli import TINY_FLAGS

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    rc = cli.main(["train", "--data", str(tiny_data), "--out-dir", str(tmp_path / "run"),
                   "--weights", str(tmp_path / "resnet18.pth")] + TINY_FLAGS)
    out = capsys.readouterr().out
    assert rc == 0
    assert f"weights {tmp_path / 'resnet18.pth'} (an ImageNet ResNet into backbone.body., fc left out): loaded 120 " \
           "of " in out and "the backbone's 120 of 120" in out

    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "resnet50.pth")
    assert cli.main(["train", "--data", str(tiny_data), "--out-dir", str(tmp_path / "run50"),
                     "--weights", str(tmp_path / "resnet50.pth")] + TINY_FLAGS) == 2
    err = assert_one_line(capsys, "train", tmp_path / "resnet50.pth")
    assert "only 97 of the backbone's 120 arrays fit" in err
