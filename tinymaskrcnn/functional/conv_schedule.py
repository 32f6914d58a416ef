"""How functional/conv.py's three products are computed fast: tiles, threads, Winograd's algorithm.

functional/conv.py holds the math of conv2d and conv_transpose2d and calls three products, given
here with the signatures of the textbook path (functional/conv_textbook.py):

    conv2d_forward       y = W im2col(x) + b
    conv2d_input_grad    dL/dx = col2im(W^T dY)
    conv2d_weight_grad   dL/dW = sum over images of dY im2col(x)^T

Choices made for speed and memory
---------------------------------
* im2col reads the input through its padded phase images on a wide output grid
  (kernels/im2col.py): every row of X^ is then a few long contiguous copies, several times
  faster than gathering it pixel by pixel. The wide grid has Wq >= Wo columns per output row;
  the extra columns' outputs are dropped, and their dL/dy is taken as 0 in the backward.
* The products run tile by tile: a tile is a band of output rows of one image, or several
  whole images when they are small (the mask head's RoIs). One worker thread per core takes a
  share of the tiles and, for each, fills X^ restricted to the tile's columns into its own
  reused buffer of about TILE_BYTES (1 MB) and multiplies it at once, on the same core, while
  it is in the cache (tinymaskrcnn/core/threads.py). A conv never holds more than one tile per
  thread: the full X^ of the FPN's 3x3 conv on the stride-4 level at 800x1088 would be 500 MB.
  dL/dx and dL/dW go tile by tile too: col2im adds each tile into the gradient of the phase
  images (neighbouring bands, which share rows, never at the same time), and each thread sums
  dY_tile X^_tile^T over its tiles before the threads' sums are added.
* 3x3 stride-1 convolutions (most of the multiplications of a ResNet-FPN) use Winograd's
  F(2x2, 3x3) instead of im2col (kernels/winograd.py): the input's 4x4 patches and the kernels
  are transformed so that 16 matrix products of (Cout, C) by (C, tiles) give every 2x2 output
  tile, 2.25x fewer multiplications than im2col's product. Its backward runs the transforms'
  adjoints for dL/dW, and dL/dx, a 3x3 stride-1 conv of dL/dy with the flipped kernel, goes
  through the same algorithm. Pieces of tiles are shared among the worker threads as the
  im2col tiles are.
* 1x1, stride-1, unpadded convolutions (a third of ResNet-50's) skip im2col: X^ is the image
  itself seen as a (C, H*W) matrix, and dL/dx = W^T dY needs no col2im.
* The backward recomputes X^ from x instead of caching it from the forward pass. X^ is kh*kw
  times larger than x, so caching every conv's X^ would add gigabytes to the peak memory of a
  ResNet-50-FPN training step at 800x1088, while x is kept alive by the tape anyway and im2col
  is a memory-bound copy costing a few percent of the two matrix products of the backward.
"""
import threading
from collections import namedtuple

import numpy as np

from ..core.backend import get_array_module
from ..kernels.im2col import col2im, conv_output_size, im2col, phase_grid, phase_merge, phase_split
from ..kernels.winograd import tile_grid, weight_transform, weight_transform_adjoint, winograd_input, winograd_output, winograd_output_adjoint
from ..core.threads import map_shares, num_workers


class _Geometry(namedtuple("_Geometry", "kh kw sh sw ph pw dh dw")):
    """Kernel size, stride, padding and dilation, in the order the im2col kernels take them."""

    @property
    def taps(self):
        """(kh, kw, sh, sw, dh, dw): what im2col and col2im need to find each tap's slice."""
        return self.kh, self.kw, self.sh, self.sw, self.dh, self.dw

    @property
    def pointwise(self):
        """A 1x1, stride-1, unpadded conv: the image itself is the im2col matrix."""
        return self.kh == self.kw == 1 and self.sh == self.sw == 1 and self.ph == self.pw == 0

    def output_hw(self, h, w):
        return (conv_output_size(h, self.kh, self.sh, self.ph, self.dh),
                conv_output_size(w, self.kw, self.sw, self.pw, self.dw))


# ----- the three products, shared by conv2d and conv_transpose2d -----------------------------


# The work is cut into tiles of output positions: a band of output rows of one image, or, when
# images are small (the mask head's 14x14 RoIs), several whole images. Each worker thread takes
# a share of the tiles and, for each, fills the tile's im2col matrix into its own buffer and
# multiplies it at once, on the same core, while it is still in the cache (core/threads.py). A
# tile's matrix is about TILE_BYTES (so it stays in a core's L2 cache and a conv never holds
# more than one tile per worker: the whole im2col matrix of the FPN's 3x3 conv on the stride-4
# level at 800x1088 would be 500 MB), but spans at least MIN_TILE_POSITIONS output positions,
# as BLAS slows down on narrower matrices.
TILE_BYTES = 1 << 20
MIN_TILE_POSITIONS = 256
# Handing a conv to the worker threads costs a few hundred microseconds (waking them, waiting
# for the last), so convs under PARALLEL_MIN_FLOPS (a couple of milliseconds of work) run in the
# calling thread instead, in tiles of up to SERIAL_TILE_BYTES with BLAS's own threads on the
# products: sharing out each of the many small convs of a training step on small images costs
# more than it gains (docs/benchmarks.md).
PARALLEL_MIN_FLOPS = 3e9
SERIAL_TILE_BYTES = 32 << 20
# The weight gradient's product dY_tile X^_tile^T sums over the tile's positions, and each
# tile's (Cout, K) result is then added to the total: its tiles must be wider.
MIN_WEIGHT_GRAD_POSITIONS = 2048

_buffers = threading.local()  # per thread: (purpose, dtype) -> a flat buffer reused by its tiles


def _buffer(xp, purpose, size, dtype):
    """A flat buffer of at least ``size`` elements, kept from call to call (a fresh buffer per
    tile would be page-faulted in by the OS every time). One per thread, purpose and dtype."""
    buffers = _buffers.__dict__
    buffer = buffers.get((purpose, dtype))
    if buffer is None or buffer.size < size:
        buffer = buffers[(purpose, dtype)] = xp.empty(size, dtype)
    return buffer[:size]


def _balanced_rows(rows, total):
    """Rows per band, raised (at most doubled) until the bands of a ``total``-row image come in a
    multiple of the workers, so that the workers finish together."""
    workers = num_workers()
    return next((r for r in range(rows, min(total, 2 * rows) + 1) if -(-total // r) % workers == 0), rows)


class _Tiles:
    """A batch's phase images and its output positions cut into tiles (n0, n1, start, stop):
    output rows [start, stop) of images [n0, n1) (several images only when they are whole).

    Positions live on the wide grid of kernels/im2col.py (Wq >= Wo columns per output row): a
    tile's im2col matrix X^ is (K, positions) with K = C*kh*kw, its columns image by image, row
    by row, Wq per row. A 1x1 stride-1 unpadded conv needs no copy at all: the image itself is
    X^ (Wq = Wo). Bands span more than qi_max rows, so that bands i and i+2 of one image never
    add into the same rows of the phase images (see ``_correlate_transpose``).
    """

    def __init__(self, xp, n_img, in_chw, geom, dtype, out_channels, min_positions=None, cache_sized=False):
        self.xp, self.geom, self.dtype = xp, geom, xp.dtype(dtype)
        self.c, self.h, self.w = in_chw
        self.ho, self.wo, self.hq, self.wq = phase_grid(self.h, self.w, *geom)
        self.k = self.c * geom.kh * geom.kw
        per_image = self.ho * self.wq
        self.parallel = 2.0 * out_channels * self.k * n_img * per_image >= PARALLEL_MIN_FLOPS
        tile_bytes = TILE_BYTES if self.parallel or cache_sized else SERIAL_TILE_BYTES
        min_positions = min_positions or MIN_TILE_POSITIONS  # read now: tests change it
        if geom.pointwise:  # nothing to keep in the cache: a product per image, or a few per worker
            positions = max(min_positions, per_image // (2 * num_workers()) + 1 if self.parallel else per_image)
        else:
            positions = max(min_positions, tile_bytes // (self.k * self.dtype.itemsize))
        if per_image >= positions or n_img == 1:
            min_rows = (geom.kh - 1) * geom.dh // geom.sh + 1
            rows = min(self.ho, max(min_rows, -(-positions // self.wq)))
            if self.parallel and n_img == 1:
                rows = _balanced_rows(rows, self.ho)
            self.rows = rows
            images = 1
        else:
            self.rows, images = self.ho, positions // per_image
        self.tiles = [(n0, min(n0 + images, n_img), start, min(start + self.rows, self.ho))
                      for n0 in range(0, n_img, images) for start in range(0, self.ho, self.rows)]

    def positions(self, tile):
        n0, n1, start, stop = tile
        return (n1 - n0) * (stop - start) * self.wq

    # --- the input side: phase images and im2col

    def phase_split(self, x):
        """The phase images (N, sh*sw, C, Hq*Wq) of the (N, C, H, W) input, filled in parallel."""
        if self.geom.pointwise:
            return x.reshape(x.shape[0], 1, self.c, self.h * self.w)
        q = self.xp.empty((x.shape[0], self.geom.sh * self.geom.sw, self.c, self.hq * self.wq), self.dtype)
        self._each_piece(x.shape[0], lambda n, c0, c1: phase_split(x[n, c0:c1], *self.geom, out=q[n, :, c0:c1]))
        return q

    def phase_merge(self, dq):
        """The (N, C, H, W) gradient of the input from that of its phase images, in parallel."""
        if self.geom.pointwise:
            return dq.reshape(dq.shape[0], self.c, self.h, self.w)
        dx = self.xp.empty((dq.shape[0], self.c, self.h, self.w), self.dtype)
        self._each_piece(dq.shape[0], lambda n, c0, c1: phase_merge(dq[n, :, c0:c1], self.h, self.w, *self.geom,
                                                                    out=dx[n, c0:c1]))
        return dx

    def _each_piece(self, n_img, fill):
        """fill(image, first channel, last channel) over the batch cut into pieces, at least a few
        per worker, in parallel when the conv is."""
        per_image = -(-4 * num_workers() // max(n_img, 1))
        step = -(-self.c // per_image)
        pieces = [(n, c0, min(c0 + step, self.c)) for n in range(n_img) for c0 in range(0, self.c, step)]
        map_shares(lambda share: [fill(*piece) for piece in share], pieces, self.parallel)

    def im2col(self, q, tile):
        """X^ of the tile, from the phase images ``q``: a view when no copy is needed."""
        n0, n1, start, stop = tile
        geom = self.geom
        if geom.kh == geom.kw == 1:  # the phase image already is X^
            return self._gather(q[:, 0], n0, n1, start * self.wq, stop * self.wq)
        cols = _buffer(self.xp, "cols", self.k * self.positions(tile), self.dtype).reshape(self.k, -1)
        per_image = cols.reshape(self.k, n1 - n0, -1)
        for i in range(n1 - n0):
            im2col(q[n0 + i], *geom.taps, self.wq, start, stop, out=per_image[:, i])
        return cols

    def col2im(self, cols, dq, tile):
        """Add the tile's (K, positions) matrix onto the gradient ``dq`` of the phase images."""
        n0, n1, start, stop = tile
        per_image = cols.reshape(self.k, n1 - n0, -1)
        for i in range(n1 - n0):
            col2im(per_image[:, i], dq[n0 + i], *self.geom.taps, self.wq, start, stop)

    @staticmethod
    def _gather(a, n0, n1, first, last):
        """Columns [first, last) of images n0..n1-1 of an (N, R, L) array, side by side (a view
        for one image, a copy for several)."""
        if n1 - n0 == 1:
            return a[n0, :, first:last]
        return a[n0:n1, :, first:last].transpose(1, 0, 2).reshape(a.shape[1], -1)

    # --- the output side: the wide grid

    def wide(self, a, tile):
        """The (R, positions) matrix of an (N, R, Ho, Wo) array over the tile, on the wide grid
        (zeros in the extra columns)."""
        n0, n1, start, stop = tile
        if self.wq == self.wo:
            return self._gather(a.reshape(a.shape[0], a.shape[1], -1), n0, n1, start * self.wo, stop * self.wo)
        out = _buffer(self.xp, "wide", a.shape[1] * self.positions(tile), self.dtype)
        out = out.reshape(a.shape[1], n1 - n0, stop - start, self.wq)
        out[..., :self.wo] = a[n0:n1, :, start:stop].transpose(1, 0, 2, 3)
        out[..., self.wo:] = 0
        return out.reshape(a.shape[1], -1)

    def set_wide(self, a, tile, matrix):
        """The inverse of ``wide``: write the (R, positions) matrix into the tile of ``a``,
        dropping the extra columns."""
        n0, n1, start, stop = tile
        matrix = matrix.reshape(a.shape[1], n1 - n0, stop - start, self.wq)[..., :self.wo]
        a[n0:n1, :, start:stop] = matrix.transpose(1, 0, 2, 3)

    def wide_view(self, a, tile):
        """Where BLAS may write the tile's product straight into ``a`` (a strided view), or None."""
        n0, n1, start, stop = tile
        if self.wq != self.wo or n1 - n0 != 1:
            return None
        return a[n0].reshape(a.shape[1], -1)[:, start * self.wo:stop * self.wo]


def _grouped(matrix, groups):
    """(R, positions) -> (groups, R/groups, positions): each group's rows (a view)."""
    return matrix.reshape(groups, matrix.shape[0] // groups, matrix.shape[1])


def _correlate(x, weight, geom, groups):
    """y[n] = W im2col(x[n]) per group: conv2d's forward, conv_transpose2d's input gradient.

    x (N, C, H, W), weight (Cout, C/G, kh, kw) -> (N, Cout, Ho, Wo).
    """
    xp = get_array_module(x)
    n_img = x.shape[0]
    cout = weight.shape[0]
    w_groups = weight.reshape(groups, cout // groups, -1)
    # one worker: cache-sized tiles even in the calling thread (no BLAS threads to feed larger
    # products, and each output column is its own product: the tiling changes no value)
    tiles = _Tiles(xp, n_img, x.shape[1:], geom, x.dtype, cout, cache_sized=num_workers() == 1)
    y = xp.empty((n_img, cout, tiles.ho, tiles.wo), x.dtype)
    q = tiles.phase_split(x)

    def work(share):
        for tile in share:
            cols = _grouped(tiles.im2col(q, tile), groups)
            direct = tiles.wide_view(y, tile)
            if direct is not None:
                xp.matmul(w_groups, cols, out=_grouped(direct, groups))
            else:
                tiles.set_wide(y, tile, xp.matmul(w_groups, cols).reshape(cout, -1))

    map_shares(work, tiles.tiles, tiles.parallel)
    return y


def _correlate_transpose(g, weight, geom, groups, out_chw):
    """x[n] = col2im(W^T g[n]) per group: conv2d's input gradient, conv_transpose2d's forward.

    g (N, Cout, Ho, Wo), weight (Cout, C/G, kh, kw) -> (N, C, H, W) with (C, H, W) = out_chw.
    """
    xp = get_array_module(g)
    n_img, cout = g.shape[:2]
    w_t = weight.reshape(groups, cout // groups, -1).transpose(0, 2, 1)  # a view: BLAS transposes
    tiles = _Tiles(xp, n_img, out_chw, geom, g.dtype, cout)
    if geom.pointwise:  # col2im of a 1x1 stride-1 conv is the identity
        dx = xp.empty((n_img,) + tuple(out_chw), g.dtype)

        def work(share):
            for tile in share:
                tiles.set_wide(dx, tile, xp.matmul(w_t, _grouped(tiles.wide(g, tile), groups)).reshape(tiles.k, -1))

        map_shares(work, tiles.tiles, tiles.parallel)
        return dx

    # the gradient of the phase images; col2im adds each tile's contributions into it
    dq = xp.zeros((n_img, geom.sh * geom.sw, tiles.c, tiles.hq * tiles.wq), g.dtype)

    def work(share):
        for tile in share:
            cols = _buffer(xp, "cols", tiles.k * tiles.positions(tile), g.dtype).reshape(tiles.k, -1)
            xp.matmul(w_t, _grouped(tiles.wide(g, tile), groups), out=_grouped(cols, groups))
            tiles.col2im(cols, dq, tile)

    # Neighbouring bands of an image add into the same rows, so they must not run at the same
    # time: first every even band of each image, then every odd one.
    for parity in (0, 1):
        map_shares(work, [t for t in tiles.tiles if (t[2] // tiles.rows) % 2 == parity], tiles.parallel)
    return tiles.phase_merge(dq)


def _weight_grad(g, x, geom, groups):
    """dW = sum_n g[n] im2col(x[n])^T per group, shaped (Cout, C/G, kh, kw).

    conv2d: g = dL/dy, x = its input. conv_transpose2d: g = its input, x = dL/dy.
    """
    xp = get_array_module(g)
    n_img, cout = g.shape[:2]
    c = x.shape[1]
    tiles = _Tiles(xp, n_img, x.shape[1:], geom, g.dtype, cout, MIN_WEIGHT_GRAD_POSITIONS)
    q = tiles.phase_split(x)
    # dW = dY X^T, or, where its transposing copy is cheap, (X^ dY^T)^T: the same values bit for
    # bit (each is the same sum in the same order), which OpenBLAS computes 10-20% faster when
    # the product is long and dW small, as in the 64-channel convs of small images
    transposed = _transposed_weight_grad(tiles.k, cout, n_img * tiles.ho * tiles.wq, g.dtype)

    def work(share):  # each share sums its own tiles; the shares' sums are added at the end
        pairs = ((_grouped(tiles.wide(g, tile), groups), _grouped(tiles.im2col(q, tile), groups)) for tile in share)
        return _sum_of_products(xp, ((x_hat, dy.transpose(0, 2, 1)) if transposed else (dy, x_hat.transpose(0, 2, 1))
                                     for dy, x_hat in pairs))

    shape = (groups, tiles.k // groups, cout // groups) if transposed else (groups, cout // groups, tiles.k // groups)
    dw = _sum_of_sums(xp, map_shares(work, tiles.tiles, tiles.parallel), shape, g.dtype)
    if transposed:
        dw = xp.ascontiguousarray(dw.transpose(0, 2, 1))
    return dw.reshape(cout, c // groups, geom.kh, geom.kw)


# The transposed weight gradient (above) when dW takes at most this many bytes (its transposing
# copy then runs in the cache) and the product sums over at least this many positions.
TRANSPOSED_WEIGHT_GRAD_MAX_BYTES = 1 << 18
TRANSPOSED_WEIGHT_GRAD_MIN_POSITIONS = 1024


def _transposed_weight_grad(k, cout, positions, dtype):
    return (k * cout * np.dtype(dtype).itemsize <= TRANSPOSED_WEIGHT_GRAD_MAX_BYTES
            and positions >= TRANSPOSED_WEIGHT_GRAD_MIN_POSITIONS)


def _sum_of_products(xp, pairs):
    """The sum of a @ b over the (a, b) pairs, or None for none. The first product starts the
    sum and each later one goes through one scratch array: a weight gradient of few positions
    (ResNet's last stage: 512 x 4608 from 30 positions) is as large as the product's inputs
    together, and a zero-filled start and a fresh array per product cost more than the product.
    ``pairs`` may be a generator reusing one buffer: each product is taken before the next pair."""
    total = term = None
    for a, b in pairs:
        if total is None:
            total = xp.matmul(a, b)
            continue
        if term is None:
            term = xp.empty_like(total)
        xp.matmul(a, b, out=term)
        total += term
    return total


def _sum_of_sums(xp, sums, shape, dtype):
    """The shares' sums added into the first (zeros when no share had any work: an empty batch)."""
    sums = [s for s in sums if s is not None]
    if not sums:
        return xp.zeros(shape, dtype)
    for other in sums[1:]:
        sums[0] += other
    return sums[0]


# ----- Winograd F(2x2, 3x3): the 3x3 stride-1 convolutions ----------------------------------


# 3x3 stride-1 convolutions (most of a ResNet's and an FPN's work) go through Winograd's
# algorithm (kernels/winograd.py): 2.25x fewer multiplications than im2col's product, all three
# products of a training step (y, dL/dx, dL/dW). False sends them through im2col like any
# other conv (the benchmarks time both).
WINOGRAD = True
# Below this many channels on either side the transforms (memory-bound, per channel) cost more
# than the products save. Below WINOGRAD_MIN_FLOPS (im2col's count) too: the small convs that
# run in the calling thread would have BLAS's threads on 16 small products instead of one
# larger, which made a training step on small images slower (docs/benchmarks.md).
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MIN_FLOPS = PARALLEL_MIN_FLOPS
# A piece of tiles holds about WINOGRAD_PIECE_BYTES of transformed input and output (16 values
# per tile and channel), but at least WINOGRAD_MIN_COLUMNS tiles (narrower products are slow);
# the weight gradient adds each piece's (16, Cout, C) product into the sum, so its pieces are
# wider still. The values were chosen by timing the ResNet shapes (docs/benchmarks.md).
WINOGRAD_PIECE_BYTES = 1 << 20
WINOGRAD_MIN_COLUMNS = 128
WINOGRAD_WEIGHT_GRAD_COLUMNS = 512


def _direct_flops(c_in, c_out, n_img, ho, wo):
    """Multiplications and additions of a 3x3 conv computed directly (im2col's count): the
    measure of work that the thresholds compare with."""
    return 2.0 * 9 * c_in * c_out * n_img * ho * wo


def _winograd_applies(geom, groups, x_shape, c_out):
    """Whether conv2d with this geometry goes through Winograd's algorithm: 3x3, stride 1, no
    dilation or groups, padding at most 2 (the input gradient is then a conv with padding
    2 - p, through the same algorithm), enough channels and work."""
    if not (WINOGRAD and geom.kh == geom.kw == 3 and geom.sh == geom.sw == 1 and geom.dh == geom.dw == 1
            and groups == 1 and max(geom.ph, geom.pw) <= 2):
        return False
    n_img, c_in, h, w = x_shape
    ho, wo = geom.output_hw(h, w)
    return min(c_in, c_out) >= WINOGRAD_MIN_CHANNELS and _direct_flops(c_in, c_out, n_img, ho, wo) >= WINOGRAD_MIN_FLOPS


class _WinogradTiles:
    """The 2x2 output tiles of a batch, cut into pieces (n0, n1, r0, r1): tile rows [r0, r1)
    of images [n0, n1) (several images only when they are whole), each with about
    WINOGRAD_PIECE_BYTES of transformed input and output (16 x (C + Cout) values per tile) and
    at least ``min_columns`` (default WINOGRAD_MIN_COLUMNS) tiles."""

    def __init__(self, n_img, ho, wo, c_in, c_out, dtype, min_columns=None):
        self.th, self.tw = tile_grid(ho, wo)
        self.dtype = np.dtype(dtype)
        self.parallel = _direct_flops(c_in, c_out, n_img, ho, wo) >= PARALLEL_MIN_FLOPS
        columns = max(min_columns or WINOGRAD_MIN_COLUMNS,
                      WINOGRAD_PIECE_BYTES // (16 * (c_in + c_out) * self.dtype.itemsize))
        per_image = self.th * self.tw
        if per_image >= columns or n_img == 1:
            rows = min(self.th, -(-columns // self.tw))
            if self.parallel and n_img == 1:
                rows = _balanced_rows(rows, self.th)
            self.pieces = [(n, n + 1, r0, min(r0 + rows, self.th))
                           for n in range(n_img) for r0 in range(0, self.th, rows)]
        else:
            images = columns // per_image
            self.pieces = [(n0, min(n0 + images, n_img), 0, self.th) for n0 in range(0, n_img, images)]

    def buffer(self, purpose, channels, piece):
        """This thread's (16, channels, columns) buffer for the piece."""
        n0, n1, r0, r1 = piece
        columns = (n1 - n0) * (r1 - r0) * self.tw
        return _buffer(np, purpose, 16 * channels * columns, self.dtype).reshape(16, channels, columns)


def _winograd_correlate(x, u, ph, pw, bias=None):
    """y = conv2d(x, g, padding=(ph, pw)) + bias for the 3x3 kernels g whose transform is
    u = weight_transform(g) (16, Cout, C): per piece of tiles, V = B^T d B, M = U V, y = A^T M A."""
    n_img, c_in, h, w = x.shape
    c_out = u.shape[1]
    ho, wo = h + 2 * ph - 2, w + 2 * pw - 2
    y = np.empty((n_img, c_out, ho, wo), x.dtype)
    tiles = _WinogradTiles(n_img, ho, wo, c_in, c_out, x.dtype)

    def work(share):
        for piece in share:
            v = winograd_input(x, ph, pw, *piece, tiles.tw, out=tiles.buffer("winograd_v", c_in, piece))
            m = tiles.buffer("winograd_m", c_out, piece)
            np.matmul(u, v, out=m)
            winograd_output(m, y, *piece, bias)

    map_shares(work, tiles.pieces, tiles.parallel)
    return y


def _winograd_input_grad(g, weight, ph, pw):
    """dL/dx of y = conv2d(x, w, padding=(ph, pw)): the correlation of g = dL/dy, padded by
    2 - p, with the kernels flipped in space and their channel axes swapped."""
    flipped = np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    return _winograd_correlate(g, weight_transform(flipped), 2 - ph, 2 - pw)


def _winograd_weight_grad(g, x, ph, pw):
    """dL/dw = sum_ab G^T dU[ab] G with dU[ab] = sum over tiles of dM[ab] V[ab]^T, where
    dM = A dY A^T of g = dL/dy and V = B^T d B of x (kernels/winograd.py)."""
    n_img, c_out, ho, wo = g.shape
    c_in = x.shape[1]
    tiles = _WinogradTiles(n_img, ho, wo, c_in, c_out, g.dtype, WINOGRAD_WEIGHT_GRAD_COLUMNS)

    def work(share):  # each share sums its own pieces; the shares' sums are added at the end
        return _sum_of_products(np, ((winograd_output_adjoint(g, *piece, out=tiles.buffer("winograd_m", c_out, piece)),
                                      winograd_input(x, ph, pw, *piece, tiles.tw,
                                                     out=tiles.buffer("winograd_v", c_in, piece)).transpose(0, 2, 1))
                                     for piece in share))

    du = _sum_of_sums(np, map_shares(work, tiles.pieces, tiles.parallel), (16, c_out, c_in), g.dtype)
    return weight_transform_adjoint(du)


# ----- the three products the ops call, with Winograd dispatch ------------------------------
# The same signatures as functional/conv_textbook.py's (the ops run on either).


def _geometry(kernel_hw, stride, padding, dilation):
    return _Geometry(*kernel_hw, *stride, *padding, *dilation)


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups):
    """y = W im2col(x) + b, or Winograd's algorithm where it applies."""
    geom = _geometry(weight.shape[2:], stride, padding, dilation)
    if _winograd_applies(geom, groups, x.shape, weight.shape[0]):
        return _winograd_correlate(x, weight_transform(weight), geom.ph, geom.pw, bias)
    y = _correlate(x, weight, geom, groups)
    if bias is not None:
        y += bias.reshape(1, -1, 1, 1)
    return y


def conv2d_input_grad(g, weight, x_shape, stride, padding, dilation, groups):
    """dL/dx = col2im(W^T dY), or Winograd's algorithm where the forward used it."""
    geom = _geometry(weight.shape[2:], stride, padding, dilation)
    if _winograd_applies(geom, groups, x_shape, weight.shape[0]):
        return _winograd_input_grad(g, weight, geom.ph, geom.pw)
    return _correlate_transpose(g, weight, geom, groups, x_shape[1:])


def conv2d_weight_grad(g, x, kernel_hw, stride, padding, dilation, groups):
    """dL/dW = sum over images of dY im2col(x)^T, or Winograd's algorithm where the forward used it."""
    geom = _geometry(kernel_hw, stride, padding, dilation)
    if _winograd_applies(geom, groups, x.shape, g.shape[1]):
        return _winograd_weight_grad(g, x, geom.ph, geom.pw)
    return _weight_grad(g, x, geom, groups)
