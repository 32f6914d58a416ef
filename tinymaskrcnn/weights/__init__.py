"""Weights in and out: torchvision's ``.pth`` files without torch, and our own checkpoints.

Three jobs, one file:

1. **Reading a .pth without torch** (``read_pth``). ``torch.save`` writes a pickle. Since
   PyTorch 1.6 it is a zip archive::

       <name>/data.pkl        the pickled object (a dict of tensors, say)
       <name>/data/<key>      the raw bytes of each storage, one record per storage
       <name>/byteorder       'little' or 'big'
       <name>/version         format version

   Before 1.6 (the *legacy* format, still met in older published weights) it is a
   stream of pickles: a magic number, a protocol version, system info, the object, the list
   of storage keys, then each storage as an 8-byte element count and its little-endian bytes.

   In both, a tensor is pickled as a call ``torch._utils._rebuild_tensor_v2(storage,
   storage_offset, size, stride, ...)`` and a storage as a *persistent id*
   ``('storage', torch.FloatStorage, key, location, numel)``. A pickle can name *any*
   importable function (``os.system`` ...) and unpickling calls it, so a .pth from the
   internet must never be opened with ``pickle.load``. ``SafeUnpickler`` resolves only the
   few names a state_dict needs, each to a harmless function of ours that builds a NumPy array
   as a strided view of its storage (views sharing a storage share memory, as in torch); any
   other name is refused before anything runs.

   The file is untrusted in a second way: every number in it (an element count, a size, a
   stride, a zip record's length) is a claim. Each is checked against the bytes really in the
   file before anything is allocated, so a file of a few hundred bytes cannot make the reader
   take gigabytes: a tensor's elements must lie in its storage, a storage's bytes in its
   record, a record in the file, uncompressed (``torch.save`` never compresses; a deflated
   record can inflate a thousandfold). A view may still be larger than its storage (stride 0,
   as ``expand`` saves): it costs nothing, as long as bfloat16 is widened per storage, not
   per view. Whatever is wrong with a file, damaged, truncated or hostile, the reader raises
   ``CheckpointError`` (a ValueError) naming the file, the record and what to do.

2. **Loading torchvision weights into our modules** (``load_torchvision``). Our parameter and
   buffer names are torchvision's state_dict keys, so the mapping is the identity, up to a
   ``prefix`` (ImageNet ResNet weights into ``model.backbone.body.``) and keys to leave out
   (``exclude``, e.g. the ImageNet classifier ``fc.``). Missing, unexpected and mis-shaped keys
   are reported together, with shapes. ``load_pretrained`` is what ``train --weights`` needs:
   it tells a detector's checkpoint from an ImageNet ResNet by the keys and insists that the
   whole backbone is loaded.

3. **Our checkpoints** (``save``/``load``): a nested dict (model and optimizer state, iteration,
   RNG state, config) as an ``.npz``: each array an npz entry, everything else JSON inside the
   same archive. No pickle anywhere, written atomically, and read as warily as a .pth.

And ``download``: torchvision's published weight files, checked against the SHA-256 prefix in
their names.
"""
import collections
import collections.abc
import hashlib
import json
import math
import os
import pickle
import re
import sys
import tarfile
import urllib.request
import zipfile
import zlib

import numpy as np

from ..core.autograd import Tensor
from ..core.backend import is_cupy, to_numpy
from ..core.files import atomic_write
from ..nn.module import format_state_mismatch

__all__ = ["CheckpointError", "read_pth", "state_dict_from", "load_torchvision", "load_pretrained",
           "LoadResult", "save", "load",
           "WEIGHT_URLS", "download", "verify_sha256"]


# ================================================================================================
# 1. Reading .pth files
# ================================================================================================

class CheckpointError(ValueError):
    """A weights or checkpoint file that cannot be read: damaged, truncated, hostile, or not
    what it claims to be. The message names the file, what is wrong and what to do. A
    ValueError, so the command line reports it in one line with exit code 2."""


# torch's storage class names → the NumPy dtype of their elements. bfloat16 has no NumPy
# dtype: its storages are read as uint16 and widened to float32 (exact: bf16 is the top half).
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128, "UntypedStorage": np.uint8,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
# A tensor's elements must lie in its storage, but its logical size may be far larger (stride
# 0, as torch's expand saves): a view costs nothing, anything that copies it would. Beyond
# these a record is corrupt, not a tensor anyone saved.
_MAX_DIMS = 32
_MAX_ELEMENTS = 2 ** 40


class _RecordError(pickle.UnpicklingError):
    """A record the reader understood and refuses; its message is complete but for the file."""


class _StorageType:
    """What the pickle's ``torch.FloatStorage`` (etc.) resolves to: a name and the dtype of
    its elements on disk."""

    def __init__(self, name):
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A loaded storage: its elements as a flat array (bfloat16 already widened), its storage
    type's name, and the record it was read from (for error messages)."""

    def __init__(self, array, kind, record):
        self.array, self.kind, self.record = array, kind, record


def _widened(array, kind):
    """The elements as NumPy computes with them: a bfloat16 is the high half of a float32, so
    its bits go there, the low mantissa bits zero; other types stay as they are. Done once
    per storage, not per tensor: a stride-0 view of 2^28 elements then still costs only its
    storage's bytes."""
    if kind != "BFloat16Storage":
        return array
    return (array.astype(np.uint32) << 16).view(np.float32)


def _as_index_tuple(value, what):
    """``value`` as a tuple of non-negative ints, or a _RecordError naming ``what``."""
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise _RecordError(f"corrupt tensor record: {what} must be non-negative integers, got {value!r}")
    return tuple(value)


def _rebuild_tensor(storage, storage_offset, size, stride):
    """The array torch would rebuild: ``size`` elements of ``storage`` starting at
    ``storage_offset`` and stepping ``stride`` elements per axis, as a view (no copy).

    Element (i_0, ..., i_k) is storage[offset + sum_d i_d * stride_d]. The record comes from
    the file, so it is checked before the view is made: the largest index used,
    offset + sum_d (size_d - 1) * stride_d, must lie in the storage (whose bytes were read
    from the file), and the number of dimensions and of elements must be sane.
    """
    if not isinstance(storage, _Storage):
        raise _RecordError(f"corrupt tensor record: expected a storage, got {type(storage).__name__}")
    size, stride = _as_index_tuple(size, "size"), _as_index_tuple(stride, "stride")
    (offset,) = _as_index_tuple((storage_offset,), "storage_offset")
    where = f"tensor record on storage {storage.record!r}"
    if len(size) != len(stride):
        raise _RecordError(f"corrupt {where}: size {size} and stride {stride} differ in length")
    if len(size) > _MAX_DIMS or math.prod(size) > _MAX_ELEMENTS:
        raise _RecordError(f"corrupt {where}: size {size} ({len(size)} dimensions, {math.prod(size)} elements) "
                           f"is beyond any saved tensor (at most {_MAX_DIMS} dimensions, {_MAX_ELEMENTS} elements)")
    flat = storage.array
    if 0 in size:
        return flat[:0].reshape(size)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.size:
        raise _RecordError(f"corrupt {where}: size {size}, stride {stride}, offset {offset} reach element {last} "
                           f"of a storage of {flat.size}")
    return np.lib.stride_tricks.as_strided(flat[offset:], shape=size, strides=tuple(s * flat.itemsize for s in stride))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """torch._utils._rebuild_tensor_v2; requires_grad and hooks mean nothing to an array."""
    if metadata:
        raise _RecordError(f"tensor with conjugate/negative bits set ({metadata}) is not supported: "
                           "re-save it after tensor.resolve_conj().resolve_neg()")
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """torch._utils._rebuild_parameter(_with_state): an nn.Parameter is just its array here."""
    return data


# Everything a pickled state_dict (or a dict of them) may name, each mapped to our stand-in.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


def _ascii(value):
    # pickles written by Python 2 may hold these internal names as bytes
    return value.decode("ascii") if isinstance(value, bytes) else value


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only ``_ALLOWED_GLOBALS`` and torch storage types.

    ``find_class`` is the only way a pickle reaches a callable (GLOBAL, STACK_GLOBAL, INST and
    the EXT opcodes all go through it), so refusing there refuses before anything is called.
    ``load_storage(storage_type, key, numel, view)`` turns a persistent id into a ``_Storage``.
    """

    def __init__(self, file, load_storage=None):
        super().__init__(file, encoding="utf-8")
        self._load_storage = load_storage

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise _RecordError(
            f"refused to load global '{module}.{name}': a .pth is a pickle and only tensors, dicts and "
            "OrderedDicts are read without torch. If you trust the file, load it with torch and re-save "
            "just the weights: torch.save(model.state_dict(), path)")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or _ascii(pid[0]) != "storage" or self._load_storage is None:
            kind = _ascii(pid[0]) if isinstance(pid, tuple) and pid else repr(pid)
            raise _RecordError(f"unsupported persistent record {kind!r}: only tensor storages are read "
                               "(a pickled nn.Module? save model.state_dict() instead)")
        if len(pid) not in (5, 6):  # zip format: 5 fields; legacy: a 6th, the storage view
            raise _RecordError(f"corrupt storage record {pid!r}")
        storage_type, key, _location, numel, *view = pid[1:]  # location ignored: all loads to CPU
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
            raise _RecordError(f"corrupt storage record {pid!r}")
        return self._load_storage(storage_type, str(_ascii(key)), numel, view[0] if view else None)


# What zipfile raises for a damaged archive: a bad directory, header or CRC, a record cut short,
# or header fields it cannot honour (a version, method or encryption flag flipped by damage).
_ZIP_DAMAGE = (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError)


def _damaged(path, error):
    return f"{path} is damaged or truncated ({error or type(error).__name__}): download or copy it again"


def _unpickle(file, path, record, load_storage=None):
    """One object from ``file`` through ``SafeUnpickler``, every failure a CheckpointError
    naming the file and the record. A damaged pickle can make the unpickler raise almost
    anything (a cut-off opcode, a bad memo index, a call with the wrong arguments); a length
    field no file could fill asks for more memory than there is."""
    try:
        return SafeUnpickler(file, load_storage).load()
    except CheckpointError:
        raise
    except _RecordError as e:
        raise CheckpointError(f"{path}: {record}: {e}") from e
    except _ZIP_DAMAGE as e:  # reading a storage record
        raise CheckpointError(_damaged(path, e)) from e
    except MemoryError as e:
        raise CheckpointError(f"{path}: {record} claims more memory than there is: a corrupt length field; "
                              "download or copy the file again") from e
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError,
            OverflowError) as e:
        raise CheckpointError(f"{path}: {record} is not a readable pickle ({type(e).__name__}: {e}): the file is "
                              "damaged or truncated; download or copy it again") from e


def _read_exactly(f, array, what):
    """Fill ``array`` (contiguous) with bytes from the file object ``f``."""
    buffer = memoryview(array.reshape(-1).view(np.uint8))
    done = 0
    while done < len(buffer):
        n = f.readinto(buffer[done:])
        if not n:
            raise CheckpointError(f"{what} is truncated: expected {len(buffer)} bytes, got {done}; download or copy "
                                  "the file again")
        done += n


def _check_stored(info, path, file_size):
    """A zip record must lie in the file as it is. torch.save (and our ``save``) never
    compress, and a compressed record could inflate a small file to any size; a stored record
    claiming more bytes than the file has is a damaged file. After this check, a record's
    ``file_size`` bounds what reading it may allocate."""
    if info.flag_bits & 0x1:
        raise CheckpointError(f"{path}: record {info.filename!r} is encrypted; torch.save and tinymaskrcnn never "
                              "encrypt: the file is damaged or was re-zipped with a password")
    if info.compress_type != zipfile.ZIP_STORED:
        raise CheckpointError(f"{path}: record {info.filename!r} is compressed (zip method {info.compress_type}); "
                              "torch.save and tinymaskrcnn write every record uncompressed, and a compressed one can "
                              "claim any size: re-save the file with the program that made it (or re-zip with zip -0)")
    if info.file_size != info.compress_size or not 0 <= info.header_offset <= file_size - info.compress_size:
        raise CheckpointError(f"{path}: record {info.filename!r} claims {info.file_size} bytes, beyond the file's "
                              f"{file_size}: the file is damaged or truncated; download or copy it again")


def _read_zip(path):
    """The PyTorch >= 1.6 format: a zip of data.pkl plus one uncompressed record per storage."""
    file_size = os.path.getsize(path)
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            _check_stored(info, path, file_size)
        names = archive.namelist()
        if any(n.endswith("constants.pkl") for n in names):
            raise CheckpointError(f"{path} is a TorchScript archive (torch.jit.save), not a torch.save file: "
                                  "save the scripted model's state_dict() with torch.save instead")
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointError(f"{path} is a zip file but not a torch.save archive (no '<name>/data.pkl' record)")
        root = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if root + "byteorder" in names:
            byteorder = archive.read(root + "byteorder").decode("ascii", "replace")
        if byteorder not in ("little", "big"):
            raise CheckpointError(f"{path}: unknown byteorder record {byteorder!r}; the file is damaged")
        storages = {}

        def load_storage(storage_type, key, numel, view):
            if key not in storages:
                record = f"{root}data/{key}"
                if record not in names:
                    raise CheckpointError(f"{path}: storage record {record!r} is missing; the file is damaged")
                stored = archive.getinfo(record).file_size
                if stored != numel * storage_type.dtype.itemsize:  # before allocating: numel is the pickle's claim
                    raise CheckpointError(f"{path}: storage {record!r} holds {stored} bytes, but its record claims "
                                          f"{numel} elements of {storage_type.dtype.itemsize}; the file is damaged")
                array = np.empty(numel, storage_type.dtype)
                with archive.open(record) as f:
                    _read_exactly(f, array, f"{path}: storage {record!r}")
                if byteorder != sys.byteorder:
                    array.byteswap(inplace=True)
                storages[key] = _Storage(_widened(array, storage_type.name), storage_type.name, record)
            elif storages[key].kind != storage_type.name:
                raise CheckpointError(f"{path}: storage {key!r} is used as both {storages[key].kind} and "
                                      f"{storage_type.name}; reinterpreting storages is not supported")
            return storages[key]

        with archive.open(pickles[0]) as f:
            return _unpickle(f, path, pickles[0], load_storage)


def _read_legacy(path):
    """The PyTorch < 1.6 format: a stream of pickles, the storages' bytes after the object.

    The object's pickle comes before the bytes its tensors need, so it is read twice: once to
    learn the storages (allocated empty) and where the bytes begin, then, with the storages
    filled, again to build the arrays. Together the storages may claim no more bytes than
    follow the object's pickle in the file.
    """
    file_size = os.path.getsize(path)
    storages = {}
    claimed = 0

    def load_storage(storage_type, key, numel, view):
        nonlocal claimed
        if key not in storages:
            claimed += numel * storage_type.dtype.itemsize
            if claimed > file_size - start:  # before allocating: numel is the pickle's claim
                raise CheckpointError(f"{path}: storage {key!r} claims {numel} elements, and with the storages before "
                                      f"it {claimed} bytes, more than the file's {file_size - start} after the object: "
                                      "the file is damaged or truncated")
            storages[key] = _Storage(np.empty(numel, storage_type.dtype), storage_type.name, key)
        root = storages[key]
        if view is None:
            return root
        # (view key, offset, count): old files may point a tensor at a slice of a root storage
        if not isinstance(view, tuple) or len(view) != 3:
            raise _RecordError(f"corrupt storage view record {view!r}")
        offset, count = _as_index_tuple(view[1:], "storage view offset and size")
        if offset + count > root.array.size:
            raise _RecordError(f"storage view {view!r} reaches past a storage of {root.array.size}")
        return _Storage(root.array[offset: offset + count], root.kind, root.record)

    with open(path, "rb") as f:
        try:
            magic = SafeUnpickler(f).load()
        except Exception:
            magic = None
        if magic != _LEGACY_MAGIC:
            f.seek(0)
            if tarfile.is_tarfile(f):
                raise CheckpointError(f"{path} is in PyTorch's pre-0.4 tar format, which is not read: load it with "
                                      "torch.load and re-save it with torch.save(state_dict, path)")
            raise CheckpointError(f"{path} is not a file written by torch.save (neither a zip archive nor a legacy "
                                  "pickle stream)")
        protocol = _unpickle(f, path, "the protocol record")
        if protocol != _LEGACY_PROTOCOL:
            raise CheckpointError(f"{path}: unknown legacy protocol version {protocol!r}")
        _unpickle(f, path, "the system record")  # the storages are little-endian regardless
        start = f.tell()
        _unpickle(f, path, "the object's pickle", load_storage)
        keys = _unpickle(f, path, "the storage key list")
        if not isinstance(keys, list) or any(str(k) not in storages for k in keys):
            raise CheckpointError(f"{path}: corrupt legacy file (storage key list does not match the object)")
        for key in map(str, keys):
            storage = storages[key]
            count = int.from_bytes(f.read(8), "little")
            if count != storage.array.size:
                raise CheckpointError(f"{path}: storage {key!r} has {count} elements on disk, {storage.array.size} in "
                                      "the pickle; the file is damaged or truncated")
            _read_exactly(f, storage.array, f"{path}: storage {key!r}")
            if sys.byteorder == "big":
                storage.array.byteswap(inplace=True)
            storage.array = _widened(storage.array, storage.kind)
        f.seek(start)
        return _unpickle(f, path, "the object's pickle", load_storage)


def read_pth(path):
    """Read a file written by ``torch.save`` without importing torch.

    Tensors come back as NumPy arrays (dtype kept; bfloat16 widened to float32), dicts and
    OrderedDicts as themselves. Tensors that were views of one storage are views of one array.
    Both the zip format (PyTorch >= 1.6) and the legacy format are read.

    The file is untrusted input: a pickle naming anything else (a class, a function) is refused
    without running it, and no record may make the reader allocate more than the file's own
    bytes (bfloat16 storages twice that). Any file that cannot be read raises
    ``CheckpointError`` (a ValueError) naming the file, the record and what to do.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such .pth file: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":
        return _read_legacy(path)
    try:
        return _read_zip(path)
    except _ZIP_DAMAGE as e:  # the directory or a record's header or CRC
        raise CheckpointError(_damaged(path, e)) from e


# ================================================================================================
# 2. torchvision state_dicts into our modules
# ================================================================================================

# Where training scripts tuck the state_dict inside a bigger checkpoint dict.
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "model_state", "net")


def _as_array(value):
    """The array in ``value`` (an array, one of our Tensors, or a torch tensor, duck-typed so
    torch is not imported), or None when it holds none."""
    if isinstance(value, Tensor):
        return value.data
    if isinstance(value, np.ndarray) or is_cupy(value):
        return value
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        return value.detach().cpu().numpy()
    return None


def state_dict_from(obj):
    """The state_dict inside ``obj``: ``obj`` itself when it maps names to arrays, else the
    mapping under 'model', 'state_dict', 'model_state_dict', 'model_state' or 'net'
    (searched in that order, recursively)."""
    if isinstance(obj, collections.abc.Mapping):
        if all(_as_array(v) is not None for v in obj.values()):
            return obj
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), collections.abc.Mapping):
                return state_dict_from(obj[key])
        raise ValueError(f"no state_dict found: the mapping holds non-array values (keys {list(obj)[:10]}) and none "
                         f"of {_WRAPPER_KEYS} holds one; pass the state_dict mapping itself")
    raise TypeError(f"expected a state_dict mapping of name -> array, got {type(obj).__name__}")


LoadResult = collections.namedtuple("LoadResult", ["missing", "unexpected", "mismatched"])
LoadResult.__doc__ = """What ``load_torchvision`` did not load: ``missing`` and ``unexpected`` are
lists of (key, shape), ``mismatched`` of (key, checkpoint shape, module shape). Keys are the
module's for missing/mismatched and the checkpoint's for unexpected."""


def _ignored_keys(module):
    """Module keys a state may carry and the module drops: FrozenBatchNorm2d's
    num_batches_tracked (ImageNet checkpoints are saved from BatchNorm2d)."""
    return {f"{name}.{key}" if name else key
            for name, m in module.named_modules() for key in getattr(m, "_ignored_state_keys", ())}


# Checkpoints saved before torchvision 0.13 (the published COCO Mask R-CNN among them) name two
# blocks that were later wrapped in Conv2dNormActivation by their old names.
_LEGACY_NAMES = [
    (re.compile(r"^(.*rpn\.head\.conv)\.(weight|bias)$"), r"\1.0.0.\2"),
    (re.compile(r"^(.*mask_head)\.mask_fcn(\d+)\.(weight|bias)$"),
     lambda m: f"{m.group(1)}.{int(m.group(2)) - 1}.0.{m.group(3)}"),
]


def _current_name(key, known):
    """``key`` itself, or its post-0.13 name when only that one is known to the module."""
    if key in known:
        return key
    for pattern, new in _LEGACY_NAMES:
        renamed = pattern.sub(new, key)
        if renamed != key and renamed in known:
            return renamed
    return key


def _match(module, state, prefix, exclude):
    """Pair the arrays of ``state`` with ``module``'s keys (``prefix`` + key, under its
    post-0.13 name where only that one is known): (the matched arrays by module key, a
    LoadResult of the rest, missing counted among the module keys under ``prefix``)."""
    own = module.state_dict()
    ignored = _ignored_keys(module)
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)  # not 'f', 'c', '.'
    matched, unexpected, mismatched = collections.OrderedDict(), [], []
    for key, value in state.items():
        if exclude and key.startswith(exclude):
            continue
        target = _current_name(prefix + key, own)
        value = _as_array(value)
        if target not in own:
            if target not in ignored:
                unexpected.append((key, tuple(value.shape)))
        elif tuple(value.shape) != tuple(own[target].shape):
            mismatched.append((target, tuple(value.shape), tuple(own[target].shape)))
        else:
            matched[target] = value
    shaped = {k for k, _, _ in mismatched}
    missing = [(k, tuple(v.shape)) for k, v in own.items()
               if k.startswith(prefix) and k not in matched and k not in shaped]
    return matched, LoadResult(missing, unexpected, mismatched)


def load_torchvision(module, source, strict=True, prefix="", exclude=()):
    """Load torchvision weights into ``module`` by name.

    Args:
        module: one of our modules (a ResNet, BackboneWithFPN, MaskRCNN, ...).
        source: path to a .pth file (read without torch), or a mapping of name -> array (our
            Tensors and CPU torch tensors accepted), possibly wrapped as {'model': state_dict, ...}.
        strict: with True (default), any missing, unexpected or mis-shaped key raises a
            ValueError listing them all (with shapes) and nothing is loaded. With False the
            matching keys are loaded and the rest returned.
        prefix: prepended to every state key to give the module key, and only module keys
            starting with it are expected. ImageNet ResNet weights into a Mask R-CNN:
            ``load_torchvision(model, 'resnet50-0676ba61.pth', prefix='backbone.body.',
            exclude=('fc.',))`` (or into ``model.backbone.body`` with no prefix).
        exclude: a prefix or tuple of prefixes; state keys starting with one are skipped (e.g.
            the ImageNet classifier 'fc.').

    Arrays are converted to each parameter's dtype (and device). A num_batches_tracked for a
    FrozenBatchNorm2d is dropped, as torchvision's FrozenBatchNorm2d drops it, and the pre-0.13
    names of the RPN conv and the mask head convs are read as today's.

    Returns a ``LoadResult(missing, unexpected, mismatched)`` (all empty after a strict load).
    """
    if isinstance(source, (str, os.PathLike)):
        source = read_pth(source)
    matched, result = _match(module, state_dict_from(source), prefix, exclude)
    if strict and (result.missing or result.unexpected or result.mismatched):
        raise ValueError(format_state_mismatch(
            f"torchvision state does not match {type(module).__name__}"
            + (f" under prefix {prefix!r}" if prefix else ""), *result,
            fix="build the module with the configuration the weights were saved from; load ImageNet weights into "
                "a backbone with prefix='backbone.body.' and exclude=('fc.',); or pass strict=False to load what "
                "matches"))
    module.load_state_dict(matched, strict=False)  # converts dtype and device in place
    return result


_BODY = "backbone.body."  # where a detector keeps its ResNet, in torchvision's names


def _examples(keys, n=3):
    keys = list(keys)
    return ", ".join(map(str, keys[:n])) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def load_pretrained(model, source):
    """Start a detector from published weights, as ``train --weights`` does; returns the lines
    of a report (what was loaded, what stays as built, what the file has that was ignored).

    Two kinds of checkpoint are told apart by their keys:

    * a detector's (torchvision's ``maskrcnn_resnet50_fpn_coco``, or one of the same
      architecture): keys as the model's. Every array whose name and shape fit is loaded;
      heads shaped for another number of classes stay as built.
    * an ImageNet classifier's (torchvision's ``resnet18``, ``resnet50``: ``conv1.weight``,
      ``layer1.0.conv1.weight``, ..., ``fc.weight``): loaded into the model's ResNet under
      ``backbone.body.``, the classifier ``fc.`` left out. Running statistics a model has no
      place for (its InstanceNorm2d normalises each image by its own) are ignored.

    Either way the model's whole ResNet body must be loaded. A file that fits nothing, or only
    part of the backbone (another depth or architecture), raises CheckpointError with the
    counts and example keys, and nothing is loaded.
    """
    is_path = isinstance(source, (str, os.PathLike))
    name = os.fspath(source) if is_path else "the state"
    state = state_dict_from(read_pth(source) if is_path else source)
    own = model.state_dict()
    body = [k for k in own if k.startswith(_BODY)]
    layouts = [("", ())] + ([(_BODY, ("fc.",))] if body else [])
    fits = [(prefix, *_match(model, state, prefix, exclude)) for prefix, exclude in layouts]
    # the layout under which more of the file's names are the model's, shapes aside
    prefix, matched, result = max(fits, key=lambda fit: len(fit[1]) + len(fit[2].mismatched))
    what = f"{name} ({len(state)} arrays) into {type(model).__name__} ({len(own)} arrays)"
    if not matched and not result.mismatched:
        raise CheckpointError(
            f"{what}: no name matches, as they are or under {_BODY!r}. The file's: {_examples(state)}; the model's: "
            f"{_examples(own)}. Pass torchvision weights of this architecture (a detector's checkpoint, or an "
            "ImageNet ResNet of the backbone's depth)")
    reshaped = {k for k, _, _ in result.mismatched}
    body_loaded = sum(k in matched for k in body)
    if body_loaded < len(body):
        mis = [f"{k} file {a} model {b}" for k, a, b in result.mismatched if k.startswith(_BODY)]
        lacking = [k for k in body if k not in matched and k not in reshaped]
        raise CheckpointError(
            f"{what}: only {body_loaded} of the backbone's {len(body)} arrays fit"
            + (f"; mis-shaped ({len(mis)}): {_examples(mis)}" if mis else "")
            + (f"; not in the file ({len(lacking)}): {_examples(lacking)}" if lacking else "")
            + ". The weights are for another backbone (resnet50 weights for a resnet18 model?): pass weights of "
              "the model's own backbone, or train the --model they were made for")
    model.load_state_dict(matched, strict=False)  # converts dtype and device in place
    kind = f"an ImageNet ResNet into {_BODY}, fc left out" if prefix else "a detector's checkpoint"
    lines = [f"weights {name} ({kind}): loaded {len(matched)} of {len(own)} arrays, the backbone's "
             f"{body_loaded} of {len(body)}"]
    if result.mismatched:
        lines.append("  kept as built (shape differs): " + ", ".join(
            f"{k} {theirs}->{ours}" for k, theirs, ours in result.mismatched))
    kept = [k for k in own if k not in matched and k not in reshaped]
    if kept:
        lines.append(f"  kept as built (not in the file): {len(kept)} arrays, e.g. {_examples(kept, 5)}")
    if result.unexpected:
        lines.append(f"  in the file but not in the model (ignored): {len(result.unexpected)} arrays, e.g. "
                     + _examples((k for k, _ in result.unexpected), 5))
    return lines


# ================================================================================================
# 3. Our checkpoints: nested dicts as .npz
# ================================================================================================

_FORMAT = "tinymaskrcnn-checkpoint"
_FORMAT_VERSION = 1
_META_ENTRY = "__tinymaskrcnn__"  # the JSON tree; every other entry is an array


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
    every entry stored uncompressed inside the file (``_check_stored``), holding exactly the
    bytes its header's shape and dtype claim, and no object arrays (only pickle reads those,
    and unpickling can run code). Checked on the header before any array is allocated."""
    file_size = os.path.getsize(path)
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        if _META_ENTRY + ".npy" not in archive.namelist():
            raise CheckpointError(f"{path} is not a tinymaskrcnn checkpoint (written by tinymaskrcnn.weights.save): "
                                  f"the archive has no '{_META_ENTRY}' entry (a torch .pth? use read_pth or "
                                  "load_torchvision)")
        for info in archive.infolist():
            _check_stored(info, path, file_size)
            name = info.filename.removesuffix(".npy")
            with archive.open(info) as f:
                try:
                    version = np.lib.format.read_magic(f)
                    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                                   (2, 0): np.lib.format.read_array_header_2_0}[version]
                    shape, _, dtype = read_header(f)
                except (ValueError, KeyError, SyntaxError) as e:
                    raise CheckpointError(f"{path}: entry {info.filename!r} is not an .npy array this version reads "
                                          f"({type(e).__name__}: {e}); the file is damaged or not a checkpoint") from e
                if dtype.hasobject:
                    raise CheckpointError(f"{path}: entry {name!r} is an object array, which only pickle reads, and "
                                          "unpickling can run code: refused. tinymaskrcnn.weights.save never writes "
                                          "one; this file was written some other way")
                held, claimed = info.file_size - f.tell(), math.prod(shape) * dtype.itemsize
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
    except _ZIP_DAMAGE as e:  # the directory or an entry's header or CRC
        raise CheckpointError(_damaged(path, e)) from e
    try:
        meta = json.loads(str(arrays.pop(_META_ENTRY)))
    except ValueError as e:
        raise CheckpointError(f"{path}: its '{_META_ENTRY}' entry is not JSON ({e}); the file is damaged") from e
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT or meta.get("version") != _FORMAT_VERSION:
        found = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else (None, None)
        raise CheckpointError(f"{path} is not a tinymaskrcnn checkpoint this version reads: format {found[0]!r} "
                              f"version {found[1]!r}, this version reads {_FORMAT!r} version {_FORMAT_VERSION}")
    try:
        return _decode(meta["tree"], arrays)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise CheckpointError(f"{path}: its '{_META_ENTRY}' index does not match its arrays ({type(e).__name__}: "
                              f"{e}); the file is damaged") from e


# ================================================================================================
# 4. torchvision's published weights
# ================================================================================================

_BASE_URL = "https://download.pytorch.org/models/"
# name -> URL. The hex digits before '.pth' are the start of the file's SHA-256.
WEIGHT_URLS = {
    "resnet18": _BASE_URL + "resnet18-f37072fd.pth",            # ImageNet, IMAGENET1K_V1
    "resnet34": _BASE_URL + "resnet34-b627a593.pth",
    "resnet50": _BASE_URL + "resnet50-0676ba61.pth",            # the Mask R-CNN backbone's start
    "resnet50_v2": _BASE_URL + "resnet50-11ad3fa6.pth",         # IMAGENET1K_V2 (newer recipe)
    "resnet101": _BASE_URL + "resnet101-63fe2227.pth",
    "resnet101_v2": _BASE_URL + "resnet101-cd907fc2.pth",
    "resnet152": _BASE_URL + "resnet152-394f9c45.pth",
    "maskrcnn_resnet50_fpn_coco": _BASE_URL + "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",  # 37.9 box / 34.6 mask AP
}

_HASH_IN_NAME = re.compile(r"-([0-9a-f]+)\.")


def _hash_prefix(filename):
    match = _HASH_IN_NAME.search(os.path.basename(filename))
    if match is None:
        raise ValueError(f"{filename!r} carries no '-<sha256 prefix>.' in its name to check against")
    return match.group(1)


def verify_sha256(path, prefix=None):
    """Check that the SHA-256 of the file at ``path`` starts with ``prefix`` (default: the hex
    digits in the file name, torchvision's convention: 'resnet50-0676ba61.pth'). Returns the
    full hex digest; raises ValueError on a mismatch."""
    prefix = _hash_prefix(path) if prefix is None else prefix
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    _check_digest(digest.hexdigest(), prefix, path)
    return digest.hexdigest()


def _check_digest(hexdigest, prefix, what):
    if not hexdigest.startswith(prefix):
        raise ValueError(f"SHA-256 of {what} is {hexdigest}, expected it to start with {prefix}: the file is "
                         "corrupt or not the published one; delete it and download again")


def download(name, dest_dir=None):
    """Download torchvision's weight file ``name`` (a key of ``WEIGHT_URLS``) into ``dest_dir``
    (default ~/.cache/tinymaskrcnn), check its SHA-256 prefix and return its path. A file
    already there is checked and reused. The file appears under its final name only once
    complete and verified."""
    if name not in WEIGHT_URLS:
        raise ValueError(f"unknown weights {name!r}: choose one of {', '.join(WEIGHT_URLS)}")
    url = WEIGHT_URLS[name]
    dest_dir = dest_dir or os.path.join(os.path.expanduser("~"), ".cache", "tinymaskrcnn")
    dest = os.path.join(dest_dir, url.rsplit("/", 1)[1])
    prefix = _hash_prefix(dest)
    if os.path.exists(dest):
        verify_sha256(dest, prefix)
        return dest
    os.makedirs(dest_dir, exist_ok=True)

    def fetch(f):
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=60) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                f.write(chunk)
        _check_digest(digest.hexdigest(), prefix, url)  # raising here discards the temporary file

    atomic_write(dest, fetch)
    return dest
