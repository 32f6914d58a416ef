"""Batch normalisation (trainable and frozen), forward and backward side by side.

BatchNorm over an input of shape (N, C, *): every channel c is normalised with a mean mu_c and
variance var_c, then scaled and shifted by learnt gamma_c, beta_c. Below, sums run over the
m = N * prod(*) positions of one channel.

forward (training: the batch's own statistics)
    mu    = (1/m) sum x                      var = (1/m) sum (x - mu)^2      (biased)
    xhat  = (x - mu) / sqrt(var + eps)       y   = gamma * xhat + beta
    The running statistics move toward the batch's, with the *unbiased* variance, as torch:
    running_mean <- (1 - momentum) running_mean + momentum mu
    running_var  <- (1 - momentum) running_var  + momentum var * m / (m - 1)

backward (training). Write s = 1/sqrt(var + eps) and g = dL/dy. Then
    dL/dbeta  = sum g                         dL/dgamma = sum g xhat
    dL/dxhat  = g gamma
    mu and var depend on every x of the channel, so dL/dx has three paths:
    dL/dx = s (dL/dxhat - mean(dL/dxhat) - xhat mean(dL/dxhat xhat))
          = (gamma s / m) (m g - sum g - xhat sum g xhat)
    (the two means are what is lost to the centring and to the scaling by the batch's own
    spread: a shift or a stretch of the whole channel does not change xhat.)

forward / backward (eval: the running statistics, constants)
    y = gamma (x - running_mean) / sqrt(running_var + eps) + beta
    dL/dx = g gamma s,  dL/dgamma = sum g xhat,  dL/dbeta = sum g

FrozenBatchNorm (torchvision.ops.FrozenBatchNorm2d): all four vectors are buffers, folded into
one affine map per channel,
    scale = gamma / sqrt(running_var + eps),   shift = beta - running_mean * scale
    y = x * scale + shift,                     dL/dx = dL/dy * scale
and only x gets a gradient.
"""
import math

from ..core.autograd import Function, Tensor, as_array
from ..core.backend import get_array_module
from .arguments import kernel_dtype
from .dispatch import kernel_for


def _channel_shape(x):
    """(1, C, 1, ...): how a per-channel vector broadcasts against x of shape (N, C, *)."""
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _reduce_axes(x):
    """Every axis but the channel axis 1."""
    return (0,) + tuple(range(2, x.ndim))


class BatchNorm(Function):
    """Batch normalisation; running statistics are updated in place in training mode."""

    def forward(self, x, weight, bias, running_mean=None, running_var=None, training=False,
                momentum=0.1, eps=1e-5):
        xp = get_array_module(x)
        shape, axes = _channel_shape(x), _reduce_axes(x)
        m = _values_per_channel(x)
        # an empty batch has no statistics: as torch, it normalises nothing and leaves the
        # running statistics as they were (and the backward is eval's, on no value)
        training = training and m > 0
        self.training, self.axes, self.shape = training, axes, shape
        if training:
            mean = x.mean(axis=axes)
            centred = x - mean.reshape(shape)
            squares = (centred * centred).sum(axis=axes)
            var = squares / m
            if running_mean is not None:
                running_mean[...] = momentum * mean + (1 - momentum) * running_mean
                running_var[...] = momentum * (squares / (m - 1)) + (1 - momentum) * running_var
        elif running_mean is None:  # an empty batch in training mode without running statistics
            centred, var = x, xp.ones(x.shape[1], dtype=x.dtype)
        else:
            centred = x - running_mean.reshape(shape)
            var = running_var
        self.inv_std = (1 / xp.sqrt(var + eps)).reshape(shape)
        self.xhat = centred * self.inv_std
        self.weight = weight
        y = self.xhat if weight is None else self.xhat * weight.reshape(shape)
        return y if bias is None else y + bias.reshape(shape)

    def backward(self, g):
        axes, shape = self.axes, self.shape
        dxhat = g if self.weight is None else g * self.weight.reshape(shape)
        dx = None
        if self.needs_input_grad[0]:
            if self.training:  # subtract the parts that flow back through the batch mean and variance
                dx = self.inv_std * (dxhat - dxhat.mean(axis=axes, keepdims=True)
                                     - self.xhat * (dxhat * self.xhat).mean(axis=axes, keepdims=True))
            else:
                dx = dxhat * self.inv_std
        dweight = (g * self.xhat).sum(axis=axes) if self.needs_input_grad[1] else None
        dbias = g.sum(axis=axes) if self.needs_input_grad[2] else None
        return dx, dweight, dbias


class FrozenBatchNorm(Function):
    """y = x * scale + shift with constant per-channel scale and shift; dL/dx = dL/dy * scale."""

    def forward(self, x, weight, bias, running_mean, running_var, eps=1e-5):
        xp = get_array_module(x)
        shape = _channel_shape(x)
        scale = weight * (1 / xp.sqrt(running_var + eps))
        shift = bias - running_mean * scale
        self.scale = scale.reshape(shape)
        if x.size == 0:  # nothing for the kernel's threads to share out
            return x.copy()
        # kernels/affine.py: one parallel pass instead of NumPy's two on one core
        return kernel_for("channel_affine", x)(xp.ascontiguousarray(x), scale, shift)

    def backward(self, g):
        return g * self.scale, None, None, None, None


def _values_per_channel(x):
    """m: the number of values each channel of x (N, C, *) holds (from the shape: C may be 0)."""
    return math.prod(x.shape[:1] + x.shape[2:])


def _check_channel_vectors(name, x, vectors):
    """Each given per-channel vector must have shape (C,) and x's dtype."""
    if x.ndim < 2:
        raise ValueError(f"{name}: input must be (N, C, *) with at least 2 axes, got shape {tuple(x.shape)}")
    c = x.shape[1]
    for key, v in vectors.items():
        if v is None:
            continue
        if tuple(v.shape) != (c,):
            raise ValueError(f"{name}: {key} shape {tuple(v.shape)} must be ({c},), one value per channel "
                             f"of the input of shape {tuple(x.shape)}")
        if v.dtype != x.dtype:
            raise TypeError(f"{name}: {key} dtype {v.dtype} differs from input dtype {x.dtype}; "
                            f"convert it with .astype({x.dtype})")


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """torch.nn.functional.batch_norm over an input of shape (N, C, *).

    training=True normalises with the batch statistics and, when running_mean/running_var are
    given, updates them in place (unbiased variance, as torch). training=False uses them.
    ``momentum=None`` (a cumulative average) needs the number of batches seen, which only the
    module knows: BatchNorm2d passes momentum = 1 / num_batches_tracked instead. An empty batch
    gives an empty output and leaves the running statistics alone, as torch; one value per
    channel is refused (no variance to take), as torch.
    """
    _check_channel_vectors("batch_norm", input, {"running_mean": running_mean, "running_var": running_var,
                                                 "weight": weight, "bias": bias})
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: give both running_mean and running_var, or neither")
    if not training and running_mean is None:
        raise ValueError("batch_norm: eval mode (training=False) normalises with running_mean and running_var; "
                         "pass them, or use training=True for batch statistics")
    if training:
        if momentum is None:
            raise ValueError("batch_norm: momentum=None (cumulative average) needs num_batches_tracked; "
                             "pass momentum=1/num_batches_tracked, as BatchNorm2d does")
        if _values_per_channel(input) == 1:
            raise ValueError(f"batch_norm: training needs more than 1 value per channel to estimate a variance, "
                             f"got input shape {tuple(input.shape)}")
    return BatchNorm.apply(input, weight, bias, running_mean=as_array(running_mean),
                           running_var=as_array(running_var), training=bool(training),
                           momentum=momentum, eps=eps)


def instance_norm(input, weight=None, bias=None, eps=1e-5):
    """torch.nn.functional.instance_norm without running statistics, over (N, C, *).

    y[n, c] = (x[n, c] - mean) / sqrt(var + eps) · weight[c] + bias[c], the mean and (biased)
    variance taken over the plane x[n, c] alone. That is batch norm of a batch of one with N·C
    channels, so the forward and backward are batch_norm's on the (1, N·C, *) view; the
    per-channel affine map then broadcasts over the samples, and the tape sums its gradient
    over them. Every sample is normalised by its own statistics, in training and inference
    alike, whatever else is in the batch.
    """
    _check_channel_vectors("instance_norm", input, {"weight": weight, "bias": bias})
    n, c, *spatial = input.shape
    out = batch_norm(input.reshape(1, n * c, *spatial), None, None, training=True, momentum=0.0, eps=eps)
    out = out.reshape(n, c, *spatial)
    per_channel = (1, c) + (1,) * len(spatial)
    if weight is not None:
        out = out * weight.reshape(*per_channel)
    if bias is not None:
        out = out + bias.reshape(*per_channel)
    return out


def frozen_batch_norm(input, weight, bias, running_mean, running_var, eps=1e-5):
    """torchvision.ops.FrozenBatchNorm2d's forward: batch norm with constant statistics and affine.

    Only ``input`` gets a gradient; the four per-channel vectors are buffers.
    """
    vectors = {"weight": weight, "bias": bias, "running_mean": running_mean, "running_var": running_var}
    _check_channel_vectors("frozen_batch_norm", input, vectors)
    kernel_dtype("frozen_batch_norm", "input", input.dtype)
    for key, v in vectors.items():
        if v is None:
            raise ValueError(f"frozen_batch_norm: {key} is required (a per-channel buffer), got None")
        if isinstance(v, Tensor) and v.requires_grad:
            raise ValueError(f"frozen_batch_norm: {key} requires a gradient, but frozen batch norm's buffers "
                             f"are constants; use batch_norm for trainable parameters")
    return FrozenBatchNorm.apply(input, *(as_array(v) for v in vectors.values()), eps=eps)
