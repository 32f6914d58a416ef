"""paste_masks_in_image against torchvision's, and the Numba kernel against its NumPy twin."""
import tracemalloc

import numpy as np
import pytest

from tinymaskrcnn.core.gradcheck import rel_error
from tinymaskrcnn.kernels.paste_masks import paste_masks, paste_masks_twin
from tinymaskrcnn.ops.paste_masks import paste_masks_in_image

from helpers import TOL

H, W = 37, 53


def _boxes(rng, n):
    """Random xyxy boxes that overlap the H × W image, many of them partly outside it, plus a
    one-pixel box, a zero-size box, an inverted box and one larger than the image."""
    x1, y1 = rng.uniform(-10, W - 3, n), rng.uniform(-10, H - 3, n)
    x2, y2 = np.maximum(x1 + rng.uniform(0, 30, n), 1.5), np.maximum(y1 + rng.uniform(0, 30, n), 1.5)
    special = [[3, 4, 3.9, 4.9], [2.5, 2.5, 2.5, 2.5], [20, 10, 15, 25], [-2, -3, W + 4, H + 1]]
    return np.concatenate([np.stack([x1, y1, x2, y2], axis=1), special])


def _torchvision_paste(torch, masks, boxes, padding):
    from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste

    return tv_paste(torch.tensor(masks), torch.tensor(boxes), (H, W), padding=padding).numpy()


@pytest.mark.parametrize("mask_dtype, box_dtype", [(np.float32, np.float32), (np.float64, np.float64),
                                                   (np.float64, np.float32)])
@pytest.mark.parametrize("m, padding", [(28, 1), (7, 2), (5, 0)])
def test_matches_torchvision(torch, rng, mask_dtype, box_dtype, m, padding):
    boxes = _boxes(rng, 40).astype(box_dtype)
    masks = rng.random((len(boxes), 1, m, m)).astype(mask_dtype)
    ours = paste_masks_in_image(masks, boxes, (H, W), padding)
    ref = _torchvision_paste(torch, masks, boxes, padding)
    assert ours.shape == ref.shape == (len(boxes), 1, H, W)
    assert ours.dtype == mask_dtype
    assert rel_error(ours, ref) <= TOL[mask_dtype]


def test_no_masks(torch):
    masks, boxes = np.zeros((0, 1, 28, 28), np.float32), np.zeros((0, 4), np.float32)
    ours = paste_masks_in_image(masks, boxes, (H, W))
    assert ours.shape == _torchvision_paste(torch, masks, boxes, 1).shape == (0, 1, H, W)


def test_box_outside_image_gives_zeros(rng):
    # torchvision's slicing fails or wraps around for these; the clipped paste is simply empty
    boxes = np.array([[-40, -40, -10, -5], [W + 5, 0, W + 20, 10], [0, H + 2, 10, H + 9]], np.float32)
    out = paste_masks_in_image(rng.random((3, 1, 28, 28)).astype(np.float32), boxes, (H, W))
    assert out.shape == (3, 1, H, W) and not out.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, padding", [(28, 1), (6, 3)])
def test_kernel_matches_numpy_twin(rng, dtype, m, padding):
    boxes = np.concatenate([_boxes(rng, 30), [[-40, -40, -10, -5]]]).astype(dtype)
    masks = rng.random((len(boxes), m, m)).astype(dtype)
    scale = dtype((m + 2 * padding) / m)
    # the same operations in the same order: equal to the last bit
    np.testing.assert_array_equal(paste_masks(masks, boxes, H, W, padding, scale),
                                  paste_masks_twin(masks, boxes, H, W, padding, scale))


def test_memory_is_the_output(rng):
    """Each mask writes only its box's part of the image, straight into the result: pasting 20
    masks whose boxes cover the whole image allocates little beyond the (N, 1, H, W) output."""
    n, h, w = 20, 300, 400
    masks = rng.random((n, 28, 28)).astype(np.float32)
    boxes = np.tile(np.array([[-5.0, -5.0, w + 5, h + 5]], np.float32), (n, 1))
    output_bytes = n * h * w * 4
    tracemalloc.start()
    try:
        paste_masks_twin(masks, boxes, h, w, 1, np.float32(30 / 28))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the twin's per-mask temporaries are a few image-sized arrays, freed mask by mask
    assert peak <= output_bytes + 5 * h * w * 4


@pytest.mark.parametrize("call, error, words", [
    (lambda m, b: paste_masks_in_image(m[:, 0], b, (H, W)), ValueError, "(N, 1, M, M)"),
    (lambda m, b: paste_masks_in_image(m[:, :, :, :5], b, (H, W)), ValueError, "(N, 1, M, M)"),
    (lambda m, b: paste_masks_in_image(m, b[:2], (H, W)), ValueError, "(N, 4)"),
    (lambda m, b: paste_masks_in_image(m.astype(np.uint8), b, (H, W)), TypeError, "masks must be float32"),
    (lambda m, b: paste_masks_in_image(m, b.astype(np.int64), (H, W)), TypeError, "boxes must be float32"),
    (lambda m, b: paste_masks_in_image(m, b * np.inf, (H, W)), ValueError, "NaN or infinity"),
    (lambda m, b: paste_masks_in_image(m, b, H), ValueError, "img_shape"),
    (lambda m, b: paste_masks_in_image(m, b, (H, W), padding=-1), ValueError, "padding"),
])
def test_bad_input(rng, call, error, words):
    masks = rng.random((3, 1, 28, 28)).astype(np.float32)
    boxes = _boxes(rng, 0)[:3].astype(np.float32)
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        call(masks, boxes)
