"""The project's checkpoints: a nested dict as an ``.npz``, no pickle anywhere.

``save(path, state)`` takes a dict (model and optimizer state, iteration, RNG state, config),
nested as you like: each array becomes an npz entry (bit-exact, dtype kept), everything else
JSON in one more entry of the same archive, so the file opens with plain NumPy too. It is
written atomically. ``load(path)`` gives the same structure back and reads the file as warily as
``pth.py`` reads a ``.pth``: every entry stored uncompressed inside the file, holding exactly
the bytes its header claims, and no object arrays; anything else is a ``CheckpointError``.
"""
import collections
import collections.abc
import json
import math
import os
import tokenize
import zipfile

import numpy as np

from ..core.backend import is_cupy, to_numpy
from ..core.files import atomic_write, parse_json
from .pth import ZIP_DAMAGE, CheckpointError, check_disjoint_records, check_stored_record, damage_message

__all__ = ["save", "load"]

_FORMAT = "tinymaskrcnn-checkpoint"
_FORMAT_VERSION = 1
_META_ENTRY = "__tinymaskrcnn__"  # the JSON tree; every other entry is an array
# An entry's shape, beyond the bytes it must hold: numpy refuses more than 64 dimensions, and a
# shape with a zero and a huge dimension holds nothing yet overflows what numpy can index.
_MAX_DIMS = 32
_MAX_SPAN = 2 ** 40  # bytes, counting every dimension as at least 1
# What numpy's .npy header parser raises for a header that is not one: its text goes through
# tokenize and ast.literal_eval.
_HEADER_ERRORS = (ValueError, KeyError, SyntaxError, TypeError, OverflowError, RecursionError, MemoryError,
                  tokenize.TokenError)


def _encode(obj, path, arrays):
    """The JSON form of ``obj``; arrays go into ``arrays`` under a name made from ``path``.

    Every non-JSON value becomes a one-key tagged object, so decoding is unambiguous:
    {"__array__": name}, {"__scalar__": name} (NumPy scalar), {"__tuple__": [...]},
    {"__dict__" or "__odict__": {...} when all keys are strings, else [[key, value], ...]}.
    """
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.ndarray, np.generic)) or is_cupy(obj):
        array = to_numpy(obj)
        if array.dtype.hasobject:
            raise TypeError(f"cannot save the object array at '{'/'.join(map(str, path))}': only numeric, bool and "
                            "string arrays are stored (no pickle)")
        name = "/".join(map(str, path))
        if name in arrays or name == _META_ENTRY:
            name = f"{name}#{len(arrays)}"  # keys containing '/' can collide once joined
        arrays[name] = array
        return {"__scalar__" if isinstance(obj, np.generic) else "__array__": name}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, path + (i,), arrays) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, path + (i,), arrays) for i, v in enumerate(obj)]
    if isinstance(obj, collections.abc.Mapping):
        tag = "__odict__" if isinstance(obj, collections.OrderedDict) else "__dict__"
        if all(isinstance(k, str) for k in obj):
            return {tag: {k: _encode(v, path + (k,), arrays) for k, v in obj.items()}}
        return {tag: [[_encode(k, path + ("key",), arrays), _encode(v, path + (k,), arrays)] for k, v in obj.items()]}
    raise TypeError(f"cannot save {type(obj).__name__} at '{'/'.join(map(str, path))}': a checkpoint holds arrays, "
                    "NumPy scalars, numbers, strings, None, lists, tuples and dicts")


def _decode(node, arrays):
    if isinstance(node, list):
        return [_decode(v, arrays) for v in node]
    if not isinstance(node, dict):
        return node
    ((tag, payload),) = node.items()
    if tag == "__array__":
        return arrays[payload]
    if tag == "__scalar__":
        return arrays[payload][()]
    if tag == "__tuple__":
        return tuple(_decode(v, arrays) for v in payload)
    kind = collections.OrderedDict if tag == "__odict__" else dict
    if isinstance(payload, dict):
        return kind((k, _decode(v, arrays)) for k, v in payload.items())
    return kind((_decode(k, arrays), _decode(v, arrays)) for k, v in payload)


def _write_npz(f, arrays):
    """What np.savez writes (a zip of .npy entries), with pickling off and no keyword clashes."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(name + ".npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, array, allow_pickle=False)


def save(path, state):
    """Save a checkpoint: ``state`` is a dict, nested as you like, of arrays (NumPy or CuPy),
    NumPy scalars, numbers, strings, None, lists, tuples and dicts, e.g.::

        save("ckpt.npz", {"model": model.state_dict(), "optimizer": opt.state_dict(),
                          "iteration": 1200, "rng": tm.random.get_state(), "config": cfg})

    Arrays become npz entries (bit-exact, dtype kept), the rest JSON inside the archive. The
    file is written atomically: an interrupted save leaves the previous checkpoint intact.
    """
    if not isinstance(state, collections.abc.Mapping):
        raise TypeError(f"save(path, state) expects a dict state, got {type(state).__name__}")
    arrays = {}
    tree = _encode(state, (), arrays)
    meta = json.dumps({"format": _FORMAT, "version": _FORMAT_VERSION, "tree": tree})
    arrays[_META_ENTRY] = np.array(meta)
    atomic_write(path, lambda f: _write_npz(f, arrays))


def _read_npz(path):
    """The arrays of an .npz (a zip of .npy files), name -> array, read as warily as a .pth:
    every entry stored uncompressed inside the file (``check_stored_record``), apart from the
    others (``check_disjoint_records``), holding exactly the bytes its header's shape and dtype
    claim, with a sane shape, and no object arrays (only pickle reads those, and unpickling can
    run code). Checked on the header before any array is allocated."""
    file_size = os.path.getsize(path)
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        if _META_ENTRY + ".npy" not in archive.namelist():
            raise CheckpointError(f"{path} is not a tinymaskrcnn checkpoint (written by tinymaskrcnn.weights.save): "
                                  f"the archive has no '{_META_ENTRY}' entry (a torch .pth? use read_pth or "
                                  "load_torchvision)")
        check_disjoint_records(archive.infolist(), path)
        for info in archive.infolist():
            check_stored_record(info, path, file_size)
            name = info.filename.removesuffix(".npy")
            with archive.open(info) as f:
                try:
                    version = np.lib.format.read_magic(f)
                    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                                   (2, 0): np.lib.format.read_array_header_2_0}[version]
                    shape, _, dtype = read_header(f)
                except _HEADER_ERRORS as e:
                    raise CheckpointError(f"{path}: entry {info.filename!r} is not an .npy array this version reads "
                                          f"({type(e).__name__}: {str(e)[:200]}); the file is damaged or not a "
                                          "checkpoint") from None
                if dtype.hasobject:
                    raise CheckpointError(f"{path}: entry {name!r} is an object array, which only pickle reads, and "
                                          "unpickling can run code: refused. tinymaskrcnn.weights.save never writes "
                                          "one; this file was written some other way")
                held, claimed = info.file_size - f.tell(), math.prod(shape) * dtype.itemsize
                if len(shape) > _MAX_DIMS or math.prod(max(n, 1) for n in shape) * dtype.itemsize > _MAX_SPAN:
                    raise CheckpointError(f"{path}: entry {name!r} claims shape {shape[:_MAX_DIMS]}"
                                          f"{'...' if len(shape) > _MAX_DIMS else ''}, beyond any saved array; the "
                                          "file is damaged")
                if held != claimed:
                    raise CheckpointError(f"{path}: entry {name!r} claims {shape} {dtype} ({claimed} bytes) but holds "
                                          f"{held}: the file is damaged")
            with archive.open(info) as f:
                arrays[name] = np.lib.format.read_array(f, allow_pickle=False)
    return arrays


def load(path):
    """Load a checkpoint written by ``save``: the same nested structure, arrays as NumPy arrays
    with their dtypes. Nothing is unpickled. A damaged, truncated or foreign file raises
    ``CheckpointError`` (a ValueError) naming the file and the entry."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    with open(path, "rb") as f:
        head = f.read(6)
    if not head.startswith(b"PK\x03\x04"):
        what = "it holds a single .npy array" if head == b"\x93NUMPY" else "it is not a zip archive"
        raise CheckpointError(f"{path} is not a tinymaskrcnn checkpoint (written by tinymaskrcnn.weights.save): {what}")
    try:
        arrays = _read_npz(path)
    except ZIP_DAMAGE as e:  # the directory or an entry's header or CRC
        raise CheckpointError(damage_message(path, e)) from e
    meta = parse_json(str(arrays.pop(_META_ENTRY)), path, f"'{_META_ENTRY}' entry", CheckpointError)
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT or meta.get("version") != _FORMAT_VERSION:
        found = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else (None, None)
        raise CheckpointError(f"{path} is not a tinymaskrcnn checkpoint this version reads: format {found[0]!r} "
                              f"version {found[1]!r}, this version reads {_FORMAT!r} version {_FORMAT_VERSION}")
    try:
        return _decode(meta["tree"], arrays)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as e:
        raise CheckpointError(f"{path}: its '{_META_ENTRY}' index does not match its arrays ({type(e).__name__}: "
                              f"{e}); the file is damaged") from e
