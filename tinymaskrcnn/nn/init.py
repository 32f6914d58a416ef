"""torch.nn.init's in-place initialisers, drawing from tinymaskrcnn.core.random.get_rng()."""
import math

import numpy as np

from ..core.autograd import as_array
from ..core.backend import get_array_module
from ..core.random import get_rng


def _fill(tensor, values):
    """Write NumPy ``values`` into the tensor's array in place (moving them to its device)."""
    arr = as_array(tensor)
    xp = get_array_module(arr)
    arr[...] = values if xp is np else xp.asarray(values)
    return tensor


def _draw_dtype(arr):
    # NumPy's generator draws float32 and float64 natively; anything else is drawn in float64
    return arr.dtype if arr.dtype in (np.float32, np.float64) else np.float64


def calculate_gain(nonlinearity, param=None):
    """The gain that keeps activations' variance steady through ``nonlinearity`` (torch's table):
    1 for linear/conv/sigmoid, 5/3 tanh, sqrt(2) relu, sqrt(2/(1+slope^2)) leaky_relu
    (slope 0.01 unless given), 3/4 selu."""
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                        "conv_transpose3d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise ValueError(f"leaky_relu's negative slope must be a number, got {param!r}")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}: use linear, conv2d, sigmoid, tanh, relu, "
                     "leaky_relu or selu")


def fan_in_and_fan_out(arr):
    """fan_in = shape[1] × receptive field, fan_out = shape[0] × receptive field (torch's rule;
    for a ConvTranspose2d weight (in, out/groups, kh, kw) that makes fan_in = out/groups·kh·kw)."""
    if arr.ndim < 2:
        raise ValueError(f"fan in and fan out need a tensor of at least 2 dimensions, got shape {arr.shape}")
    receptive = int(np.prod(arr.shape[2:])) if arr.ndim > 2 else 1
    return arr.shape[1] * receptive, arr.shape[0] * receptive


def _kaiming_std(arr, a, mode, nonlinearity):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = fan_in_and_fan_out(arr)
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def uniform_(tensor, a=0.0, b=1.0):
    """Fill with U(a, b) draws, in place."""
    arr = as_array(tensor)
    u = get_rng().random(arr.shape, dtype=_draw_dtype(arr))
    return _fill(tensor, a + (b - a) * u)


def normal_(tensor, mean=0.0, std=1.0):
    """Fill with N(mean, std²) draws, in place."""
    arr = as_array(tensor)
    z = get_rng().standard_normal(arr.shape, dtype=_draw_dtype(arr))
    return _fill(tensor, mean + std * z)


def constant_(tensor, val):
    """Fill with ``val``, in place."""
    as_array(tensor)[...] = val
    return tensor


def zeros_(tensor):
    return constant_(tensor, 0.0)


def ones_(tensor):
    return constant_(tensor, 1.0)


def kaiming_uniform_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    """He et al. (2015) uniform: U(-bound, bound) with bound = sqrt(3) · gain / sqrt(fan), so the
    variance is gain²/fan. With a = sqrt(5) (torch's layer default) bound = 1/sqrt(fan_in)."""
    bound = math.sqrt(3.0) * _kaiming_std(as_array(tensor), a, mode, nonlinearity)
    return uniform_(tensor, -bound, bound)


def kaiming_normal_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    """He et al. (2015) normal: N(0, std²) with std = gain / sqrt(fan); torchvision's ResNet uses
    mode='fan_out', nonlinearity='relu'."""
    return normal_(tensor, 0.0, _kaiming_std(as_array(tensor), a, mode, nonlinearity))
