"""Reading a ``.pth`` file without torch: the reader of untrusted weight files, alone.

**Threat model.** A ``.pth`` comes from the internet (a model zoo, a colleague, a forum post)
and the attacker may have written every byte of it. What such a file can try:

- *run code*: ``torch.save`` writes a pickle, a pickle can name any importable callable
  (``os.system``, ``builtins.eval``) and ``pickle.load`` calls it;
- *take all memory*: every number in the file (an element count, a size, a stride, a zip
  record's length) is a claim; believed, a file of a few hundred bytes asks for gigabytes, and
  a deflated zip record can inflate a thousandfold;
- *crash or mislead the reader*: a damaged or truncated download that fails deep inside
  ``pickle`` or ``zipfile`` with a traceback naming neither the file nor the fix.

**Guarantees** of ``read_pth`` against any file:

1. Nothing in the file is called. ``SafeUnpickler.find_class`` is the only way from a pickle
   to a callable (GLOBAL, STACK_GLOBAL and INST go through it; the EXT opcodes, which can
   reach a global past it, are refused when the pickle is read ahead); it
   resolves the few names a state_dict needs (``_ALLOWED_GLOBALS``), each to OrderedDict or
   to a harmless function of this file that builds a NumPy array, and torch's storage type
   names to dtypes. Any other name is refused before anything runs, and so is every
   persistent id but a tensor storage.
2. Memory is bounded by the file. A storage is allocated only once its byte count is checked
   against the record that holds it (zip) or the bytes left in the file (legacy); every zip
   record must be stored uncompressed and lie inside the file (``check_stored_record``),
   apart from every other (``check_disjoint_records``); a tensor's elements must lie inside
   its storage, with at most ``_MAX_DIMS`` dimensions and ``_MAX_ELEMENTS`` elements; every
   memo index, frame and length field of a pickle is read ahead (``_check_memo``) before it
   is unpickled, as the unpickler's memo table alone could take gigabytes, and the unpickler
   reads nothing past its record. Containers nest at most ``_MAX_NESTING`` deep and never in
   a cycle. The reader so allocates at most the file's size (twice that for bfloat16
   storages, widened to float32 once per storage) plus views, and the objects and memo table
   of a pickle no longer than the file. A view may be larger than its storage (stride 0, as
   ``expand`` saves): it shares the storage's memory.
3. Every failure, whatever is wrong with the file (damaged, truncated, hostile or another
   format), is a ``CheckpointError`` (a ValueError) naming the file, the record and what to
   do; a length field no file could fill is one too, not a MemoryError. (A path with no
   file behind it is a FileNotFoundError.)

Not guaranteed: that the arrays are good weights. Their names and shapes are checked where
they are loaded (``torchvision.load_torchvision``), their values by nobody.

**The format.** Since PyTorch 1.6 a ``torch.save`` file is a zip archive::

    <name>/data.pkl        the pickled object (a dict of tensors, say)
    <name>/data/<key>      the raw bytes of each storage, one record per storage
    <name>/byteorder       'little' or 'big'
    <name>/version         format version

Before 1.6 (the *legacy* format, still met in older published weights) it is a stream of
pickles: a magic number, a protocol version, system info, the object, the list of storage
keys, then each storage as an 8-byte element count and its little-endian bytes.

In both, a tensor is pickled as a call ``torch._utils._rebuild_tensor_v2(storage,
storage_offset, size, stride, ...)`` and a storage as a *persistent id* ``('storage',
torch.FloatStorage, key, location, numel)``. Here a tensor becomes a NumPy array, a strided
view of its storage (views sharing a storage share memory, as in torch).

The project's own ``.npz`` checkpoints are zip archives read as warily (``npz.py``): they share
``CheckpointError``, ``ZIP_DAMAGE``, ``check_stored_record`` and ``damage_message`` from here.
"""
import collections
import math
import os
import pickle
import pickletools
import sys
import tarfile
import zipfile
import zlib

import numpy as np

from ..core.files import UnreadableFileError, brief

__all__ = ["CheckpointError", "SafeUnpickler", "read_pth", "ZIP_DAMAGE", "check_stored_record",
           "check_disjoint_records", "damage_message"]


class CheckpointError(UnreadableFileError):
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
# Containers inside containers: a checkpoint nests a few levels; a pickle can nest a list in a
# list a million times in two bytes a level, and whatever walks it recursively (repr, ==, a
# state_dict search) then fails with a RecursionError.
_MAX_NESTING = 100


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
        raise _RecordError(f"corrupt tensor record: {what} must be non-negative integers, got {brief(value)}")
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

    ``find_class`` is how GLOBAL, STACK_GLOBAL and INST reach a callable, so refusing there
    refuses before anything is called. The EXT opcodes are the one other way: ``load`` reads the
    pickle ahead first (``_check_memo``, which refuses them, and oversized memo indices and
    frames), from the file's position to its end (``size`` bytes from its start, when given).
    ``load_storage(storage_type, key, numel, view)`` turns a persistent id into a ``_Storage``.
    """

    def __init__(self, file, load_storage=None, size=None):
        super().__init__(file, encoding="utf-8")
        self._file, self._size, self._load_storage = file, size, load_storage

    def load(self):
        size = self._size
        if size is None:
            start = self._file.tell()
            size = self._file.seek(0, os.SEEK_END)
            self._file.seek(start)
        _check_memo(self._file, size)
        return super().load()

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
            kind = _ascii(pid[0]) if isinstance(pid, tuple) and pid else pid
            raise _RecordError(f"unsupported persistent record {brief(kind)}: only tensor storages are read "
                               "(a pickled nn.Module? save model.state_dict() instead)")
        if len(pid) not in (5, 6):  # zip format: 5 fields; legacy: a 6th, the storage view
            raise _RecordError(f"corrupt storage record {brief(pid)}")
        storage_type, key, _location, numel, *view = pid[1:]  # location ignored: all loads to CPU
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
            raise _RecordError(f"corrupt storage record {brief(pid)}")
        key = _ascii(key)
        if not isinstance(key, (str, int)):
            raise _RecordError(f"corrupt storage record {brief(pid)}: its key is not a name")
        return self._load_storage(storage_type, str(key), numel, view[0] if view else None)


# What zipfile raises for a damaged archive: a bad directory, header or CRC, a record cut short,
# header fields it cannot honour (a version, method or encryption flag flipped by damage), or a
# name flagged UTF-8 that is not.
ZIP_DAMAGE = (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, UnicodeDecodeError)


def damage_message(path, error):
    """The message for a file that ``error`` (one of ``ZIP_DAMAGE``) shows to be damaged."""
    return f"{path} is damaged or truncated ({error or type(error).__name__}): download or copy it again"


class _Capped:
    """``file``'s reads, never past ``size`` bytes from its start: pickletools reads as many
    bytes as a length field claims, and a buffered file allocates them before reading."""

    def __init__(self, file, size):
        self.file, self.size = file, size

    def read(self, n=-1):
        left = max(self.size - self.file.tell(), 0)
        return self.file.read(left if n is None or n < 0 else min(n, left))

    def readline(self, n=-1):
        left = max(self.size - self.file.tell(), 0)
        return self.file.readline(left if n is None or n < 0 else min(n, left))

    def tell(self):
        return self.file.tell()

    def seek(self, position, whence=os.SEEK_SET):
        return self.file.seek(position, whence)


def _check_memo(file, size):
    """Read the pickle at ``file``'s position ahead, opcode by opcode (pickletools runs nothing),
    and put the position back (a length field claiming more bytes than are left is a ValueError
    of pickletools'). The C unpickler grows its memo table to twice the largest index
    a PUT opcode names, 8 bytes an entry, so an index of 2^29 in a 900-byte file would take
    8.6 GB. A pickler numbers its memo entries 0, 1, 2, ... as it stores them, so an index
    beyond the number of opcodes before it is refused: the table then stays within 16 bytes
    per opcode, and so within 16 times the file's size. A FRAME's length is checked the same
    way: the unpickler reads (and allocates) a whole frame at once. The EXT opcodes are refused
    outright: the unpickler looks their code up in copyreg's cache of globals that earlier
    pickles of the process resolved, without asking ``find_class``."""
    start = file.tell()
    for count, (opcode, arg, position) in enumerate(pickletools.genops(_Capped(file, size))):
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and arg > count:
            raise _RecordError(f"memo index {arg} at opcode {count}: no pickler numbers its memo so far ahead; "
                               "the file is damaged or crafted")
        if opcode.name == "FRAME" and arg > size - position:
            raise _RecordError(f"a frame of {arg} bytes at byte {position}, past the {size} bytes there are")
        if opcode.name in ("EXT1", "EXT2", "EXT4"):
            raise _RecordError(f"{opcode.name} at byte {position} names a global by an extension code, which torch "
                               "never writes (and which the unpickler resolves from a cache of earlier loads, past "
                               "find_class): refused")
    file.seek(start)


def _check_nesting(obj):
    """Refuse an unpickled object whose containers nest more than ``_MAX_NESTING`` deep or in a
    cycle: the longest chain of containers, found depth-first without recursion, each container
    once (a pickle may share one container on every branch)."""
    def children(node):
        if isinstance(node, dict):
            return [*node.keys(), *node.values()]
        return node if isinstance(node, (list, tuple, set, frozenset)) else ()

    depth, open_ = {}, set()
    stack = [(obj, False)]
    while stack:
        node, closing = stack.pop()
        if closing:
            open_.discard(id(node))
            depth[id(node)] = 1 + max((depth.get(id(c), 0) for c in children(node)), default=0)
            if depth[id(node)] > _MAX_NESTING:
                raise _RecordError(f"containers nest more than {_MAX_NESTING} deep; no checkpoint does: the file "
                                   "is damaged or crafted")
        elif children(node) and id(node) not in depth:
            if id(node) in open_:
                raise _RecordError("a container holds itself; no checkpoint does: the file is damaged or crafted")
            open_.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children(node))


def _unpickle(file, path, record, size, load_storage=None):
    """One object from ``file`` (whose readable bytes end at ``size``) through
    ``SafeUnpickler``, its memo indices checked first (``_check_memo``), every failure a
    CheckpointError naming the file and the record. A damaged pickle can make the unpickler
    raise almost anything (a cut-off opcode, a bad memo index, a call with the wrong
    arguments); a length field no file could fill is found when the pickle is read ahead."""
    try:
        obj = SafeUnpickler(_Capped(file, size), load_storage, size).load()
        _check_nesting(obj)
        return obj
    except CheckpointError:
        raise
    except _RecordError as e:
        raise CheckpointError(f"{path}: {record}: {e}") from e
    except ZIP_DAMAGE as e:  # reading a storage record
        raise CheckpointError(damage_message(path, e)) from e
    except MemoryError as e:
        raise CheckpointError(f"{path}: {record} claims more memory than there is: a corrupt length field; "
                              "download or copy the file again") from e
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError,
            OverflowError, RecursionError) as e:
        raise CheckpointError(f"{path}: {record} is not a readable pickle ({type(e).__name__}: {str(e)[:200]}): the "
                              "file is damaged or truncated; download or copy it again") from e


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


def check_stored_record(info, path, file_size):
    """A zip record must lie in the file as it is. torch.save (and ``npz.save``) never
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


_LOCAL_HEADER = 30  # bytes of a zip record's local header before its name


def check_disjoint_records(infos, path):
    """Zip records must not overlap: each record's header and bytes end before the next one
    begins. Records that overlap (each holding the next, say) would have a reader read the
    same bytes of the file again for every record, hundreds of times the file's size in all;
    after this check and ``check_stored_record``, the records' sizes sum to less than the file's."""
    end, previous = 0, None
    for info in sorted(infos, key=lambda i: i.header_offset):
        if info.header_offset < end:
            raise CheckpointError(f"{path}: records {previous!r} and {info.filename!r} overlap; no zip writer "
                                  "overlaps records: the file is damaged or crafted")
        end, previous = info.header_offset + _LOCAL_HEADER + info.compress_size, info.filename


def _read_zip(path):
    """The PyTorch >= 1.6 format: a zip of data.pkl plus one uncompressed record per storage."""
    file_size = os.path.getsize(path)
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            check_stored_record(info, path, file_size)
        check_disjoint_records(archive.infolist(), path)
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
            return _unpickle(f, path, pickles[0], archive.getinfo(pickles[0]).file_size, load_storage)


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
            magic = _unpickle(f, path, "the magic number", file_size)
        except CheckpointError:
            magic = None
        if magic != _LEGACY_MAGIC:
            f.seek(0)
            if tarfile.is_tarfile(f):
                raise CheckpointError(f"{path} is in PyTorch's pre-0.4 tar format, which is not read: load it with "
                                      "torch.load and re-save it with torch.save(state_dict, path)")
            raise CheckpointError(f"{path} is not a file written by torch.save (neither a zip archive nor a legacy "
                                  "pickle stream)")
        protocol = _unpickle(f, path, "the protocol record", file_size)
        if protocol != _LEGACY_PROTOCOL:
            raise CheckpointError(f"{path}: unknown legacy protocol version {brief(protocol)}")
        _unpickle(f, path, "the system record", file_size)  # the storages are little-endian regardless
        start = f.tell()
        _unpickle(f, path, "the object's pickle", file_size, load_storage)
        keys = _unpickle(f, path, "the storage key list", file_size)
        if not isinstance(keys, list) or any(not isinstance(k, (str, int)) or str(k) not in storages for k in keys):
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
        return _unpickle(f, path, "the object's pickle", file_size, load_storage)


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
    except ZIP_DAMAGE as e:  # the directory or a record's header or CRC
        raise CheckpointError(damage_message(path, e)) from e
