"""AdamW's update of one parameter on the GPU: one fused elementwise kernel (twin: ``kernels/adamw.py``).

Written with array operators, the update (``adamw_update_twin``) is about a dozen passes over
the parameter, its gradient and the two moments, each a kernel launch with a temporary; this
kernel reads p, g, m and v once and writes p, m and v once. The arithmetic is the CPU kernel's,
in the parameter's dtype: the scalars (decay 1 - lr·wd, the step size lr / (1 - beta1^t) and the
root of the second bias correction 1 - beta2^t) are formed on the host in float64 and handed
over in that dtype, so a float32 parameter is updated in float32 arithmetic.
"""
import math

from numba import cuda

from . import launch


@cuda.jit
def adamw_kernel(p, g, m, v, beta1, beta2, eps, decay, step_size, root_correction):
    """Thread layout: one thread per element of the flattened parameter, grid-stride."""
    one = p.dtype.type(1)
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        gi = g[i]
        mi = beta1 * m[i] + (one - beta1) * gi
        vi = beta2 * v[i] + (one - beta2) * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] = p[i] * decay - step_size * (mi / (math.sqrt(vi) / root_correction + eps))


def adamw_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """The arguments and in-place update of the CPU kernel (``kernels/adamw.py``); p, g, m, v
    C-contiguous arrays of one dtype."""
    T = p.dtype.type
    flat = [a.reshape(-1) for a in (p, g, m, v)]  # views: C-contiguous arrays reshape without a copy
    launch(adamw_kernel, p.size, *flat, T(beta1), T(beta2), T(eps), T(1.0 - lr * weight_decay),
           T(lr / (1.0 - beta1 ** step)), T(math.sqrt(1.0 - beta2 ** step)))
