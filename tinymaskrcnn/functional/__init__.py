"""torch.nn.functional-style entry points: the ops with torch's names and signatures.

Each function here takes Tensors (or plain arrays, treated as constants) and returns a Tensor
recorded on the tape. The forward and backward passes live in ``tinymaskrcnn/ops/``, one file
per family, derivation in each docstring.
"""
from ..core.autograd import cat, stack
from .activation import log_softmax, relu, sigmoid, softmax
from .conv import conv2d, conv_transpose2d
from .interpolate import interpolate
from .linear import linear
from .loss import binary_cross_entropy_with_logits, cross_entropy, smooth_l1_loss
from .norm import batch_norm, frozen_batch_norm, instance_norm
from .pool import max_pool2d

__all__ = [
    "batch_norm", "binary_cross_entropy_with_logits", "cat", "conv2d", "conv_transpose2d",
    "cross_entropy", "frozen_batch_norm", "instance_norm", "interpolate", "linear", "log_softmax", "max_pool2d",
    "relu", "sigmoid", "smooth_l1_loss", "softmax", "stack",
]
