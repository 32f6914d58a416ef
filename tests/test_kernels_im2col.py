"""im2col / col2im: the Numba kernels against their NumPy twins, torch's unfold/fold, and each other."""
import numpy as np
import pytest

from tinymaskrcnn.gradcheck import rel_error
from tinymaskrcnn.kernels.im2col import col2im, col2im_reference, conv_output_size, im2col, im2col_reference

from helpers import TOL

# (C, H, W, kh, kw, sh, sw, ph, pw, dh, dw)
CONFIGS = [
    (3, 7, 9, 3, 3, 1, 1, 1, 1, 1, 1),      # 3x3 "same", non-square image
    (2, 11, 8, 3, 2, 2, 3, 2, 0, 2, 1),     # everything different per axis
    (4, 5, 5, 1, 1, 1, 1, 0, 0, 1, 1),      # 1x1
    (2, 16, 15, 7, 7, 2, 2, 3, 3, 1, 1),    # 7x7 stride 2 stem
    (3, 6, 7, 2, 2, 2, 2, 0, 0, 1, 1),      # 2x2 stride 2, windows do not overlap
    (1, 4, 4, 3, 3, 1, 1, 4, 4, 1, 1),      # padding wider than the kernel: rows of zeros only
    (2, 9, 10, 3, 3, 1, 1, 2, 2, 2, 2),     # dilated 3x3
    (2, 6, 6, 1, 1, 3, 3, 0, 0, 1, 1),      # 1x1 stride 3 (a subsample)
]
DTYPES = [np.float32, np.float64]


def _geometry(cfg):
    C, H, W, *geom = cfg
    kh, kw, sh, sw, ph, pw, dh, dw = geom
    ho, wo = conv_output_size(H, kh, sh, ph, dh), conv_output_size(W, kw, sw, pw, dw)
    return (C, H, W), geom, (ho, wo)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_kernels_equal_numpy_twins(cfg, dtype, rng):
    (C, H, W), geom, (ho, wo) = _geometry(cfg)
    x = rng.standard_normal((C, H, W)).astype(dtype)
    cols = im2col(x, *geom)
    assert cols.dtype == dtype and cols.shape == (C * geom[0] * geom[1], ho * wo)
    assert np.array_equal(cols, im2col_reference(x, *geom))

    c = rng.standard_normal(cols.shape).astype(dtype)
    image = col2im(c, C, H, W, *geom)
    assert image.dtype == dtype
    # both add the taps in the same order into zeros: equal to the last bit
    assert np.array_equal(image, col2im_reference(c, C, H, W, *geom))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONFIGS[:4])
def test_bands_and_out_buffers(cfg, dtype, rng):
    """Bands of output rows tile the full matrix; col2im adds into ``out``; ``out`` is returned."""
    (C, H, W), geom, (ho, wo) = _geometry(cfg)
    x = rng.standard_normal((C, H, W)).astype(dtype)
    full = im2col(x, *geom)
    c = rng.standard_normal(full.shape).astype(dtype)
    start_image = rng.standard_normal((C, H, W)).astype(dtype)
    accumulated, accumulated_ref = start_image.copy(), start_image.copy()
    for start in range(0, ho, 2):
        stop = min(start + 2, ho)
        band = slice(start * wo, stop * wo)
        buffer = np.empty((full.shape[0], (stop - start) * wo), dtype)
        assert im2col(x, *geom, start, stop, out=buffer) is buffer
        assert np.array_equal(buffer, full[:, band])
        assert np.array_equal(im2col_reference(x, *geom, start, stop), full[:, band])
        band_cols = np.ascontiguousarray(c[:, band])
        assert col2im(band_cols, C, H, W, *geom, start, stop, out=accumulated) is accumulated
        col2im_reference(band_cols, C, H, W, *geom, start, stop, out=accumulated_ref)
    expected = start_image + col2im(c, C, H, W, *geom)
    tol = TOL[dtype]
    assert rel_error(accumulated, expected) <= tol
    assert rel_error(accumulated_ref, expected) <= tol


@pytest.mark.parametrize("cfg", CONFIGS)
def test_col2im_is_the_adjoint_of_im2col(cfg, rng):
    """<im2col(x), c> = <x, col2im(c)> for all x, c: col2im is im2col's transpose."""
    (C, H, W), geom, _ = _geometry(cfg)
    x = rng.standard_normal((C, H, W))
    c = rng.standard_normal(im2col(x, *geom).shape)
    lhs, rhs = np.sum(im2col(x, *geom) * c), np.sum(x * col2im(c, C, H, W, *geom))
    assert abs(lhs - rhs) <= 1e-12 * (abs(lhs) + np.linalg.norm(x) * np.linalg.norm(c))


@pytest.mark.parametrize("cfg", CONFIGS)
def test_match_torch_unfold_and_fold(cfg, torch, rng):
    """torch's unfold is im2col and fold is col2im, with the same row order (c, ki, kj)."""
    (C, H, W), geom, _ = _geometry(cfg)
    kh, kw, sh, sw, ph, pw, dh, dw = geom
    kwargs = dict(kernel_size=(kh, kw), dilation=(dh, dw), padding=(ph, pw), stride=(sh, sw))
    x = rng.standard_normal((C, H, W))
    cols = im2col(x, *geom)
    expected = torch.nn.functional.unfold(torch.from_numpy(x)[None], **kwargs)[0].numpy()
    assert rel_error(cols, expected) <= TOL[np.float64]
    c = rng.standard_normal(cols.shape)
    expected = torch.nn.functional.fold(torch.from_numpy(c)[None], output_size=(H, W), **kwargs)[0].numpy()
    assert rel_error(col2im(c, C, H, W, *geom), expected) <= TOL[np.float64]


def test_non_contiguous_input(rng):
    x = rng.standard_normal((9, 7, 3)).transpose(2, 0, 1)  # (3, 9, 7), not C-contiguous
    geom = (3, 3, 2, 1, 1, 1, 1, 1)
    assert np.array_equal(im2col(x, *geom), im2col_reference(np.ascontiguousarray(x), *geom))


def test_wrong_buffer_shapes_raise(rng):
    x = rng.standard_normal((2, 5, 5))
    geom = (3, 3, 1, 1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="out must have shape"):
        im2col(x, *geom, out=np.empty((18, 24)))
    with pytest.raises(ValueError, match="out must have shape"):
        im2col_reference(x, *geom, out=np.empty((18, 24)))
    with pytest.raises(ValueError, match="cols must have shape"):
        col2im(np.empty((18, 24)), 2, 5, 5, *geom)
    with pytest.raises(ValueError, match="cols must have shape"):
        col2im_reference(np.empty((18, 24)), 2, 5, 5, *geom)
    with pytest.raises(ValueError, match="out must have shape"):
        col2im(np.empty((18, 25)), 2, 5, 5, *geom, out=np.empty((2, 5, 4)))
