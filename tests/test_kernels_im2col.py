"""phase_split / im2col / col2im / phase_merge: the Numba kernels against their NumPy twins,
against torch's unfold and fold, and against each other (adjoints, bands)."""
import numpy as np
import pytest

from tinymaskrcnn.core.gradcheck import rel_error
from tinymaskrcnn.kernels.im2col import col2im, col2im_twin, im2col, im2col_twin, phase_grid, phase_merge, phase_merge_twin, phase_split, phase_split_twin

from helpers import TOL

# (C, H, W, kh, kw, sh, sw, ph, pw, dh, dw)
CONFIGS = [
    (3, 7, 9, 3, 3, 1, 1, 1, 1, 1, 1),      # 3x3 "same", non-square image
    (2, 11, 8, 3, 2, 2, 3, 2, 0, 2, 1),     # everything different per axis
    (4, 5, 5, 1, 1, 1, 1, 0, 0, 1, 1),      # 1x1
    (2, 16, 15, 7, 7, 2, 2, 3, 3, 1, 1),    # 7x7 stride 2 stem
    (2, 9, 10, 3, 3, 2, 2, 1, 1, 1, 1),     # 3x3 stride 2 (ResNet's strided blocks)
    (3, 6, 7, 2, 2, 2, 2, 0, 0, 1, 1),      # 2x2 stride 2, windows do not overlap
    (1, 4, 4, 3, 3, 1, 1, 4, 4, 1, 1),      # padding wider than the kernel: rows of zeros only
    (2, 9, 10, 3, 3, 1, 1, 2, 2, 2, 2),     # dilated 3x3
    (2, 6, 6, 1, 1, 3, 3, 0, 0, 1, 1),      # 1x1 stride 3 (a subsample): one phase of nine used
    (2, 7, 6, 1, 1, 2, 2, 1, 0, 1, 1),      # padded 1x1 stride 2
]
DTYPES = [np.float32, np.float64]


def _split(cfg):
    """(C, H, W), the geometry (kh, kw, sh, sw, ph, pw, dh, dw), and (ho, wo, hq, wq)."""
    C, H, W, *geom = cfg
    return (C, H, W), geom, phase_grid(H, W, *geom)


def _taps(geom):
    """The geometry as im2col and col2im take it: (kh, kw, sh, sw, dh, dw)."""
    kh, kw, sh, sw, ph, pw, dh, dw = geom
    return kh, kw, sh, sw, dh, dw


def _unfold(q, geom, grid):
    """The whole im2col matrix, with the wide grid's extra columns dropped: torch's unfold."""
    ho, wo, hq, wq = grid
    cols = im2col(q, *_taps(geom), wq, 0, ho)
    return cols.reshape(len(cols), ho, wq)[:, :, :wo].reshape(len(cols), -1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_kernels_equal_numpy_twins(cfg, dtype, rng):
    (C, H, W), geom, (ho, wo, hq, wq) = _split(cfg)
    kh, kw, sh, sw = geom[:4]
    x = rng.standard_normal((C, H, W)).astype(dtype)
    q = phase_split(x, *geom)
    assert q.dtype == dtype and q.shape == (sh * sw, C, hq * wq)
    assert np.array_equal(q, phase_split_twin(x, *geom))

    cols = im2col(q, *_taps(geom), wq, 0, ho)
    assert cols.shape == (C * kh * kw, ho * wq)
    assert np.array_equal(cols, im2col_twin(q, *_taps(geom), wq, 0, ho))

    c = rng.standard_normal(cols.shape).astype(dtype)
    dq = col2im(c, np.zeros_like(q), *_taps(geom), wq, 0, ho)
    # both add the taps in the same order into zeros: equal to the last bit
    assert np.array_equal(dq, col2im_twin(c, np.zeros_like(q), *_taps(geom), wq, 0, ho))
    image = phase_merge(dq, H, W, *geom)
    assert image.dtype == dtype and image.shape == (C, H, W)
    assert np.array_equal(image, phase_merge_twin(dq, H, W, *geom))


@pytest.mark.parametrize("cfg", CONFIGS)
def test_match_torch_unfold_and_fold(cfg, torch, rng):
    """phase_split then im2col, extra columns dropped, is torch's unfold (same row order
    (c, ki, kj)); col2im then phase_merge of a gradient that is zero in the extra columns is
    torch's fold."""
    (C, H, W), geom, (ho, wo, hq, wq) = _split(cfg)
    kh, kw, sh, sw, ph, pw, dh, dw = geom
    kwargs = dict(kernel_size=(kh, kw), dilation=(dh, dw), padding=(ph, pw), stride=(sh, sw))
    x = rng.standard_normal((C, H, W))
    expected = torch.nn.functional.unfold(torch.from_numpy(x)[None], **kwargs)[0].numpy()
    assert np.array_equal(_unfold(phase_split(x, *geom), geom, (ho, wo, hq, wq)), expected)

    g = rng.standard_normal(expected.shape)
    wide = np.zeros((len(g), ho, wq))
    wide[:, :, :wo] = g.reshape(-1, ho, wo)
    dq = col2im(wide.reshape(len(g), -1), np.zeros((sh * sw, C, hq * wq)), *_taps(geom), wq, 0, ho)
    expected = torch.nn.functional.fold(torch.from_numpy(g)[None], output_size=(H, W), **kwargs)[0].numpy()
    assert rel_error(phase_merge(dq, H, W, *geom), expected) <= TOL[np.float64]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_backward_kernels_are_the_adjoints(cfg, rng):
    """<im2col(phase_split(x)), c> = <x, phase_merge(col2im(c))> for all x and c, the wide
    grid's extra columns included: the backward pair is the forward pair's transpose."""
    (C, H, W), geom, (ho, wo, hq, wq) = _split(cfg)
    kh, kw, sh, sw = geom[:4]
    x = rng.standard_normal((C, H, W))
    cols = im2col(phase_split(x, *geom), *_taps(geom), wq, 0, ho)
    c = rng.standard_normal(cols.shape)
    back = phase_merge(col2im(c, np.zeros((sh * sw, C, hq * wq)), *_taps(geom), wq, 0, ho), H, W, *geom)
    lhs, rhs = np.sum(cols * c), np.sum(x * back)
    assert abs(lhs - rhs) <= 1e-12 * (abs(lhs) + np.linalg.norm(x) * np.linalg.norm(c))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONFIGS[:5])
def test_bands_and_out_buffers(cfg, dtype, rng):
    """Bands of output rows tile the full matrix; col2im adds band by band into what is
    there; ``out`` is filled and returned, also as a strided view."""
    (C, H, W), geom, (ho, wo, hq, wq) = _split(cfg)
    x = rng.standard_normal((C, H, W)).astype(dtype)
    q = phase_split(x, *geom)
    full = im2col(q, *_taps(geom), wq, 0, ho)
    c = rng.standard_normal(full.shape).astype(dtype)
    start = rng.standard_normal(q.shape).astype(dtype)
    accumulated, accumulated_ref = start.copy(), start.copy()
    for first in range(0, ho, 2):
        last = min(first + 2, ho)
        band = slice(first * wq, last * wq)
        strided = np.empty((full.shape[0], 2, (last - first) * wq), dtype)[:, 1]  # not contiguous
        assert im2col(q, *_taps(geom), wq, first, last, out=strided) is strided
        assert np.array_equal(strided, full[:, band])
        assert np.array_equal(im2col_twin(q, *_taps(geom), wq, first, last), full[:, band])
        band_cols = np.ascontiguousarray(c[:, band])
        assert col2im(band_cols, accumulated, *_taps(geom), wq, first, last) is accumulated
        col2im_twin(band_cols, accumulated_ref, *_taps(geom), wq, first, last)
    expected = start + col2im(c, np.zeros_like(q), *_taps(geom), wq, 0, ho)
    assert rel_error(accumulated, expected) <= TOL[dtype]
    assert rel_error(accumulated_ref, expected) <= TOL[dtype]

    out = np.full((C, H, W), np.nan, dtype)
    assert phase_merge(expected, H, W, *geom, out=out) is out
    assert np.array_equal(out, phase_merge_twin(expected, H, W, *geom))


def test_non_contiguous_input(rng):
    x = rng.standard_normal((9, 7, 3)).transpose(2, 0, 1)  # (3, 9, 7), not C-contiguous
    geom = (3, 3, 2, 1, 1, 1, 1, 1)
    assert np.array_equal(phase_split(x, *geom), phase_split_twin(np.ascontiguousarray(x), *geom))


def test_wrong_buffer_shapes_raise(rng):
    x = rng.standard_normal((2, 5, 5))
    geom = (3, 3, 1, 1, 1, 1, 1, 1)
    ho, wo, hq, wq = phase_grid(5, 5, *geom)
    q = phase_split(x, *geom)
    taps = _taps(geom)
    for split in (phase_split, phase_split_twin):
        with pytest.raises(ValueError, match="out must have shape"):
            split(x, *geom, out=np.empty((1, 2, hq * wq + 1)))
    for unfold in (im2col, im2col_twin):
        with pytest.raises(ValueError, match="out must have shape"):
            unfold(q, *taps, wq, 0, ho, out=np.empty((18, ho * wq - 1)))
    for fold in (col2im, col2im_twin):
        with pytest.raises(ValueError, match="cols must have shape"):
            fold(np.empty((18, 24)), q, *taps, wq, 0, ho)
    for merge in (phase_merge, phase_merge_twin):
        with pytest.raises(ValueError, match="q must have shape"):
            merge(q[:, :, 1:], 5, 5, *geom)
    with pytest.raises(ValueError, match="out must have shape"):
        phase_merge(q, 5, 5, *geom, out=np.empty((2, 5, 4)))
