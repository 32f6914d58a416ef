"""Winograd's minimal filtering F(2x2, 3x3): a 3x3 stride-1 convolution in 16 products of
(Cout, C) by (C, tiles) matrices instead of 9 of (Cout, C) by (C, positions).

Cut the output into 2x2 tiles. Output tile (i, j) of a 3x3 convolution with padding (ph, pw)
reads the 4x4 input patch d whose top-left pixel is (2i - ph, 2j - pw). Lavin and Gray (2015,
"Fast algorithms for convolutional neural networks") write the 2x2 result of correlating d with
one 3x3 kernel g as

    Y = A^T [ (G g G^T) * (B^T d B) ] A        (* elementwise on 4x4 matrices)

    B^T = [1  0 -1  0]    G = [ 1    0    0 ]    A^T = [1  1  1  0]
          [0  1  1  0]        [1/2  1/2  1/2]          [0  1 -1 -1]
          [0 -1  1  0]        [1/2 -1/2  1/2]
          [0  1  0 -1]        [ 0    0    1 ]

In one dimension: the two outputs y0 = d0 g0 + d1 g1 + d2 g2 and y1 = d1 g0 + d2 g1 + d3 g2
come out of four products m_k = (B^T d)_k (G g)_k as y0 = m0 + m1 + m2, y1 = m1 - m2 - m3
(expand them to check); the 2-D form nests the 1-D one along rows and columns. Summing over
input channels c before the output transform, which is linear, gives for each of the 16 entries
(a, b) of the 4x4 matrices one matrix product:

    U[ab] = (G g G^T)[ab]   (Cout, C)       the weight, transformed once per call
    V[ab] = (B^T d B)[ab]   (C, tiles)      every input patch, transformed
    M[ab] = U[ab] V[ab]     (Cout, tiles)   16 products of BLAS
    y tile = A^T M A                        the output transform

16 multiplications per tile and channel pair instead of the 36 of 4 outputs x 9 taps: 2.25x
fewer operations, for the price of the two transforms (a few additions per element, memory
bound).

Backward. All four steps are linear, so the gradient runs their adjoints in reverse:

    dM[ab] = (A dY A^T)[ab]          ``winograd_output_adjoint`` (dY the 2x2 tile of dL/dy)
    dU[ab] = sum over tiles of dM[ab] V[ab]^T,  dL/dg = sum_ab G^T dU[ab] G   (weight gradient)

and dL/dx, the full correlation of dL/dy with the flipped kernel, is itself a 3x3 stride-1
convolution (padding 2 - p), done by the forward path (see tinymaskrcnn/functional/conv.py).

Layout: V and M are (16, channels, columns), entry ab = 4a + b, column
((n - n0) * (r1 - r0) + (i - r0)) * Tw + j for tile (i, j) of image n, over images [n0, n1) and
tile rows [r0, r1); Tw = ceil(Wo / 2) tiles per row. The last tile row or column may stick out
of the output (odd Ho or Wo): its extra outputs are dropped, and its patch reads zeros past the
input like the padding does.

Each kernel comes twice, a NumPy version (suffix ``_twin``) that states the transform as
matrices, and a single-threaded Numba kernel (``nogil``: the conv op runs one per core, on its
own bands, as it does im2col) with the same results.

Accuracy: in float32 the algorithm's error is of the order of im2col's (docs/benchmarks.md); the
products add transformed values larger than the inputs, and the output transform's sums
partly cancel. Transforming in float64 did not change that (the products dominate).
"""
import numpy as np
from numba import njit

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)


def tile_grid(ho, wo):
    """(Th, Tw): the 2x2 output tiles covering an Ho x Wo output."""
    return -(-ho // 2), -(-wo // 2)


# ----- the weight -----------------------------------------------------------------------------


def weight_transform_twin(weight):
    """U (16, Cout, C) = G g G^T of every (Cout, C, 3, 3) kernel, entry ab = 4a + b.

    As one matrix product: entry ab of G g G^T is sum_ij G[a, i] G[b, j] g[i, j], so the
    16 x 9 matrix kron(G, G) maps every flattened kernel to its 16 entries.
    """
    g2 = np.kron(G, G).astype(weight.dtype)
    return (g2 @ weight.reshape(-1, 9).T).reshape(16, *weight.shape[:2])


def weight_transform_adjoint_twin(du):
    """dL/dg (Cout, C, 3, 3) = sum_ab G^T dU[ab] G: the adjoint of ``weight_transform``."""
    g2 = np.kron(G, G).astype(du.dtype)
    return (du.reshape(16, -1).T @ g2).reshape(*du.shape[1:], 3, 3)


# ----- NumPy twins ---------------------------------------------------------------------------


def _patches(x, ph, pw, n0, n1, r0, r1, tw):
    """d[n, c, i, j] (4x4) for images [n0, n1), tile rows [r0, r1), all Tw tile columns: a
    zero-padded copy of the rows they read, seen through a strided view."""
    n, c, h, w = x.shape
    top = 2 * r0 - ph  # input row of padded[..., 0, :]; input column -pw is padded[..., 0]
    padded = np.zeros((n1 - n0, c, 2 * (r1 - r0) + 2, 2 * tw + 2), x.dtype)
    y0, y1 = max(top, 0), min(h, top + padded.shape[2])
    x1 = min(w, padded.shape[3] - pw)
    if y1 > y0:
        padded[:, :, y0 - top:y1 - top, pw:pw + x1] = x[n0:n1, :, y0:y1, :x1]
    s = padded.strides
    return np.lib.stride_tricks.as_strided(
        padded, (n1 - n0, c, r1 - r0, tw, 4, 4), (s[0], s[1], 2 * s[2], 2 * s[3], s[2], s[3]), writeable=False)


def winograd_input_twin(x, ph, pw, n0, n1, r0, r1, tw, out=None):
    """V (16, C, columns) = B^T d B of the 4x4 input patch of every tile: x (N, C, H, W)."""
    b_t = B_T.astype(x.dtype)
    v = np.einsum("ka,ncijab,lb->klcnij", b_t, _patches(x, ph, pw, n0, n1, r0, r1, tw), b_t, optimize=True)
    v = v.reshape(16, x.shape[1], -1)
    if out is None:
        return np.ascontiguousarray(v)
    out[...] = v
    return out


def winograd_output_twin(m, y, n0, n1, r0, r1, bias=None):
    """Writes A^T M A of every tile into y (N, Cout, Ho, Wo), dropping what sticks out, plus
    ``bias`` (Cout,) if given."""
    cout, ho, wo = y.shape[1:]
    tw = tile_grid(ho, wo)[1]
    a_t = A_T.astype(m.dtype)
    m = m.reshape(4, 4, cout, n1 - n0, r1 - r0, tw)
    tiles = np.einsum("ra,abcnij,sb->ncirjs", a_t, m, a_t, optimize=True)  # (n, c, i, 2, j, 2)
    tiles = tiles.reshape(n1 - n0, cout, 2 * (r1 - r0), 2 * tw)
    if bias is not None:
        tiles += bias.reshape(1, -1, 1, 1)
    rows = min(ho, 2 * r1) - 2 * r0
    y[n0:n1, :, 2 * r0:2 * r0 + rows] = tiles[:, :, :rows, :wo]
    return y


def winograd_output_adjoint_twin(dy, n0, n1, r0, r1, out=None):
    """dM (16, Cout, columns) = A dY A^T of every 2x2 tile of dy (N, Cout, Ho, Wo), reading
    zeros where a tile sticks out: the adjoint of ``winograd_output`` (without the bias)."""
    cout, ho, wo = dy.shape[1:]
    tw = tile_grid(ho, wo)[1]
    rows = min(ho, 2 * r1) - 2 * r0
    tiles = np.zeros((n1 - n0, cout, 2 * (r1 - r0), 2 * tw), dy.dtype)
    tiles[:, :, :rows, :wo] = dy[n0:n1, :, 2 * r0:2 * r0 + rows]
    tiles = tiles.reshape(n1 - n0, cout, r1 - r0, 2, tw, 2)
    a_t = A_T.astype(dy.dtype)
    dm = np.einsum("ra,ncirjs,sb->abcnij", a_t, tiles, a_t, optimize=True).reshape(16, cout, -1)
    if out is None:
        return np.ascontiguousarray(dm)
    out[...] = dm
    return out


# ----- Numba kernels -------------------------------------------------------------------------


@njit(inline="always")
def _b_t(d0, d1, d2, d3):
    """B^T (d0, d1, d2, d3), one direction of the input transform."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


@njit(inline="always")
def _a_t(m0, m1, m2, m3):
    """A^T (m0, m1, m2, m3), one direction of the output transform."""
    return m0 + m1 + m2, m1 - m2 - m3


@njit(inline="always")
def _a(g0, g1):
    """A (g0, g1), one direction of the output transform's adjoint."""
    return g0, g0 + g1, g0 - g1, -g1


@njit(inline="always")
def _pixel(plane, y, x, h, w):
    """plane[y, x], 0 outside the plane."""
    if 0 <= y < h and 0 <= x < w:
        return plane[y, x]
    return plane.dtype.type(0)


@njit(inline="always")
def _is_piece_matrix(a, channels, images, rows, tw):
    """Whether ``a`` is (16, channels, columns) for a piece of ``images`` x ``rows`` tile rows."""
    return a.shape[0] == 16 and a.shape[1] == channels and a.shape[2] == images * rows * tw


@njit(inline="always")
def _stage_column(stage, b, j, values):
    """Entries (0, b), (1, b), (2, b), (3, b) of a tile's 4x4 result into column j of the
    staging block (entry ab is row 4a + b)."""
    stage[b, j], stage[4 + b, j], stage[8 + b, j], stage[12 + b, j] = values


@njit(inline="always")
def _flush(stage, out, c, base):
    """The staging block's 16 rows into out[k, c, base:base + Tw], one contiguous run each."""
    tw = stage.shape[1]
    for k in range(16):
        dst = out[k, c, base:base + tw]
        for j in range(tw):
            dst[j] = stage[k, j]


@njit(nogil=True, cache=True)
def winograd_input(x, ph, pw, n0, n1, r0, r1, tw, out=None):
    """V (16, C, columns) = B^T d B of the 4x4 input patch of every tile: x (N, C, H, W).

    Numba: a row of tiles at a time, into a small staging block (16, Tw) that stays in the L1
    cache, then copied out as 16 contiguous runs: writing the 16 entries of each tile straight
    to their 16 far-apart rows of V was slower (more streams than the core tracks). Within
    a tile, the row transform of each of the patch's rows as it is read (patches inside the
    image skip the bounds tests), then the column transform.
    """
    _, c_in, h, w = x.shape
    rows = r1 - r0
    v = np.empty((16, c_in, (n1 - n0) * rows * tw), x.dtype) if out is None else out
    if not _is_piece_matrix(v, c_in, n1 - n0, rows, tw):
        raise ValueError("winograd_input: out must have shape (16, C, (n1 - n0) * (r1 - r0) * Tw)")
    t = np.empty((4, 4), x.dtype)
    stage = np.empty((16, tw), x.dtype)
    for n in range(n0, n1):
        for c in range(c_in):
            plane = x[n, c]
            for i in range(r0, r1):
                top = 2 * i - ph
                for j in range(tw):
                    left = 2 * j - pw
                    inside = top >= 0 and top + 4 <= h and left >= 0 and left + 4 <= w
                    for a in range(4):
                        if inside:
                            row = plane[top + a]
                            t[a, 0], t[a, 1], t[a, 2], t[a, 3] = _b_t(row[left], row[left + 1], row[left + 2],
                                                                      row[left + 3])
                        else:
                            t[a, 0], t[a, 1], t[a, 2], t[a, 3] = _b_t(
                                _pixel(plane, top + a, left, h, w), _pixel(plane, top + a, left + 1, h, w),
                                _pixel(plane, top + a, left + 2, h, w), _pixel(plane, top + a, left + 3, h, w))
                    for b in range(4):
                        _stage_column(stage, b, j, _b_t(t[0, b], t[1, b], t[2, b], t[3, b]))
                _flush(stage, v, c, ((n - n0) * rows + i - r0) * tw)
    return v


@njit(nogil=True, cache=True)
def winograd_output(m, y, n0, n1, r0, r1, bias=None):
    """Writes A^T M A of every tile into y (N, Cout, Ho, Wo), dropping what sticks out, plus
    ``bias`` (Cout,) if given.

    Numba: a row of tiles at a time, its 16 runs of M first copied into a staging block (as in
    ``winograd_input``); per tile the column transform (two rows of four), then the row
    transform, four stores.
    """
    _, cout, ho, wo = y.shape
    tw = (wo + 1) // 2
    rows = r1 - r0
    if not _is_piece_matrix(m, cout, n1 - n0, rows, tw):
        raise ValueError("winograd_output: m must have shape (16, Cout, (n1 - n0) * (r1 - r0) * Tw)")
    s = np.empty((2, 4), m.dtype)
    stage = np.empty((16, tw), m.dtype)
    for n in range(n0, n1):
        for c in range(cout):
            shift = m.dtype.type(0) if bias is None else bias[c]
            plane = y[n, c]
            for i in range(r0, r1):
                base = ((n - n0) * rows + i - r0) * tw
                for k in range(16):
                    src = m[k, c, base:base + tw]
                    for j in range(tw):
                        stage[k, j] = src[j]
                top = 2 * i
                for j in range(tw):
                    for b in range(4):
                        s[0, b], s[1, b] = _a_t(stage[b, j], stage[4 + b, j], stage[8 + b, j], stage[12 + b, j])
                    left = 2 * j
                    for r in range(2):
                        if top + r < ho:
                            o0, o1 = _a_t(s[r, 0], s[r, 1], s[r, 2], s[r, 3])
                            plane[top + r, left] = o0 + shift
                            if left + 1 < wo:
                                plane[top + r, left + 1] = o1 + shift
    return y


@njit(nogil=True, cache=True)
def winograd_output_adjoint(dy, n0, n1, r0, r1, out=None):
    """dM (16, Cout, columns) = A dY A^T of every 2x2 tile of dy (N, Cout, Ho, Wo), reading
    zeros where a tile sticks out: the adjoint of ``winograd_output`` (without the bias).

    Numba: a row of tiles at a time through a staging block (as in ``winograd_input``); per
    tile the row transform of its two rows, then the column transform.
    """
    _, cout, ho, wo = dy.shape
    tw = (wo + 1) // 2
    rows = r1 - r0
    dm = np.empty((16, cout, (n1 - n0) * rows * tw), dy.dtype) if out is None else out
    if not _is_piece_matrix(dm, cout, n1 - n0, rows, tw):
        raise ValueError("winograd_output_adjoint: out must have shape (16, Cout, (n1 - n0) * (r1 - r0) * Tw)")
    t = np.empty((2, 4), dy.dtype)
    stage = np.empty((16, tw), dy.dtype)
    zero = dy.dtype.type(0)
    for n in range(n0, n1):
        for c in range(cout):
            plane = dy[n, c]
            for i in range(r0, r1):
                top = 2 * i
                for j in range(tw):
                    left = 2 * j
                    for r in range(2):
                        g0 = g1 = zero
                        if top + r < ho:
                            g0 = plane[top + r, left]
                            if left + 1 < wo:
                                g1 = plane[top + r, left + 1]
                        t[r, 0], t[r, 1], t[r, 2], t[r, 3] = _a(g0, g1)
                    for b in range(4):
                        _stage_column(stage, b, j, _a(t[0, b], t[1, b]))
                _flush(stage, dm, c, ((n - n0) * rows + i - r0) * tw)
    return dm


@njit(inline="always")
def _g(g0, g1, g2):
    """G (g0, g1, g2), one direction of the weight transform."""
    return g0, (g0 + g1 + g2) * 0.5, (g0 - g1 + g2) * 0.5, g2


@njit(inline="always")
def _g_t(d0, d1, d2, d3):
    """G^T (d0, d1, d2, d3), one direction of the weight transform's adjoint."""
    return d0 + (d1 + d2) * 0.5, (d1 - d2) * 0.5, (d1 + d2) * 0.5 + d3


@njit(nogil=True, cache=True)
def weight_transform(weight):
    """U (16, Cout, C) = G g G^T of every (Cout, C, 3, 3) kernel, entry ab = 4a + b.

    Numba rather than the twin's matrix product: a multi-threaded BLAS call here would leave
    OpenBLAS's threads spinning on the cores the conv's workers are about to use, slowing
    them down. One output channel at a time
    through a staging block, as in ``winograd_input``.
    """
    cout, c_in = weight.shape[0], weight.shape[1]
    u = np.empty((16, cout, c_in), weight.dtype)
    t = np.empty((4, 3), weight.dtype)
    stage = np.empty((16, c_in), weight.dtype)
    for o in range(cout):
        for c in range(c_in):
            g = weight[o, c]
            for j in range(3):
                t[0, j], t[1, j], t[2, j], t[3, j] = _g(g[0, j], g[1, j], g[2, j])
            for a in range(4):
                stage[4 * a, c], stage[4 * a + 1, c], stage[4 * a + 2, c], stage[4 * a + 3, c] = _g(
                    t[a, 0], t[a, 1], t[a, 2])
        for k in range(16):
            u[k, o] = stage[k]
    return u


@njit(nogil=True, cache=True)
def weight_transform_adjoint(du):
    """dL/dg (Cout, C, 3, 3) = sum_ab G^T dU[ab] G: the adjoint of ``weight_transform``."""
    cout, c_in = du.shape[1], du.shape[2]
    dg = np.empty((cout, c_in, 3, 3), du.dtype)
    t = np.empty((4, 3), du.dtype)
    for o in range(cout):
        for c in range(c_in):
            for a in range(4):
                t[a, 0], t[a, 1], t[a, 2] = _g_t(du[4 * a, o, c], du[4 * a + 1, o, c], du[4 * a + 2, o, c],
                                                 du[4 * a + 3, o, c])
            for j in range(3):
                dg[o, c, 0, j], dg[o, c, 1, j], dg[o, c, 2, j] = _g_t(t[0, j], t[1, j], t[2, j], t[3, j])
    return dg
