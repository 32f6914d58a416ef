"""A stand-in for CuPy in CI: a device-array type over NumPy that is as strict as CuPy where NumPy
is lenient, and counts every read of a device value on the host.

The package runs the same code on NumPy and CuPy arrays, but NumPy forgives what CuPy refuses:
``numpy.asarray(a)`` of a CuPy array raises (CuPy never copies to the host implicitly), the Numba
CPU kernels cannot take one, and NumPy and CuPy arrays do not mix in one operation. And what is
free on the host is a device synchronisation on the GPU: every ``float(x)``, ``int(x)``,
``bool(x)``, ``x.item()``, ``x.get()``, ``asnumpy(x)``, ``x.tolist()``, an index taken from a
device scalar or a Python loop over a device array. This module is both:

* ``ndarray``, the array type: NumPy underneath (``_host``), CuPy's manners on top.
  ``__array__`` raises TypeError as CuPy's does; ``.data`` is a memory pointer, not an array (as
  CuPy's ``MemoryPointer``); reductions and indexing give 0-d arrays, never host scalars;
  ``__cuda_array_interface__`` exposes the memory, which numba's CUDA simulator (where "device"
  memory is host memory) is handed by ``tinymaskrcnn.kernels.cuda.kernel_args``.
* the module itself, a CuPy-like namespace: ``cupy_standin.zeros``, ``.concatenate``, ``.add.at``,
  ``.asnumpy``, ``.cuda.is_available()`` ... each NumPy's function on the unwrapped arrays with
  the result wrapped back, refusing NumPy array operands as CuPy does. Its name begins with
  "cupy" so that the kernels, which tell a CuPy array by its type's module, take it for one.

``tinymaskrcnn.core.backend.use_device_module(cupy_standin)`` makes it the package's device
module, so ``model.to(device="cuda")`` and ``to_device`` produce these arrays. ``counting()``
records the host reads of a block: ``with counting() as reads: ...``, then ``reads.total`` and
``reads.by_site`` (kind and the package line that read, for docs/gpu.md).
"""
import collections
import contextlib
import sys
import traceback
import types

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

_PACKAGE_MARK = "tinymaskrcnn"


class HostReads:
    """The device-to-host reads of a block: ``total``, ``by_kind`` and ``by_site`` (Counters)."""

    def __init__(self):
        self.by_kind, self.by_site = collections.Counter(), collections.Counter()

    @property
    def total(self):
        return sum(self.by_kind.values())

    def record(self, kind):
        self.by_kind[kind] += 1
        self.by_site[(kind, _caller())] += 1

    def report(self):
        return "\n".join(f"{n:4d}  {kind:10s} {site}" for (kind, site), n in self.by_site.most_common())


_active = []


def _caller():
    """The innermost frame of the package (else of the caller) that asked for the read; a read
    through ``backend.to_numpy`` is put on its caller."""
    frames = [f for f in traceback.extract_stack()[:-3]
              if not f.filename.endswith(("cupy_standin.py", "core/backend.py"))]
    ours = [f for f in frames if _PACKAGE_MARK in f.filename and "/tests/" not in f.filename]
    f = (ours or frames)[-1]
    path = f.filename[f.filename.rfind(_PACKAGE_MARK):] if _PACKAGE_MARK in f.filename else f.filename
    return f"{path}:{f.lineno} {f.name}"


def _read(kind):
    for reads in _active:
        reads.record(kind)


@contextlib.contextmanager
def counting():
    """``with counting() as reads:`` counts the host reads made inside the block."""
    reads = HostReads()
    _active.append(reads)
    try:
        yield reads
    finally:
        _active.remove(reads)


class MemoryPointer:
    """What CuPy's ``ndarray.data`` is: a pointer, not an array (code that reads ``x.data`` as the
    array of a Tensor-or-array must not take it for one)."""

    def __init__(self, ptr):
        self.ptr = ptr


def _refuse_host(value):
    if isinstance(value, np.ndarray) and value.ndim > 0:
        raise TypeError(f"Unsupported type {type(value)}: a NumPy array met a device array (CuPy refuses to "
                        "mix them; move it with asarray first)")


def _unwrap(value, strict=True):
    """ndarrays -> their NumPy arrays, inside tuples, lists and dicts too; NumPy arrays refused when ``strict``."""
    if isinstance(value, ndarray):
        return value._host
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v, strict) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v, strict) for k, v in value.items()}
    if strict:
        _refuse_host(value)
    return value


def _wrap(value):
    """NumPy results -> ndarrays; a NumPy scalar becomes a 0-d array, as CuPy's reductions give."""
    if isinstance(value, np.ndarray):
        return ndarray(value)
    if isinstance(value, np.generic):
        return ndarray(np.asarray(value))
    if isinstance(value, (list, tuple)) and any(isinstance(v, np.ndarray) for v in value):
        return type(value)(_wrap(v) for v in value)
    return value


class ndarray(NDArrayOperatorsMixin):  # noqa: N801 - CuPy's name
    """A device array: NumPy's data and arithmetic, CuPy's refusals, every host read counted."""

    __slots__ = ("_host",)

    def __init__(self, host):
        if not isinstance(host, np.ndarray):
            raise TypeError(f"ndarray wraps a NumPy array, got {type(host).__name__}")
        self._host = host

    # what stays on the device: shape, dtype, flags, views, arithmetic
    shape = property(lambda self: self._host.shape)
    dtype = property(lambda self: self._host.dtype)
    ndim = property(lambda self: self._host.ndim)
    size = property(lambda self: self._host.size)
    strides = property(lambda self: self._host.strides)
    itemsize = property(lambda self: self._host.itemsize)
    nbytes = property(lambda self: self._host.nbytes)
    T = property(lambda self: ndarray(self._host.T))
    data = property(lambda self: MemoryPointer(self._host.__array_interface__["data"][0]))

    @property
    def flags(self):
        return types.SimpleNamespace(c_contiguous=self._host.flags.c_contiguous,
                                     f_contiguous=self._host.flags.f_contiguous, owndata=self._host.flags.owndata)

    @property
    def __cuda_array_interface__(self):
        host = self._host
        return {"shape": host.shape, "typestr": host.dtype.str, "version": 3,
                "data": (host.__array_interface__["data"][0], False),
                "strides": None if host.flags.c_contiguous else host.strides}

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct "
                        "a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        result = getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs))
        return None if method == "at" else _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    def __getitem__(self, key):
        return _wrap(self._host[_unwrap(key, strict=False)])

    def __setitem__(self, key, value):
        self._host[_unwrap(key, strict=False)] = _unwrap(value, strict=False)

    def __len__(self):
        return len(self._host)

    def __getattr__(self, name):  # the methods: .astype, .reshape, .sum, .argsort ...
        if name.startswith("__"):  # no __array_interface__, __array_struct__, buffer ...: not host memory
            raise AttributeError(name)
        attribute = getattr(self._host, name)
        if not callable(attribute):
            return _wrap(attribute)
        return lambda *args, **kwargs: _wrap(attribute(*_unwrap(args), **_unwrap(kwargs)))

    def __repr__(self):
        return f"cupy_standin.ndarray(shape={self.shape}, dtype={self.dtype})"  # no read: no values shown

    # reads of device values on the host: each counted
    def get(self, stream=None):
        _read("get")
        return self._host.copy()

    def item(self):
        _read("item")
        return self._host.item()

    def tolist(self):
        _read("tolist")
        return self._host.tolist()

    def __float__(self):
        _read("float")
        return float(self._host)

    def __int__(self):
        _read("int")
        return int(self._host)

    def __bool__(self):
        _read("bool")
        return bool(self._host)

    def __index__(self):
        _read("index")
        return self._host.__index__()

    def __iter__(self):
        _read("iteration")  # a Python loop over a device array: one launch (and often a read) per row
        return (ndarray(row) if isinstance(row, np.ndarray) else ndarray(np.asarray(row)) for row in self._host)


# ----- the namespace ------------------------------------------------------------------------------

def asarray(a, dtype=None, order=None):
    """A device array of ``a`` (a host copy when ``a`` is on the host)."""
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == dtype else ndarray(a._host.astype(dtype))
    return ndarray(np.array(a, dtype=dtype, order=order or "K", copy=True))


def array(a, dtype=None, copy=True, order="K", ndmin=0):
    host = a._host if isinstance(a, ndarray) else a
    return ndarray(np.array(host, dtype=dtype, copy=copy, order=order, ndmin=ndmin))


def asnumpy(a, stream=None):
    """The host copy of a device array (counted), or ``a`` as NumPy when it is on the host."""
    if isinstance(a, ndarray):
        return a.get()
    return np.asarray(a)


def get_array_module(*arrays):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in arrays) else np


class _Stream:
    """A stream: its work is done when it is queued (the simulator has no streams of CuPy's)."""

    ptr = 0

    def __init__(self, null=False, non_blocking=False, ptds=False):
        pass

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Device:
    id = 0

    def __init__(self, device=None):
        pass

    def synchronize(self):
        pass

    def use(self):
        pass


cuda = types.SimpleNamespace(is_available=lambda: True, Device=_Device, get_current_stream=lambda: _Stream(),
                             Stream=_Stream, runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))


class _Function:
    """NumPy's function ``name`` on device arrays: operands unwrapped, results wrapped, NumPy
    array operands refused as CuPy refuses them."""

    def __init__(self, name, function):
        self.__name__, self._function = name, function

    def __call__(self, *args, **kwargs):
        return _wrap(self._function(*_unwrap(args), **_unwrap(kwargs)))

    def __getattr__(self, name):  # ufunc methods: add.at, maximum.reduce ...
        method = getattr(self._function, name)
        return lambda *args, **kwargs: _wrap(method(*_unwrap(args), **_unwrap(kwargs)))


def __getattr__(name):
    """Everything else of the namespace: NumPy's dtypes and constants as they are, its functions
    (and ufuncs) on device arrays."""
    value = getattr(np, name)
    if isinstance(value, type) or not callable(value):
        return value
    return _Function(name, value)
