"""nms and batched_nms against torchvision.ops, and the Numba kernel against its NumPy twin.

NMS returns indices, so every comparison is exact: same boxes kept, in the same order.
"""
import numpy as np
import pytest

import tinymaskrcnn as tm
from tinymaskrcnn.kernels.nms import nms as nms_kernel, nms_twin
from tinymaskrcnn.ops.boxes import batched_nms, nms

DTYPES = [np.float64, np.float32]
THRESHOLDS = [0.0, 0.3, 0.5, 0.7, 1.0]


def clustered_boxes(rng, n, dtype, tie_levels=None):
    """n boxes around a few centres (so many overlap), a few exact duplicates, and scores.

    With ``tie_levels`` the scores take only that many values, so most are tied.
    """
    centres = rng.uniform(20, 200, (max(n // 15, 1), 2))
    c = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 6, (n, 2))
    half = rng.uniform(4, 25, (n, 2))
    boxes = np.concatenate([c - half, c + half], axis=1)
    dup = rng.integers(0, n, n // 10)
    boxes[dup[: len(dup) // 2]] = boxes[dup[len(dup) // 2:][: len(dup) // 2]]
    scores = rng.integers(0, tie_levels, n) if tie_levels else rng.random(n)
    return boxes.astype(dtype), scores.astype(dtype)


def tv_nms(torch, boxes, scores, iou_threshold):
    from torchvision.ops import nms as tv

    return tv(torch.from_numpy(boxes), torch.from_numpy(scores), iou_threshold).numpy()


def tv_batched_nms(torch, boxes, scores, idxs, iou_threshold):
    from torchvision.ops import batched_nms as tv

    return tv(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(idxs), iou_threshold).numpy()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tie_levels", [None, 3])
def test_nms_matches_torchvision(torch, rng, dtype, tie_levels):
    boxes, scores = clustered_boxes(rng, 300, dtype, tie_levels)
    for threshold in THRESHOLDS:
        ours = nms(boxes, scores, threshold)
        assert ours.dtype == np.int64
        np.testing.assert_array_equal(ours, tv_nms(torch, boxes, scores, threshold), err_msg=f"iou {threshold}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_nms_threshold_compared_in_double(torch, dtype):
    """IoU 30/100 is float32(0.3) > 0.3 in float32 (suppressed), exactly 0.3 in float64 (kept)."""
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 3]], dtype=dtype)
    scores = np.array([2, 1], dtype=dtype)
    theirs = tv_nms(torch, boxes, scores, 0.3)
    np.testing.assert_array_equal(nms(boxes, scores, 0.3), theirs)
    np.testing.assert_array_equal(nms_twin(boxes, scores, 0.3), theirs)
    assert len(theirs) == (1 if dtype == np.float32 else 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tie_levels", [None, 4])
def test_kernel_equals_numpy_twin(rng, dtype, tie_levels):
    boxes, scores = clustered_boxes(rng, 400, dtype, tie_levels)
    boxes[:3] = [0.0, 0.0, 0.0, 0.0]  # empty boxes: 0/0 IoU must not suppress in either
    for threshold in THRESHOLDS:
        np.testing.assert_array_equal(nms_kernel(boxes, scores, threshold), nms_twin(boxes, scores, threshold))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,tie_levels", [(300, None), (300, 3), (1500, None)])
def test_batched_nms_matches_torchvision(torch, rng, dtype, n, tie_levels):
    """300 boxes take the coordinate-offset path, 1500 (6000 coordinates) the per-class path."""
    boxes, scores = clustered_boxes(rng, n, dtype, tie_levels)
    idxs = rng.integers(0, 5, n)
    for threshold in (0.3, 0.5, 0.7):
        ours = batched_nms(boxes, scores, idxs, threshold)
        assert ours.dtype == np.int64
        np.testing.assert_array_equal(ours, tv_batched_nms(torch, boxes, scores, idxs, threshold))


def test_batched_nms_per_class_path_with_ties(torch, rng):
    """Per-class path with tied scores: torchvision's final sort is unstable, so equal scores
    may come out in another order; the kept set and the score sequence must agree."""
    boxes, scores = clustered_boxes(rng, 1500, np.float32, tie_levels=3)
    idxs = rng.integers(0, 5, 1500)
    ours = batched_nms(boxes, scores, idxs, 0.5)
    theirs = tv_batched_nms(torch, boxes, scores, idxs, 0.5)
    np.testing.assert_array_equal(np.sort(ours), np.sort(theirs))
    np.testing.assert_array_equal(scores[ours], scores[theirs])
    assert all(np.all(np.diff(ours[scores[ours] == s]) > 0) for s in np.unique(scores))  # ties: index order


def test_batched_nms_takes_torchvisions_path_for_the_size(torch):
    """The two strategies round differently. Box 1 has IoU 0.500001 with box 0; shifted by the
    offset of category 100 its height rounds to 5 in float32, IoU exactly 0.5: not suppressed.
    torchvision shifts small inputs (box 1 kept) and loops over categories for large ones
    (box 1 suppressed), and so must we."""
    pair = np.array([[0, 0, 10, 10], [0, 0, 10, 5.00001]], np.float32)
    g = np.arange(1100)  # far-away, non-overlapping filler of category 0 to make the input large
    corners = np.stack([20 + 12 * (g % 40), 20 + 12 * (g // 40)], axis=1).astype(np.float32)
    for boxes, box1_kept in ((pair, True), (np.concatenate([pair, np.concatenate([corners, corners + 10], 1)]), False)):
        scores = np.linspace(1, 0, len(boxes)).astype(np.float32)
        idxs = np.zeros(len(boxes), np.int64)
        idxs[:2] = 100
        ours = batched_nms(boxes, scores, idxs, 0.5)
        np.testing.assert_array_equal(ours, tv_batched_nms(torch, boxes, scores, idxs, 0.5))
        assert (1 in ours) == box1_kept


def test_batched_nms_never_suppresses_across_categories(torch):
    boxes = np.tile(np.array([[0.0, 0.0, 10.0, 10.0]]), (4, 1))
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    idxs = np.array([0, 1, 0, 1])
    np.testing.assert_array_equal(batched_nms(boxes, scores, idxs, 0.5), [0, 1])
    np.testing.assert_array_equal(batched_nms(boxes, scores, idxs, 0.5),
                                  tv_batched_nms(torch, boxes, scores, idxs, 0.5))


def test_tensors_and_non_contiguous_inputs():
    boxes = np.asfortranarray([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
    scores = np.array([0.5, 0.9, 0.1, 0.0])[:3]
    np.testing.assert_array_equal(nms(tm.Tensor(boxes), tm.Tensor(scores), 0.5), [1, 2])


def test_bad_input_is_a_clear_error():
    boxes, scores = np.zeros((3, 4)), np.zeros(3)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        nms(np.zeros((3, 5)), scores, 0.5)
    with pytest.raises(ValueError, match=r"scores must have shape \(3,\)"):
        nms(boxes, np.zeros(4), 0.5)
    with pytest.raises(TypeError, match="floating"):
        nms(boxes, np.zeros(3, dtype=np.int64), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        nms(boxes, np.array([0.1, np.nan, 0.2]), 0.5)
    with pytest.raises(TypeError, match="integer category"):
        batched_nms(boxes, scores, np.zeros(3), 0.5)
    with pytest.raises(ValueError, match=r"idxs must have shape \(3,\)"):
        batched_nms(boxes, scores, np.zeros(2, dtype=np.int64), 0.5)
