"""AdamW's update of one parameter in one pass: the NumPy twin and the Numba kernel.

The update (torch.optim.AdamW, see ``tinymaskrcnn.optim``) written with NumPy operators walks
the parameter, its gradient and two moment buffers about a dozen times and makes as many
temporaries, a noticeable share of a training step on the CPU (docs/benchmarks.md). The
kernel reads each element once, parallel over elements. ``step`` is the step number after
this update (1 on the first), ``p``, ``g``, ``m``, ``v`` arrays of one shape and
dtype, C-contiguous for the kernel; ``p``, ``m`` and ``v`` are updated in place.
"""
import math

from numba import njit, prange

from . import array_module


def adamw_update_twin(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """The NumPy twin, torch's order of operations; array code, so it runs on CuPy arrays too."""
    xp = array_module(p)
    p *= 1 - lr * weight_decay
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * (g * g)
    denom = xp.sqrt(v) / math.sqrt(1 - beta2 ** step) + eps
    p -= (lr / (1 - beta1 ** step)) * (m / denom)


@njit(parallel=True, cache=True)
def adamw_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """The Numba kernel (scalars in float64, each element's result rounded to p's dtype)."""
    decay = 1.0 - lr * weight_decay
    step_size = lr / (1.0 - beta1 ** step)
    root_correction = math.sqrt(1.0 - beta2 ** step)
    # one statement each: with one tuple assignment Numba 0.68 gave wrong moments (test_optim)
    p1 = p.reshape(-1)
    g1 = g.reshape(-1)
    m1 = m.reshape(-1)
    v1 = v.reshape(-1)
    for i in prange(p1.size):
        gi = g1[i]
        mi = beta1 * m1[i] + (1.0 - beta1) * gi
        vi = beta2 * v1[i] + (1.0 - beta2) * (gi * gi)
        m1[i] = mi
        v1[i] = vi
        p1[i] = p1[i] * decay - step_size * (mi / (math.sqrt(vi) / root_correction + eps))
