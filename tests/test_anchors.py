"""AnchorGenerator against torchvision's, exactly (the anchors are integers on an integer grid)."""
from types import SimpleNamespace

import numpy as np
import pytest

import tinymaskrcnn as tm
from tinymaskrcnn.models.anchors import AnchorGenerator

DEFAULT = dict(sizes=((32,), (64,), (128,), (256,), (512,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5)

# (padded image size, feature sizes per level): the FPN of a multiple-of-32 batch, and odd
# sizes as a non-multiple-of-32 input gives (ceil halvings), where strides differ per axis
CASES = [
    ((800, 1088), [(200, 272), (100, 136), (50, 68), (25, 34), (13, 17)]),
    ((96, 128), [(24, 32), (12, 16), (6, 8), (3, 4), (2, 2)]),
    ((100, 150), [(25, 38), (13, 19), (7, 10), (4, 5), (2, 3)]),
]


def _torchvision_anchors(torch, sizes, aspect_ratios, image_size, grids, dtype, num_images=2):
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
    from torchvision.models.detection.image_list import ImageList as TVImageList

    tdtype = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
    gen = TVAnchorGenerator(sizes, aspect_ratios)
    batch = torch.zeros((num_images, 3) + tuple(image_size), dtype=tdtype)
    features = [torch.zeros((num_images, 1) + tuple(g), dtype=tdtype) for g in grids]
    anchors = gen(TVImageList(batch, [tuple(image_size)] * num_images), features)
    return [a.numpy() for a in anchors], gen.num_anchors_per_location()


def _ours(sizes, aspect_ratios, image_size, grids, dtype, num_images=2):
    gen = AnchorGenerator(sizes, aspect_ratios)
    batch = np.zeros((num_images, 3) + tuple(image_size), dtype=dtype)
    features = [tm.Tensor(np.zeros((num_images, 1) + tuple(g), dtype=dtype)) for g in grids]
    # any object with an ImageList's two fields will do
    images = SimpleNamespace(tensors=tm.Tensor(batch), image_sizes=[tuple(image_size)] * num_images)
    return gen(images, features), gen


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("image_size,grids", CASES)
def test_default_anchors_equal_torchvision(torch, image_size, grids, dtype):
    expected, expected_a = _torchvision_anchors(torch, DEFAULT["sizes"], DEFAULT["aspect_ratios"], image_size, grids, dtype)
    got, gen = _ours(DEFAULT["sizes"], DEFAULT["aspect_ratios"], image_size, grids, dtype)
    assert gen.num_anchors_per_location() == expected_a == [3] * 5
    assert len(got) == len(expected) == 2
    for g, e in zip(got, expected):
        assert g.dtype == np.dtype(dtype) and g.shape == e.shape
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sizes,aspect_ratios", [
    # several sizes per level and uneven ratios; (10, 1.69) and (45, 1.96) sit on a rounding
    # half, where float32 and float64 cell anchors differ (torchvision rounds in float32)
    (((10, 45), (16, 24, 40)), ((1.69, 1.96), (0.25, 1.0, 3.7))),
    ((16, 90), (0.49, 1.0, 1.5)),  # torchvision's flat shorthands
])
def test_custom_anchors_equal_torchvision(torch, sizes, aspect_ratios, dtype):
    grids = [(7, 9), (4, 5)]
    expected, expected_a = _torchvision_anchors(torch, sizes, aspect_ratios, (60, 70), grids, dtype)
    got, gen = _ours(sizes, aspect_ratios, (60, 70), grids, dtype)
    assert gen.num_anchors_per_location() == expected_a
    for g, e in zip(got, expected):
        assert g.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(g, e)


def test_plain_shapes_and_grid_layout():
    """Called with sizes instead of arrays it gives the same anchors; grid_anchors lays them
    out (h, w, A, 4) with each cell's anchors shifted by its top-left corner."""
    gen = AnchorGenerator()
    image_size, grids = CASES[2]
    from_arrays, = _ours(DEFAULT["sizes"], DEFAULT["aspect_ratios"], image_size, grids, np.float64, num_images=1)[0]
    from_shapes, = gen(image_size, grids, dtype=np.float64)
    np.testing.assert_array_equal(from_shapes, from_arrays)
    batch = np.zeros((3, 3) + image_size)
    assert len(gen(batch, [np.zeros((3, 8) + g) for g in grids])) == 3

    levels = gen.grid_anchors(image_size, grids, dtype=np.float64)
    strides = gen.strides(image_size, grids)
    assert strides[2] == (100 // 7, 150 // 10)
    for level, (grid, (sh, sw)) in enumerate(zip(grids, strides)):
        assert levels[level].shape == grid + (3, 4)
        y, x = grid[0] - 1, grid[1] // 2
        shift = np.array([x * sw, y * sh, x * sw, y * sh])
        np.testing.assert_array_equal(levels[level][y, x], gen.cell_anchors[level] + shift)
    np.testing.assert_array_equal(np.concatenate([a.reshape(-1, 4) for a in levels]), from_shapes)


def test_cell_anchors_keep_area_and_ratio():
    """Ratio is h / w: ratio 2 is a tall box; each keeps (about, after rounding) the size² area."""
    cell = AnchorGenerator(sizes=((64,),), aspect_ratios=((0.5, 1.0, 2.0),)).cell_anchors[0]
    w, h = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
    np.testing.assert_array_equal(cell, [[-45, -23, 45, 23], [-32, -32, 32, 32], [-23, -45, 23, 45]])
    assert h[2] > w[2] and np.allclose(w * h, 64 ** 2, rtol=0.02)


def test_bad_input():
    gen = AnchorGenerator()
    with pytest.raises(ValueError, match="got 2 feature maps but the generator has 5 levels"):
        gen((64, 64), [(16, 16), (8, 8)])
    with pytest.raises(ValueError, match=r"feature map 0 of size \(80, 16\) does not fit"):
        gen((64, 64), [(80, 16)] * 5)
    with pytest.raises(ValueError, match="sizes has 2 levels but aspect_ratios has 3"):
        AnchorGenerator(((32,), (64,)), ((1.0,),) * 3)
    with pytest.raises(ValueError, match="must be non-empty and positive"):
        AnchorGenerator(((32,), (-64,)), ((1.0,),) * 2)
    with pytest.raises(ValueError, match=r"padded batch must be \(N, C, H, W\)"):
        gen(np.zeros((3, 64, 64)), [(16, 16)] * 5)
