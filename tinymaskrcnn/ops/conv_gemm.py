"""Convolution on the GPU: im2col (a Numba-CUDA kernel) and one batched matrix product (cuBLAS).

With cols = im2col(x) of shape (N, Cin*kh*kw, Ho*Wo) (``kernels/cuda/im2col.py``) and the
weight seen as a (Cout, Cin*kh*kw) matrix, the three products of a convolution are

    forward        Y_n   = W cols_n                          (N, Cout, Ho*Wo)
    input grad     dx    = col2im(W^T dY_n)                  col2im the adjoint of im2col
    weight grad    dW    = sum_n dY_n cols_n^T

For ``groups`` > 1 the channels split into G independent convolutions: cols rows and W rows are
already grouped contiguously, so a reshape to (N, G, ., .) and (G, ., .) makes each product one
batched GEMM (``xp.matmul`` broadcasts over N and G: cuBLAS's strided-batched product on CuPy).

The CPU path (``conv.py``: phase images, bands and Winograd, scheduled for a few cores) computes
the same three functions; ``conv.py`` sends CUDA arrays here. The signatures are its own.
"""
from ..backend import get_array_module


def _kernels():
    from ..kernels.cuda import im2col as kernels
    return kernels


def _geometry(geom):
    return (geom.kh, geom.kw), (geom.sh, geom.sw), (geom.ph, geom.pw), (geom.dh, geom.dw)


def correlate(x, weight, geom, groups):
    """y (N, Cout, Ho, Wo) = the cross-correlation of x (N, Cin, H, W) with weight (Cout, Cin/G, kh, kw)."""
    n, cout = x.shape[0], weight.shape[0]
    ho, wo = geom.output_hw(*x.shape[2:])
    cols = _kernels().im2col(x, *_geometry(geom))
    cols = cols.reshape(n, groups, -1, ho * wo)
    y = get_array_module(x).matmul(weight.reshape(groups, cout // groups, -1), cols)
    return y.reshape(n, cout, ho, wo)


def correlate_transpose(g, weight, geom, groups, in_chw):
    """The adjoint of ``correlate`` in x: dx (N, *in_chw) from g = dL/dy (N, Cout, Ho, Wo)."""
    n, cout = g.shape[0], weight.shape[0]
    xp = get_array_module(g)
    w = weight.reshape(groups, cout // groups, -1)
    dcols = xp.matmul(w.transpose(0, 2, 1), g.reshape(n, groups, cout // groups, -1))
    return _kernels().col2im(dcols.reshape(n, -1, dcols.shape[-1]), (n, *in_chw), *_geometry(geom))


def weight_grad(g, x, geom, groups):
    """dL/dW (Cout, Cin/G, kh, kw) = sum over images of dY_n cols_n^T."""
    n, cout = g.shape[0], g.shape[1]
    xp = get_array_module(g)
    cols = _kernels().im2col(x, *_geometry(geom)).reshape(n, groups, -1, g.shape[2] * g.shape[3])
    dw = xp.matmul(g.reshape(n, groups, cout // groups, -1), cols.transpose(0, 1, 3, 2)).sum(axis=0)
    return dw.reshape(cout, x.shape[1] // groups, geom.kh, geom.kw)
