"""Stochastic gradient descent and AdamW with torch.optim's exact updates, and gradient clipping
(the learning-rate schedules are in ``lr_scheduler.py``).

SGD, for each parameter p with gradient g, at learning rate lr (torch's order of operations):

    g   <- g + weight_decay * p                       (L2 penalty, added to the gradient)
    buf <- g                                          (first step: the buffer starts at g)
    buf <- momentum * buf + (1 - dampening) * g       (every later step)
    g   <- g + momentum * buf   if nesterov   else   buf
    p   <- p - lr * g

AdamW (Loshchilov & Hutter), torch.optim.AdamW's update at step t = 1, 2, ...:

    p   <- p * (1 - lr * weight_decay)                (decay decoupled from the gradient)
    m   <- beta1 * m + (1 - beta1) * g                (first moment, starts at 0)
    v   <- beta2 * v + (1 - beta2) * g * g            (second moment, starts at 0)
    p   <- p - lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)

Each weight moves by about lr whatever its gradient's scale, which is what a network trained
from scratch needs: with SGD a layer of large fan-in fed by large activations (the box head's
fc6 on unnormalised FPN features) takes steps hundreds of times larger than a 3x3 conv's.
"""
import copy
import math

import numpy as np

from ..core.autograd import Tensor
from ..core.backend import get_array_module, to_device, device_of
from ..functional.dispatch import kernel_for, twin_of


class Optimizer:
    """Parameter groups and per-parameter state, as torch.optim.Optimizer.

    ``params`` is an iterable of Tensors, or of dicts ``{"params": [...], "lr": ...}`` whose
    other keys override ``defaults`` for that group (e.g. a smaller lr for the backbone).
    """

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.state = {}  # Parameter -> dict of arrays (e.g. momentum_buffer)
        self.param_groups = []
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list: pass model.parameters() of a model with parameters")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group):
        """Add a group: ``{"params": [...], **hyperparameters}``; missing ones come from defaults."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"a parameter group must be a dict with a 'params' key, got {group!r:.80}")
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizers take Tensors (Parameters), got {type(p).__name__}")
        taken = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in params}) != len(params) or taken & {id(p) for p in params}:
            raise ValueError("a parameter appears twice in the optimizer's groups: each may belong to one group once")
        unknown = set(group) - set(self.defaults) - {"params", "initial_lr"}
        if unknown:
            raise ValueError(f"unknown hyperparameters {sorted(unknown)} in a parameter group; "
                             f"{type(self).__name__} takes {sorted(self.defaults)}")
        self.param_groups.append({**self.defaults, **group, "params": params})

    def zero_grad(self, set_to_none=True):
        """Forget the gradients of every parameter (set to None, or zero them in place)."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none or p.grad is None:
                    p.grad = None
                else:
                    p.grad[...] = 0

    def state_dict(self):
        """``{"state": {index: {name: array}}, "param_groups": [{hyperparameters, "params": [indices]}]}``
        with parameters numbered across groups in order, torch's layout. Arrays are the
        optimizer's own (no copy)."""
        index = {}
        groups = []
        for group in self.param_groups:
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": [index[id(p)] for p in group["params"]]})
        state = {index[id(p)]: dict(s) for p, s in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyperparameters and per-parameter state saved by ``state_dict``, copied and
        converted to each parameter's dtype and device; the groups must have the same sizes."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"the state has {len(saved_groups)} parameter groups, the optimizer "
                             f"{len(self.param_groups)}: build the optimizer as the saved one was built")
        sizes = [len(g["params"]) for g in saved_groups], [len(g["params"]) for g in self.param_groups]
        if sizes[0] != sizes[1]:
            raise ValueError(f"parameter group sizes differ: state {sizes[0]}, optimizer {sizes[1]}")
        by_index = {}
        for saved, group in zip(saved_groups, self.param_groups):
            by_index.update(zip(saved["params"], group["params"]))
        self.state = {}
        for i, entries in state_dict["state"].items():
            p = by_index[int(i)]
            # astype copies: the loaded state must not share memory with the dict it came from
            self.state[p] = {k: to_device(v, device_of(p.data)).astype(p.dtype) if hasattr(v, "shape")
                             else copy.deepcopy(v) for k, v in entries.items()}
        for saved, group in zip(saved_groups, self.param_groups):
            group.update({k: copy.deepcopy(v) for k, v in saved.items() if k != "params"})

    def step(self, closure=None):
        """One update of every parameter that has a gradient; ``closure`` (optional)
        re-evaluates and returns the loss."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p, group):
        raise NotImplementedError


class SGD(Optimizer):
    """torch.optim.SGD: plain, momentum, dampened or Nesterov steps with L2 weight decay (see
    the module docstring for the update)."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}: must be >= 0")
        if momentum < 0:
            raise ValueError(f"invalid momentum {momentum}: must be >= 0")
        if weight_decay < 0:
            raise ValueError(f"invalid weight_decay {weight_decay}: must be >= 0")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _update(self, p, group):
        g = p.grad
        if group["weight_decay"] != 0:
            g = g + group["weight_decay"] * p.data
        momentum = group["momentum"]
        if momentum != 0:
            state = self.state.setdefault(p, {})
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()  # a copy: g may be p.grad itself
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * g
            g = g + momentum * buf if group["nesterov"] else buf
        p.data -= group["lr"] * g  # in place: state_dict arrays and views stay this parameter's


class AdamW(Optimizer):
    """torch.optim.AdamW (no amsgrad): Adam's moment estimates with decoupled weight decay (see
    the module docstring for the update). State per parameter: ``step``, ``exp_avg``,
    ``exp_avg_sq``, torch's names, so torch's state_dict loads."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}: must be >= 0")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid betas {betas}: each must be in [0, 1)")
        if eps < 0:
            raise ValueError(f"invalid eps {eps}: must be >= 0")
        if weight_decay < 0:
            raise ValueError(f"invalid weight_decay {weight_decay}: must be >= 0")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _update(self, p, group):
        xp = get_array_module(p.data)
        g, lr = p.grad, group["lr"]
        beta1, beta2 = group["betas"]
        state = self.state.setdefault(p, {})
        if "step" not in state:
            state.update(step=0.0, exp_avg=xp.zeros_like(p.data), exp_avg_sq=xp.zeros_like(p.data))
        state["step"] = step = float(state["step"]) + 1
        arrays = (p.data, g, state["exp_avg"], state["exp_avg_sq"])
        settings = (lr, beta1, beta2, group["eps"], group["weight_decay"], step)
        if all(a.flags.c_contiguous and a.dtype == p.dtype for a in arrays):
            kernel_for("adamw_update", p.data)(*arrays, *settings)  # kernels/adamw.py: one parallel pass
        else:  # a strided view, or a gradient of another dtype: only the twin takes them
            twin_of("adamw_update")(*arrays, *settings)


# ----- gradient clipping ---------------------------------------------------------------------------


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale all gradients together so that their joint norm is at most ``max_norm``
    (torch.nn.utils.clip_grad_norm_).

    total = || (||g_1||_p, ..., ||g_n||_p) ||_p  (the p-norm of all gradients as one vector);
    every gradient is multiplied in place by min(1, max_norm / (total + 1e-6)). Returns total
    (before clipping) as a float.

    The per-gradient terms are reduced on their device into one array, and the scale stays
    there: the one host read is the returned total (on the GPU, one synchronisation, not one
    per parameter).
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    xp = get_array_module(grads[0])
    norm_type = float(norm_type)
    if norm_type == math.inf:
        terms = xp.stack([xp.abs(g).max() if g.size else xp.zeros((), g.dtype) for g in grads])
        total_array = terms.astype(np.float64).max()
    else:
        terms = xp.stack([xp.sum(powered).astype(np.float64) for powered in _powers(xp, grads, norm_type)])
        total_array = terms.sum() ** (1.0 / norm_type)
    total = float(total_array)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is {total}, so they cannot be "
                           "clipped; pass error_if_nonfinite=False to skip this check")
    if max_norm / (total + 1e-6) >= 1.0:
        # the scale would be exactly 1 (the same float64 sum on the host): multiplying every
        # gradient by it would change nothing and cost a pass over all of them
        return total
    scale = xp.minimum(max_norm / (total_array + 1e-6), 1.0)
    for g in grads:
        g *= scale.astype(g.dtype)
    return total


def _powers(xp, grads, norm_type):
    """|g|^p of each gradient in turn, each written over the last in one scratch array per
    dtype (a fresh array per gradient would be page-faulted in anew each time); |g|^2 is g^2,
    one pass instead of two."""
    scratch = {}
    for g in grads:
        if g.dtype not in scratch:
            scratch[g.dtype] = xp.empty(max(h.size for h in grads if h.dtype == g.dtype), g.dtype)
        out = scratch[g.dtype][:g.size].reshape(g.shape)
        if norm_type == 2.0:
            yield xp.square(g, out=out)
        else:
            yield xp.power(xp.abs(g, out=out), norm_type, out=out)
