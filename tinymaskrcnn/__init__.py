"""tinymaskrcnn: Mask R-CNN from scratch in NumPy and Numba, proven equal to torchvision."""
from .core.memory import keep_freed_memory

keep_freed_memory()  # before the first large array (tinymaskrcnn/core/memory.py says why)

from .core import backend, random
from . import functional, nn, optim
from .core.autograd import Function, Tensor, cat, no_grad, stack, tensor
from .core.backend import get_array_module, get_default_dtype, set_default_dtype
from .core.random import manual_seed
from .functional.dispatch import get_kernels, set_kernels, use_kernels

__version__ = "0.1.0"


def __getattr__(name):
    # The detector (models) and its ops load on first use: the foundation chapter's users
    # should not pay for compiling the detection kernels.
    if name in ("models", "ops", "weights"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'tinymaskrcnn' has no attribute {name!r}")
