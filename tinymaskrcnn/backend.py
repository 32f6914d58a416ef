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


def is_cupy(x):
    """True when ``x`` is a CuPy array."""
    return _cupy is not None and isinstance(x, _cupy.ndarray)


def get_array_module(*arrays):
    """The array module (numpy or cupy) of the given arrays; numpy when none is a CuPy array.

    Tensors are unwrapped, so ``get_array_module(tensor)`` works too.
    """
    for a in arrays:
        if is_cupy(a) or is_cupy(getattr(a, "data", None)):
            return _cupy
    return np


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
    return "cuda" if is_cupy(getattr(x, "data", x)) else "cpu"


def to_device(x, device):
    """Move an array to 'cpu' (NumPy) or 'cuda' (CuPy)."""
    if device == "cpu":
        return to_numpy(x)
    if device == "cuda":
        if _cupy is None:
            raise RuntimeError("device='cuda' needs CuPy: pip install 'tinymaskrcnn[gpu-cuda13]' (or [gpu-cuda12] for a CUDA 12 driver)")
        return _cupy.asarray(x)
    raise ValueError(f"unknown device {device!r}: use 'cpu' or 'cuda'")
