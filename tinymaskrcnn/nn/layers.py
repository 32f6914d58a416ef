"""The layers: each holds its parameters and buffers and calls tinymaskrcnn.functional, where
the forward and backward math lives (tinymaskrcnn/ops). Initialisation is torch's default."""
import math

import numpy as np

from .. import functional as F
from ..core.backend import get_default_dtype
from ..functional.arguments import pair
from .init import fan_in_and_fan_out, kaiming_uniform_, uniform_
from .module import Module, Parameter


def _float_dtype(dtype):
    dtype = np.dtype(get_default_dtype() if dtype is None else dtype)
    if dtype.kind != "f":
        raise ValueError(f"parameters need a floating dtype (float32 or float64), got {dtype}")
    return dtype


def _empty_parameter(shape, dtype):
    return Parameter(np.empty(shape, dtype=dtype))


def _reset_weight_and_bias(weight, bias):
    """torch's default for Linear and convolutions: kaiming_uniform_(a=sqrt(5)) on the weight,
    i.e. U(±1/sqrt(fan_in)), and U(±1/sqrt(fan_in)) on the bias."""
    kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in, _ = fan_in_and_fan_out(weight.data)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        uniform_(bias, -bound, bound)


class _ConvNd(Module):
    """What Conv2d and ConvTranspose2d share: settings, parameters, init and repr."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                 padding_mode, output_padding, transposed, dtype):
        super().__init__()
        if groups <= 0 or in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must be positive and divide in_channels={in_channels} "
                             f"and out_channels={out_channels}")
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode {padding_mode!r} is not supported: only 'zeros'")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        op = type(self).__name__
        self.kernel_size = pair(kernel_size, "kernel_size", op, 1)
        self.stride = pair(stride, "stride", op, 1)
        self.padding = pair(padding, "padding", op, 0)
        self.dilation = pair(dilation, "dilation", op, 1)
        self.output_padding = pair(output_padding, "output_padding", op, 0)
        self.padding_mode = padding_mode
        dtype = _float_dtype(dtype)
        # torch's layouts: conv (out, in/groups, kh, kw); transposed conv (in, out/groups, kh, kw)
        shape = ((in_channels, out_channels // groups) if transposed else (out_channels, in_channels // groups))
        self.weight = _empty_parameter(shape + self.kernel_size, dtype)
        self.register_parameter("bias", _empty_parameter((out_channels,), dtype) if bias else None)
        self.reset_parameters()

    def reset_parameters(self):
        _reset_weight_and_bias(self.weight, self.bias)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class Conv2d(_ConvNd):
    """2-D convolution (cross-correlation), torch.nn.Conv2d's arguments, weight (out, in/groups, kh, kw)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, 0, False, dtype)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ConvTranspose2d(_ConvNd):
    """2-D transposed convolution (the input-gradient of a convolution), torch's arguments,
    weight (in, out/groups, kh, kw)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros", dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, output_padding, True, dtype)

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding,
                                  self.groups, self.dilation)


class Linear(Module):
    """y = x W^T + b with weight (out_features, in_features), torch's init."""

    def __init__(self, in_features, out_features, bias=True, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        dtype = _float_dtype(dtype)
        self.weight = _empty_parameter((out_features, in_features), dtype)
        self.register_parameter("bias", _empty_parameter((out_features,), dtype) if bias else None)
        self.reset_parameters()

    def reset_parameters(self):
        _reset_weight_and_bias(self.weight, self.bias)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _check_4d(module, x):
    if len(getattr(x, "shape", ())) != 4:
        raise ValueError(f"{type(module).__name__} expects a 4-D input (N, C, H, W), got shape {getattr(x, 'shape', None)}")


class BatchNorm2d(Module):
    """Batch normalisation over (N, H, W) per channel, torch.nn.BatchNorm2d's behaviour.

    Training: normalise with the batch statistics and update the running ones,
    running = (1 - m) running + m batch (unbiased variance), m = ``momentum``, or the
    cumulative average 1/num_batches_tracked when ``momentum`` is None. Eval: normalise with the
    running statistics. Parameters weight (1) and bias (0) when ``affine``; buffers
    running_mean (0), running_var (1), num_batches_tracked (int64 0) when ``track_running_stats``.
    ``bias=False`` (keyword) drops the shift, as in recent torch.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, dtype=None,
                 *, bias=True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        dtype = _float_dtype(dtype)
        self.register_parameter("weight", Parameter(np.ones(num_features, dtype=dtype)) if affine else None)
        self.register_parameter("bias", Parameter(np.zeros(num_features, dtype=dtype)) if affine and bias else None)
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype=dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype=dtype))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)

    def forward(self, x):
        _check_4d(self, x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1  # a 0-d array: updated in place
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        # without running statistics there is nothing to use in eval: batch statistics it is
        use_batch_stats = self.training or self.running_mean is None
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            use_batch_stats, factor, self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class InstanceNorm2d(Module):
    """torch.nn.InstanceNorm2d without running statistics: each sample's channel normalised over
    its own (H, W), in train and eval alike (see ``F.instance_norm``). Parameters weight (1) and
    bias (0) when ``affine`` (torch's default is False). For models trained from scratch with
    one or two images per batch: training and inference then normalise the same way, where
    BatchNorm2d's running statistics, gathered over batches of one image, would not match what
    the layers saw in training.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False, track_running_stats=False, dtype=None):
        super().__init__()
        if track_running_stats:
            raise ValueError("InstanceNorm2d(track_running_stats=True) is not supported: each sample is normalised "
                             "by its own statistics; use BatchNorm2d for running statistics")
        self.num_features, self.eps, self.affine = num_features, eps, affine
        dtype = _float_dtype(dtype)
        self.register_parameter("weight", Parameter(np.ones(num_features, dtype=dtype)) if affine else None)
        self.register_parameter("bias", Parameter(np.zeros(num_features, dtype=dtype)) if affine else None)

    def forward(self, x):
        _check_4d(self, x)
        return F.instance_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}"


class FrozenBatchNorm2d(Module):
    """torchvision.ops.FrozenBatchNorm2d: y = (x - running_mean) / sqrt(running_var + eps) · weight
    + bias with all four as *buffers*: nothing is trained and the statistics never change, in
    train and eval alike. The detection backbones use it, since batches of 1-2 images give
    useless batch statistics. Loading a BatchNorm2d state drops its num_batches_tracked."""

    _ignored_state_keys = ("num_batches_tracked",)

    def __init__(self, num_features, eps=1e-5, dtype=None):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        dtype = _float_dtype(dtype)
        self.register_buffer("weight", np.ones(num_features, dtype=dtype))
        self.register_buffer("bias", np.zeros(num_features, dtype=dtype))
        self.register_buffer("running_mean", np.zeros(num_features, dtype=dtype))
        self.register_buffer("running_var", np.ones(num_features, dtype=dtype))

    def forward(self, x):
        _check_4d(self, x)
        return F.frozen_batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var, self.eps)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}"


class ReLU(Module):
    """max(x, 0). ``inplace`` is accepted for torch compatibility and ignored (arrays on the tape
    must not be overwritten)."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        return F.relu(x)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class MaxPool2d(Module):
    """Max over kernel_size windows, torch.nn.MaxPool2d's arguments (stride defaults to the kernel)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__()
        if return_indices:
            raise ValueError("MaxPool2d(return_indices=True) is not supported")
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding, self.dilation, self.ceil_mode = padding, dilation, ceil_mode

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class Flatten(Module):
    """Merge dims start_dim..end_dim into one (default: everything after the batch axis)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        shape = tuple(x.shape)
        start, end = self.start_dim % len(shape), self.end_dim % len(shape)
        return x.reshape(shape[:start] + (int(np.prod(shape[start:end + 1])),) + shape[end + 1:])

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    """Returns its input: a placeholder where a layer is switched off."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x
