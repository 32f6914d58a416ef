"""Winograd F(2x2, 3x3) kernels: each Numba kernel against its NumPy twin, the whole algorithm
against torch's conv2d and its weight gradient, the output transform against its adjoint, and
the argument checks."""
import numpy as np
import pytest

from tinymaskrcnn.core.gradcheck import rel_error
from tinymaskrcnn.kernels.winograd import tile_grid, weight_transform, weight_transform_adjoint, weight_transform_adjoint_twin, weight_transform_twin, winograd_input, winograd_input_twin, winograd_output, winograd_output_adjoint, winograd_output_adjoint_twin, winograd_output_twin

from helpers import TOL

# (N, C, Cout, H, W, ph, pw): odd and even outputs (a last tile that sticks out or not), every
# padding the conv op sends here (0, 1, 2), an output of a single pixel
CONFIGS = [
    (2, 3, 4, 7, 9, 1, 1),
    (1, 2, 3, 6, 6, 0, 0),
    (3, 4, 2, 7, 4, 2, 1),
    (1, 3, 5, 3, 3, 0, 2),
    (2, 5, 3, 9, 11, 1, 0),
    (1, 2, 2, 3, 3, 0, 0),
]
DTYPES = [np.float32, np.float64]

# the pieces of tiles the conv op cuts a batch into: all of it, bands of one tile row, two images
PIECES = {
    "whole": lambda n, th: [(0, n, 0, th)],
    "rows": lambda n, th: [(i, i + 1, r, r + 1) for i in range(n) for r in range(th)],
    "images": lambda n, th: [(i, min(i + 2, n), 0, th) for i in range(0, n, 2)],
}


def _geometry(cfg):
    n, c, cout, h, w, ph, pw = cfg
    ho, wo = h + 2 * ph - 2, w + 2 * pw - 2
    return ho, wo, tile_grid(ho, wo)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("cut", sorted(PIECES))
def test_kernels_equal_numpy_twins(cfg, dtype, cut, rng):
    n, c, cout, h, w, ph, pw = cfg
    ho, wo, (th, tw) = _geometry(cfg)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    dy = rng.standard_normal((n, cout, ho, wo)).astype(dtype)
    bias = rng.standard_normal(cout).astype(dtype)
    y, y_ref = np.full((n, cout, ho, wo), np.nan, dtype), np.full((n, cout, ho, wo), np.nan, dtype)
    for piece in PIECES[cut](n, th):
        v = winograd_input(x, ph, pw, *piece, tw)
        assert v.dtype == dtype and v.shape == (16, c, (piece[1] - piece[0]) * (piece[3] - piece[2]) * tw)
        np.testing.assert_allclose(v, winograd_input_twin(x, ph, pw, *piece, tw), rtol=0, atol=1e-5)
        m = rng.standard_normal((16, cout, v.shape[2])).astype(dtype)
        winograd_output(m, y, *piece, bias)
        winograd_output_twin(m, y_ref, *piece, bias)
        dm = winograd_output_adjoint(dy, *piece)
        assert dm.dtype == dtype and dm.shape == m.shape
        np.testing.assert_allclose(dm, winograd_output_adjoint_twin(dy, *piece), rtol=0, atol=1e-5)
    assert not np.isnan(y).any(), "some output was not written"
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-5)
    g, du = rng.standard_normal((cout, c, 3, 3)).astype(dtype), rng.standard_normal((16, cout, c)).astype(dtype)
    u = weight_transform(g)
    assert u.dtype == dtype and u.shape == (16, cout, c)
    np.testing.assert_allclose(u, weight_transform_twin(g), rtol=0, atol=1e-5)
    dg = weight_transform_adjoint(du)
    assert dg.dtype == dtype and dg.shape == g.shape
    np.testing.assert_allclose(dg, weight_transform_adjoint_twin(du), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_algorithm_matches_torch_conv2d_and_weight_gradient(torch, cfg, dtype, rng):
    """y = A^T [U V] A equals conv2d, and sum_ab G^T (dM V^T) G its weight gradient."""
    n, c, cout, h, w, ph, pw = cfg
    ho, wo, (th, tw) = _geometry(cfg)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    g = rng.standard_normal((cout, c, 3, 3)).astype(dtype)
    dy = rng.standard_normal((n, cout, ho, wo)).astype(dtype)
    v = winograd_input(x, ph, pw, 0, n, 0, th, tw)
    y = winograd_output(weight_transform(g) @ v, np.empty((n, cout, ho, wo), dtype), 0, n, 0, th)
    dw = weight_transform_adjoint(winograd_output_adjoint(dy, 0, n, 0, th) @ v.transpose(0, 2, 1))

    xt, gt = torch.tensor(x), torch.tensor(g, requires_grad=True)
    ref = torch.nn.functional.conv2d(xt, gt, padding=(ph, pw))
    ref.backward(torch.tensor(dy))
    tol = TOL[dtype]
    assert rel_error(y, ref.detach().numpy()) <= tol
    assert rel_error(dw, gt.grad.numpy()) <= tol


@pytest.mark.parametrize("cfg", CONFIGS)
def test_output_adjoint_is_the_adjoint(cfg, rng):
    """<winograd_output(M), dY> = <M, winograd_output_adjoint(dY)>, and the same for the weight
    transform: the backward pass runs exactly the transposed maps."""
    n, c, cout, h, w, ph, pw = cfg
    ho, wo, (th, tw) = _geometry(cfg)
    m = rng.standard_normal((16, cout, n * th * tw))
    dy = rng.standard_normal((n, cout, ho, wo))
    y = winograd_output(m, np.empty((n, cout, ho, wo)), 0, n, 0, th)
    assert np.isclose((y * dy).sum(), (m * winograd_output_adjoint(dy, 0, n, 0, th)).sum(), rtol=1e-12, atol=1e-10)
    g, du = rng.standard_normal((cout, c, 3, 3)), rng.standard_normal((16, cout, c))
    assert np.isclose((weight_transform(g) * du).sum(), (g * weight_transform_adjoint(du)).sum(), rtol=1e-12)


def test_bad_out_shapes_are_refused(rng):
    x = rng.standard_normal((1, 2, 6, 6))
    with pytest.raises(ValueError, match="winograd_input: out must have shape"):
        winograd_input(x, 1, 1, 0, 1, 0, 3, 3, out=np.empty((16, 2, 8)))
    with pytest.raises(ValueError, match="winograd_output: m must have shape"):
        winograd_output(np.empty((16, 3, 8)), np.empty((1, 3, 6, 6)), 0, 1, 0, 3)
    with pytest.raises(ValueError, match="winograd_output_adjoint: out must have shape"):
        winograd_output_adjoint(np.empty((1, 3, 6, 6)), 0, 1, 0, 3, out=np.empty((16, 2, 9)))
