"""tinymaskrcnn: Mask R-CNN from scratch in NumPy and Numba, proven equal to torchvision."""
from . import backend, functional, random
from .autograd import Function, Tensor, cat, no_grad, stack, tensor
from .backend import get_array_module, get_default_dtype, set_default_dtype
from .random import manual_seed

__version__ = "0.1.0"
