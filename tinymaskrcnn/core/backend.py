"""Array-module selection: NumPy on the CPU, CuPy on the GPU, the same model code for both.

Model code never imports numpy for array math. It asks an input for its module,
``xp = get_array_module(x)``, and calls ``xp.zeros``, ``xp.exp`` ... so that a CuPy array
flows through the same lines as a NumPy one.
"""
import numpy as np

try:  # CuPy is optional (the `gpu` extra); everything works without it.
    import cupy as _cupy
except Exception:  # pragma: no cover - depends on the machine
    _cupy = None

_default_dtype = np.dtype(np.float32)
_simulate_cuda = False  # test-only: NumPy arrays through the CUDA kernels, in numba's simulator


def is_cupy(x):
    """True when ``x`` is a CuPy array."""
    return _cupy is not None and isinstance(x, _cupy.ndarray)


def use_device_module(module):
    """Test-only: make ``module`` the package's device array module in CuPy's place, e.g.
    tests/cupy_standin.py, a CuPy-like namespace over NumPy that refuses what CuPy refuses and
    counts host reads. ``module`` needs CuPy's ``ndarray`` type, ``asarray`` and
    ``cuda.is_available()``; None restores CuPy (when installed). Returns the previous module."""
    global _cupy
    previous, _cupy = _cupy, module if module is not None else _installed_cupy
    return previous


_installed_cupy = _cupy


def _unwrapped(x):
    """The array of a Tensor (its ``.data``), else ``x`` itself: a CuPy array's own ``.data`` is
    a memory pointer, not an array."""
    return x if isinstance(x, np.ndarray) or is_cupy(x) else getattr(x, "data", x)


def get_array_module(*arrays):
    """The array module (numpy or cupy) of the given arrays; numpy when none is a CuPy array.

    Tensors are unwrapped, so ``get_array_module(tensor)`` works too.
    """
    return _cupy if any(is_cupy(_unwrapped(a)) for a in arrays) else np


def uses_cuda_kernels(*arrays):
    """True when the ops should run the Numba-CUDA kernels (kernels/cuda/) on these arrays:
    for CuPy arrays, and for NumPy ones while ``simulate_cuda`` is on."""
    return _simulate_cuda or any(is_cupy(_unwrapped(a)) for a in arrays)


def simulate_cuda(enabled=True):
    """Test-only switch: send NumPy arrays through the CUDA kernels, which numba's CUDA simulator
    then runs on the CPU (slowly: tiny inputs only). The simulator must have been chosen before
    numba was first imported (``NUMBA_ENABLE_CUDASIM=1``). Returns the previous setting."""
    global _simulate_cuda
    if enabled:
        from numba import config
        if not config.ENABLE_CUDASIM:
            raise RuntimeError("simulate_cuda needs numba's CUDA simulator: set NUMBA_ENABLE_CUDASIM=1 in the "
                               "environment before Python starts (numba reads it once, at import)")
    previous, _simulate_cuda = _simulate_cuda, bool(enabled)
    return previous


def fraction(hits, among=None):
    """The fraction of True in the boolean array ``hits`` (only where ``among`` is True, when
    given), a float64 on their device (a 0-d CuPy array on the GPU): NaN when there is none,
    with no host read (a statistic is read once per step with the others)."""
    if among is not None:
        hits = hits & among
    count = hits.size if among is None else among.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        return hits.sum(dtype=np.float64) / count


def get_default_dtype():
    """The floating dtype new parameters and tensors get: float32 unless changed."""
    return _default_dtype


def set_default_dtype(dtype):
    """Set the default floating dtype (float32 or float64)."""
    global _default_dtype
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"default dtype must be float32 or float64, got {dtype}")
    _default_dtype = dtype


def to_numpy(x):
    """A NumPy copy (or view) of a NumPy/CuPy array or Tensor, for printing and plotting."""
    if not isinstance(x, np.ndarray) and hasattr(x, "requires_grad"):
        x = x.data  # a Tensor
    if is_cupy(x):
        return x.get()
    return np.asarray(x)


def device_of(x):
    """'cpu' for NumPy arrays, 'cuda' for CuPy arrays."""
    return "cuda" if is_cupy(_unwrapped(x)) else "cpu"


def is_torch(x):
    """True for torch's own objects (tensors, tv_tensors, devices, dtypes), told by the module
    of their type so that torch is never imported here: it stays an optional extra."""
    return type(x).__module__.partition(".")[0] in ("torch", "torchvision")


def as_device(device):
    """'cpu' or 'cuda' for a device named as torch names it: 'cpu', 'cuda', 'cuda:0', or a
    ``torch.device`` (read by its ``type`` and ``index``).

    The package runs on one GPU, CuPy's current device: 'cuda:N' is accepted when N is that
    device, and anything else is a ValueError that says how to select another one.
    """
    if is_torch(device) and type(device).__name__ == "device":
        kind, index = device.type, device.index
    elif isinstance(device, str):
        kind, _, index = device.partition(":")
        index = int(index) if index.isdigit() else (None if index == "" else index)
    else:
        raise TypeError(f"a device is 'cpu', 'cuda', 'cuda:N' or a torch.device, got {type(device).__name__} "
                        f"{device!r}")
    if kind not in ("cpu", "cuda") or isinstance(index, str):
        raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")
    if kind == "cuda" and index is not None:
        check_cuda()
        current = _cupy.cuda.Device().id
        if index != current:
            raise ValueError(f"device {device!r}: arrays here live on CuPy's current GPU, cuda:{current}; select "
                             f"GPU {index} first with cupy.cuda.Device({index}).use()")
    return kind


# DLPack's device codes (dlpack.h, DLDeviceType): host memory, and the kinds CuPy can read
_DLPACK_CPU, _DLPACK_CUDA = 1, (2, 3, 13)  # kDLCPU; kDLCUDA, kDLCUDAHost, kDLCUDAManaged


def array_from(x):
    """``x`` as a NumPy or CuPy array without copying where the memory allows, or None when
    ``x`` holds no array. What another library's arrays become at the model's boundary:

    * NumPy and CuPy arrays: themselves;
    * torch tensors and torchvision's tv_tensors (a subclass): detached, then a CPU tensor's
      NumPy view (shared memory) or, on the GPU, a CuPy array by DLPack (no host copy). torch is
      not imported: the tensor's own methods do the work;
    * anything with ``__dlpack__`` (JAX, TensorFlow, CuPy-like arrays): by DLPack, on the host
      into NumPy, on a GPU into CuPy;
    * anything with ``__array__`` (PIL images, pandas, xarray ...): ``np.asarray``.
    """
    if isinstance(x, np.ndarray) or is_cupy(x):
        return x
    if is_torch(x) and hasattr(x, "detach"):
        x = x.detach()  # DLPack and .numpy() refuse a tensor that records gradients
        if x.device.type == "cpu":
            return x.numpy()
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        kind = int(x.__dlpack_device__()[0])
        if kind == _DLPACK_CPU:
            return np.from_dlpack(x)
        if kind in _DLPACK_CUDA:
            check_cuda()
            return _cupy.from_dlpack(x)
        raise TypeError(f"a {type(x).__name__} on DLPack device type {kind}: only host memory (NumPy) and CUDA "
                        "memory (CuPy) are read; move it to the CPU or a CUDA GPU first")
    if hasattr(x, "__array__"):
        return np.asarray(x)
    return None


def to_device(x, device):
    """Move an array to 'cpu' (NumPy) or 'cuda' (CuPy); ``device`` as ``as_device`` reads it."""
    device = as_device(device)
    if device == "cpu":
        return to_numpy(x)
    check_cuda()
    return _cupy.asarray(x)


def to_device_together(arrays, device):
    """``[to_device(a, device) for a in arrays]`` with one copy per dtype to the GPU instead of
    one per array: each dtype's host arrays laid end to end in one buffer, copied at once, and
    cut back into views of their shapes (a batch's images and targets, say). Arrays already
    there are kept as they are."""
    device = as_device(device)
    if device == "cpu":
        return [to_numpy(a) for a in arrays]
    check_cuda()
    out = list(arrays)
    by_dtype = {}
    for i, a in enumerate(arrays):
        if not is_cupy(a):
            by_dtype.setdefault(np.asarray(a).dtype, []).append(i)
    for members in by_dtype.values():
        host = [np.asarray(arrays[i]) for i in members]
        moved = _cupy.asarray(np.concatenate([a.reshape(-1) for a in host]))
        bounds = np.cumsum([a.size for a in host])[:-1].tolist()
        for i, a, part in zip(members, host, _cupy.split(moved, bounds)):
            out[i] = part.reshape(a.shape)
    return out


class CUDAUnavailableError(RuntimeError):
    """device='cuda' asked for where CUDA cannot run (no CuPy, no GPU or no driver)."""


def check_cuda():
    """Raise one clear error when CUDA cannot be used: CuPy missing, or no usable GPU and driver
    (CuPy itself imports without a GPU and fails later with a misleading driver message)."""
    if _cupy is None:
        raise CUDAUnavailableError("device='cuda' needs CuPy and numba-cuda: pip install 'tinymaskrcnn[gpu-cuda13]' "
                                   "(or [gpu-cuda12] for a CUDA 12 driver)")
    try:
        available = _cupy.cuda.is_available()
    except Exception:  # pragma: no cover - depends on the machine
        available = False
    if not available:
        raise CUDAUnavailableError("device='cuda' asked for, but CuPy finds no usable GPU (cupy.cuda.is_available() "
                                   "is False: no NVIDIA GPU, or no driver for this CuPy build); run on the CPU "
                                   "(device='cpu', --device cpu)")
