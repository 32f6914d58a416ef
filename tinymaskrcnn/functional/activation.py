"""Activations: relu, sigmoid, softmax and log_softmax, forward and backward side by side.

ReLU
    forward   y = max(x, 0)
    backward  dL/dx = dL/dy * [x > 0]
    The kink at x = 0 gets slope 0, and a NaN input passes its gradient through, as in torch
    (which tests ``y <= 0`` to zero the gradient).

Sigmoid
    forward   y = 1 / (1 + e^-x)
    backward  dy/dx = e^-x / (1 + e^-x)^2 = y (1 - y),  so  dL/dx = dL/dy * y (1 - y)
    Computed from e^-|x| so that no exponential overflows: for x < 0, y = e^x / (1 + e^x).

Softmax along ``dim``
    forward   y_i = e^(x_i - m) / sum_j e^(x_j - m),   m = max_j x_j
              (subtracting m changes nothing mathematically and keeps e^. <= 1)
    backward  dy_i/dx_k = y_i (d_ik - y_k), so
              dL/dx_k = sum_i dL/dy_i y_i (d_ik - y_k) = y_k (dL/dy_k - sum_i dL/dy_i y_i)

LogSoftmax along ``dim``
    forward   y_i = x_i - m - log sum_j e^(x_j - m)
    backward  dy_i/dx_k = d_ik - softmax_k, so  dL/dx_k = dL/dy_k - softmax_k * sum_i dL/dy_i,
              with softmax = e^y.
"""
import numpy as np

from ..core.autograd import Function
from ..core.backend import get_array_module


def stable_sigmoid(x):
    """1 / (1 + e^-x) without overflow: only e^-|x| <= 1 is ever formed."""
    xp = get_array_module(x)
    e = xp.exp(-abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def log_softmax_array(x, axis):
    """x - logsumexp(x) along ``axis``, shifted by the maximum so that no exponential overflows.

    An empty ``axis`` has no maximum: the result is as empty as the input, as torch's. A slice of
    all -inf gives NaN (-inf minus -inf), as torch's, without NumPy's warning.
    """
    xp = get_array_module(x)
    if x.shape[axis] == 0:
        return x.copy()
    with np.errstate(invalid="ignore"):
        shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def _check_dim(x, dim, name):
    if not isinstance(dim, int):
        raise TypeError(f"{name}: dim must be an int, got {dim!r}")
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"{name}: dim {dim} is out of range for an input of shape {tuple(x.shape)}")


class ReLU(Function):
    """y = max(x, 0); dL/dx = dL/dy where y > 0, else 0."""

    def forward(self, x):
        self.y = get_array_module(x).maximum(x, 0)
        return self.y

    def backward(self, g):
        return (get_array_module(g).where(self.y <= 0, 0, g),)


class Sigmoid(Function):
    """y = 1 / (1 + e^-x); dL/dx = dL/dy * (1 - y) * y."""

    def forward(self, x):
        self.y = stable_sigmoid(x)
        return self.y

    def backward(self, g):
        return (g * (1 - self.y) * self.y,)


class Softmax(Function):
    """y = softmax(x) along ``axis``; dL/dx = y * (dL/dy - sum(dL/dy * y))."""

    def forward(self, x, axis):
        self.axis = axis
        self.y = get_array_module(x).exp(log_softmax_array(x, axis))
        return self.y

    def backward(self, g):
        return (self.y * (g - (g * self.y).sum(axis=self.axis, keepdims=True)),)


class LogSoftmax(Function):
    """y = log softmax(x) along ``axis``; dL/dx = dL/dy - e^y * sum(dL/dy)."""

    def forward(self, x, axis):
        self.axis = axis
        self.y = log_softmax_array(x, axis)
        return self.y

    def backward(self, g):
        xp = get_array_module(g)
        return (g - xp.exp(self.y) * g.sum(axis=self.axis, keepdims=True),)


def relu(input):
    """torch.nn.functional.relu: max(input, 0)."""
    return ReLU.apply(input)


def sigmoid(input):
    """torch.sigmoid: 1 / (1 + exp(-input)), computed without overflow."""
    return Sigmoid.apply(input)


def softmax(input, dim):
    """torch.nn.functional.softmax along ``dim`` (required: there is no implicit choice)."""
    _check_dim(input, dim, "softmax")
    return Softmax.apply(input, axis=dim)


def log_softmax(input, dim):
    """torch.nn.functional.log_softmax along ``dim`` (required: there is no implicit choice)."""
    _check_dim(input, dim, "log_softmax")
    return LogSoftmax.apply(input, axis=dim)
