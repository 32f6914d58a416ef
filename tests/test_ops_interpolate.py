"""interpolate ('nearest', 'bilinear') against torch: sizes, scale factors, recompute_scale_factor."""
import numpy as np
import pytest
from helpers import assert_matches_torch

import tinymaskrcnn as tm
import tinymaskrcnn.functional as F
from tinymaskrcnn.core.gradcheck import gradcheck

DTYPES = [np.float64, np.float32]
MODES = [("nearest", None), ("bilinear", False), ("bilinear", True)]
MODE_IDS = ["nearest", "bilinear", "bilinear_align_corners"]
SHAPE = (2, 3, 7, 9)
SIZES = [(14, 18), (5, 13), (3, 4), (7, 9), (1, 1), 11]  # 2x, mixed, down, same, a point, an int
# (scale_factor, recompute_scale_factor): up and down, non-integer, per axis; a scale whose
# floor(L * s) is L or 2L but s is not 1 or 2, where torch's index shortcuts decide
SCALES = [(2.0, None), (0.5, False), (1.7, False), (1.7, True), (0.37, None), (0.37, True),
          ((1.3, 2.6), False), ((1.3, 2.6), True), (1.1, False), (2.1, False), (2.1, True)]


def _both(torch, mode, align_corners, **kw):
    return (lambda x: F.interpolate(x, mode=mode, align_corners=align_corners, **kw),
            lambda x: torch.nn.functional.interpolate(x, mode=mode, align_corners=align_corners, **kw))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
def test_size_matches_torch(torch, rng, dtype, size, mode, align_corners):
    assert_matches_torch(*_both(torch, mode, align_corners, size=size), [rng.standard_normal(SHAPE)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale,recompute", SCALES, ids=str)
@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
def test_scale_factor_matches_torch(torch, rng, dtype, scale, recompute, mode, align_corners):
    fns = _both(torch, mode, align_corners, scale_factor=scale, recompute_scale_factor=recompute)
    assert_matches_torch(*fns, [rng.standard_normal(SHAPE)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nearest_index_is_computed_in_float32(torch, rng, dtype):
    # 14 -> 46: floor(i * 14/46) differs for some i between float32 and exact arithmetic;
    # torch uses float32 even for float64 input
    assert_matches_torch(*_both(torch, "nearest", None, size=(46, 3)), [rng.standard_normal((1, 2, 14, 3))], dtype)


def test_recompute_changes_the_scale_used(rng):
    x = rng.standard_normal((1, 1, 7, 7))
    kept = F.interpolate(x, scale_factor=1.7, mode="bilinear", recompute_scale_factor=False)
    recomputed = F.interpolate(x, scale_factor=1.7, mode="bilinear", recompute_scale_factor=True)
    assert kept.shape == recomputed.shape == (1, 1, 11, 11)
    assert not np.allclose(kept.data, recomputed.data)  # 1/1.7 vs 7/11 as the source step


@pytest.mark.parametrize("mode,align_corners", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("kw", [{"size": (5, 3)}, {"scale_factor": 1.5}], ids=["size", "scale"])
def test_gradcheck(rng, mode, align_corners, kw):
    x = tm.Tensor(rng.standard_normal((2, 1, 3, 4)), requires_grad=True)
    (err,) = gradcheck(lambda t: F.interpolate(t, mode=mode, align_corners=align_corners, **kw), [x])
    assert err < 1e-8


def test_bad_input_is_named():
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(ValueError, match="4-D input.*got shape \\(4, 4\\)"):
        F.interpolate(np.zeros((4, 4)), size=2)
    with pytest.raises(ValueError, match="unknown mode 'bicubic'.*'nearest', 'bilinear'"):
        F.interpolate(x, size=2, mode="bicubic")
    with pytest.raises(ValueError, match="align_corners can only be set with mode='bilinear'"):
        F.interpolate(x, size=2, align_corners=False)
    with pytest.raises(ValueError, match="exactly one of size and scale_factor"):
        F.interpolate(x, size=2, scale_factor=2.0)
    with pytest.raises(ValueError, match="exactly one of size and scale_factor"):
        F.interpolate(x)
    with pytest.raises(ValueError, match="recompute_scale_factor=True needs scale_factor"):
        F.interpolate(x, size=2, recompute_scale_factor=True)
    with pytest.raises(TypeError, match="size must be an int or a pair"):
        F.interpolate(x, size=(2, 3, 4))
    with pytest.raises(ValueError, match="output size \\(0, 0\\) must be at least 1"):
        F.interpolate(x, scale_factor=0.1)
    with pytest.raises(ValueError, match="scale_factor must be positive"):
        F.interpolate(x, scale_factor=-2.0)
