"""The losses Mask R-CNN trains with, forward and backward side by side.

Every loss first forms one value per element (or per sample), l, then reduces it:
'none' keeps l, 'sum' gives sum l, 'mean' gives sum l / count. Backward starts from the
reduction: dL/dl = g (none), g broadcast (sum), g / count broadcast (mean).

Cross entropy, logits x (N, C), integer targets t (N,), class weights w (C,), smoothing e:
    p = softmax(x),  log p = log_softmax(x)
    l_n = (1 - e) w[t_n] (-log p[n, t_n])  +  (e / C) sum_c w_c (-log p[n, c])
    (both terms 0 for samples whose target is ignore_index; w = 1 when not given)
    'mean' divides by D = sum of w[t_n] over the samples kept, as torch does for both terms.
    With d log p_c / d x_k = [c = k] - p_k:
    dl_n/dx_n = (1 - e) w[t_n] (p_n - onehot(t_n))  +  (e / C) (p_n sum_c w_c - w)

Binary cross entropy with logits x, targets t in [0, 1], pos_weight q (default 1):
    l = -(q t log s(x) + (1 - t) log(1 - s(x))),  s = sigmoid.
    With log(1 - s(x)) = log s(x) - x this is
    l = (1 - t) x - (1 + (q - 1) t) log s(x),   log s(x) = min(x, 0) - log(1 + e^-|x|)
    which never exponentiates a large number. Times an elementwise weight w if given.
    dl/dx = (1 + (q - 1) t) s(x) - q t       (= s(x) - t without pos_weight)
    dl/dt = -x - (q - 1) log s(x)            (w and q are constants, as in torch)

Smooth L1 with threshold beta, d = x - t:
    l = d^2 / (2 beta)  if |d| < beta,   |d| - beta / 2  otherwise   (beta = 0: l = |d|)
    dl/dx = clip(d / beta, -1, 1)  (sign(d) when beta = 0),   dl/dt = -dl/dx
    The two pieces meet with slope ±1 at |d| = beta; with beta = 0 the kink at d = 0 gets slope
    sign(0) = 0, torch's convention.
"""
import numpy as np

from ..core.autograd import Function, Tensor, as_array
from ..core.backend import get_array_module
from .activation import log_softmax_array

REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(name, reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: unknown reduction {reduction!r}; use one of {', '.join(map(repr, REDUCTIONS))}")


def _reduce(loss, reduction, count):
    """Reduce per-element losses; 'mean' divides by ``count`` (NaN when it is 0, as torch)."""
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    # a count of 0 leaves a total of 0: 0/0 is NaN, computed, not tested, so that a count kept on
    # the device (cross_entropy's total weight) is never read on the host
    with np.errstate(divide="ignore", invalid="ignore"):
        return total / count


def _reduction_grad(g, shape, reduction, count):
    """dL/dl for per-element losses of ``shape``, given dL/d(reduced loss) = g."""
    if reduction == "none":
        return g
    if reduction == "mean":
        with np.errstate(divide="ignore", invalid="ignore"):
            g = get_array_module(g).where(count != 0, g / count, float("nan"))
    return get_array_module(g).broadcast_to(g, shape)


class CrossEntropy(Function):
    """Softmax cross entropy of logits (N, C) with integer targets, weights, ignore_index, smoothing."""

    def forward(self, x, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        xp = get_array_module(x)
        n, c = x.shape
        logp = log_softmax_array(x, axis=1)
        keep = target != ignore_index
        safe_target = xp.where(keep, target, 0)  # any valid index for ignored rows; their weight is 0
        w = xp.ones(c, dtype=x.dtype) if weight is None else weight
        w_t = w[safe_target] * keep
        loss = -logp[xp.arange(n), safe_target] * w_t
        if label_smoothing:
            loss = (1 - label_smoothing) * loss - (label_smoothing / c) * (logp * w).sum(axis=1) * keep
        self.p, self.target, self.keep, self.w, self.w_t = xp.exp(logp), safe_target, keep, w, w_t
        self.reduction, self.smoothing = reduction, label_smoothing
        self.count = w_t.sum()  # D: 'mean' normalises by the total weight of the kept samples (kept on the device)
        return _reduce(loss, reduction, self.count)

    def backward(self, g):
        xp = get_array_module(g)
        n, c = self.p.shape
        # dL/dl_n, zero for ignored samples (even when D = 0 makes the mean NaN, as torch)
        coef = xp.where(self.keep, _reduction_grad(g, (n,), self.reduction, self.count), 0)[:, None]
        onehot = xp.zeros_like(self.p)
        onehot[xp.arange(n), self.target] = 1
        dx = (1 - self.smoothing) * self.w_t[:, None] * (self.p - onehot)
        if self.smoothing:
            dx = dx + (self.smoothing / c) * (self.p * self.w.sum() - self.w)
        return coef * dx, None


class BinaryCrossEntropyWithLogits(Function):
    """Sigmoid + binary cross entropy in one stable step; gradients for input and target."""

    def forward(self, x, target, weight=None, pos_weight=None, reduction="mean"):
        xp = get_array_module(x)
        log_sig = xp.minimum(x, 0) - xp.log1p(xp.exp(-abs(x)))
        pos_factor = 1 if pos_weight is None else 1 + (pos_weight - 1) * target
        loss = (1 - target) * x - pos_factor * log_sig
        if weight is not None:
            loss = loss * weight
        self.saved = (x, target, weight, pos_weight, log_sig, pos_factor)
        self.reduction = reduction
        return _reduce(loss, reduction, x.size)

    def backward(self, g):
        xp = get_array_module(g)
        x, t, w, q, log_sig, pos_factor = self.saved
        dl = _reduction_grad(g, x.shape, self.reduction, x.size)
        if w is not None:
            dl = dl * w
        dx = dt = None
        if self.needs_input_grad[0]:
            dx = dl * (pos_factor * xp.exp(log_sig) - (t if q is None else q * t))
        if self.needs_input_grad[1]:
            dt = dl * (-x if q is None else -x - (q - 1) * log_sig)
        return dx, dt


class SmoothL1(Function):
    """Huber-like loss: quadratic below beta, linear above; gradients for input and target."""

    def forward(self, x, target, reduction="mean", beta=1.0):
        xp = get_array_module(x)
        d = x - target
        ad = abs(d)
        loss = ad if beta == 0 else xp.where(ad < beta, 0.5 * d * d / beta, ad - 0.5 * beta)
        self.d, self.beta, self.reduction = d, beta, reduction
        return _reduce(loss, reduction, d.size)

    def backward(self, g):
        xp = get_array_module(g)
        d = self.d
        slope = xp.sign(d) if self.beta == 0 else xp.clip(d / self.beta, -1, 1)
        dx = _reduction_grad(g, d.shape, self.reduction, d.size) * slope
        return (dx if self.needs_input_grad[0] else None,
                -dx if self.needs_input_grad[1] else None)


def _check_same_shape(name, input, target):
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(f"{name}: target shape {tuple(target.shape)} must equal input shape {tuple(input.shape)}")


def _in_dtype_of(name, key, v, input):
    """``v`` in the input's dtype: constants are converted, a tensor that needs a gradient must match."""
    if v is None or v.dtype == input.dtype:
        return v
    if isinstance(v, Tensor) and v.requires_grad:
        raise TypeError(f"{name}: {key} dtype {v.dtype} differs from input dtype {input.dtype}; "
                        f"convert one of them with .astype so that both match")
    return as_array(v).astype(input.dtype)


def _constant(name, key, v, input):
    """A weight argument as a plain array in the input's dtype; as in torch, it gets no gradient."""
    if v is None:
        return None
    if isinstance(v, Tensor) and v.requires_grad:
        raise ValueError(f"{name}: {key} gets no gradient (as in torch); pass it as a constant (.detach())")
    return as_array(v).astype(input.dtype, copy=False)


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """torch.nn.functional.cross_entropy for logits (N, C) and integer class targets (N,).

    ``weight`` (C,) are constant class weights; targets equal to ``ignore_index`` count for
    nothing; ``label_smoothing`` in [0, 1] mixes in the uniform distribution over classes.
    """
    _check_reduction("cross_entropy", reduction)
    if input.ndim != 2:
        raise ValueError(f"cross_entropy: input must be logits of shape (N, C), got shape {tuple(input.shape)}")
    n, c = input.shape
    target = as_array(target)
    if target.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: target must hold integer class indices, got dtype {target.dtype}; "
                        f"convert with .astype(np.int64)")
    if tuple(target.shape) != (n,):
        raise ValueError(f"cross_entropy: target shape {tuple(target.shape)} must be (N,) = ({n},) "
                         f"for input of shape {tuple(input.shape)}")
    bad = ((target < 0) | (target >= c)) & (target != ignore_index)
    if bool(bad.any()):
        raise ValueError(f"cross_entropy: target value {int(target[bad][0])} is out of range for {c} classes "
                         f"(use 0..{c - 1}, or ignore_index={ignore_index} to skip a sample)")
    weight = _constant("cross_entropy", "weight", weight, input)
    if weight is not None and tuple(weight.shape) != (c,):
        raise ValueError(f"cross_entropy: weight must have shape ({c},), one per class, "
                         f"got shape {tuple(weight.shape)}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    return CrossEntropy.apply(input, target, weight=weight, ignore_index=ignore_index,
                              reduction=reduction, label_smoothing=float(label_smoothing))


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):
    """torch.nn.functional.binary_cross_entropy_with_logits: sigmoid and BCE in one stable step.

    ``target`` has the input's shape (probabilities in [0, 1]); ``weight`` and ``pos_weight``
    (the weight of positive targets, typically one per class along the last axis) broadcast
    against it.
    """
    name = "binary_cross_entropy_with_logits"
    _check_reduction(name, reduction)
    _check_same_shape(name, input, target)
    target = _in_dtype_of(name, "target", target, input)
    weight = _constant(name, "weight", weight, input)
    pos_weight = _constant(name, "pos_weight", pos_weight, input)
    for key, v in (("weight", weight), ("pos_weight", pos_weight)):
        if v is None:
            continue
        try:
            ok = np.broadcast_shapes(tuple(v.shape), tuple(input.shape)) == tuple(input.shape)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{name}: {key} shape {tuple(v.shape)} does not broadcast "
                             f"to the input shape {tuple(input.shape)}")
    return BinaryCrossEntropyWithLogits.apply(input, target, weight=weight, pos_weight=pos_weight,
                                              reduction=reduction)


def smooth_l1_loss(input, target, reduction="mean", beta=1.0):
    """torch.nn.functional.smooth_l1_loss; beta = 0 is the L1 loss."""
    _check_reduction("smooth_l1_loss", reduction)
    _check_same_shape("smooth_l1_loss", input, target)
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be >= 0, got {beta}")
    target = _in_dtype_of("smooth_l1_loss", "target", target, input)
    return SmoothL1.apply(input, target, reduction=reduction, beta=float(beta))
