"""Greedy non-maximum suppression: the NumPy twin and the Numba kernel.

A detector proposes many overlapping boxes for each object. Greedy NMS keeps the best one
and drops its near-duplicates:

    order the boxes by score, highest first (ties: lower index first)
    for each box i in that order, unless it was suppressed:
        keep i
        suppress every later box j with IoU(i, j) > iou_threshold

The result is the kept indices, highest score first. Only kept boxes run the inner loop, so
the work is O(n · kept), not O(n²), when most boxes are suppressed early.

Matching torchvision's CPU kernel to the bit:
- the order is a *stable* descending sort, so among equal scores the lower index wins;
- IoU is computed in the boxes' dtype (float32 stays float32), areas precomputed as
  (x2 - x1) · (y2 - y1);
- the comparison ``iou > iou_threshold`` is made in float64 (the threshold is a C++
  ``double`` there): a float32 IoU of exactly float32(0.3) *is* above 0.3.

Both functions take NumPy arrays already validated by ``tinymaskrcnn.ops.boxes.nms``: boxes (N, 4)
floating, scores (N,) floating without NaN, and return int64 indices.
"""
import numpy as np
from numba import njit


def nms_twin(boxes, scores, iou_threshold):
    """Indices (int64) kept by greedy NMS, highest score first (readable NumPy twin).

    Each kept box is compared with all boxes at once. Suppressing boxes that come earlier in
    the order (already kept or already dropped) changes nothing, since only later boxes are
    still to be visited.
    """
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        w = np.maximum(0, np.minimum(x2[i], x2) - np.maximum(x1[i], x1))
        h = np.maximum(0, np.minimum(y2[i], y2) - np.maximum(y1[i], y1))
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):  # two empty boxes: 0/0 = NaN, never suppresses
            iou = inter / (areas[i] + areas - inter)
        suppressed |= iou.astype(np.float64) > iou_threshold
    return np.array(keep, dtype=np.int64)


# error_model="numpy": 0/0 (two empty boxes) is NaN, as in C++, instead of Python's ZeroDivisionError
@njit(cache=True, error_model="numpy")
def nms(boxes, scores, iou_threshold):
    """Indices (int64) kept by greedy NMS, highest score first (Numba kernel)."""
    n = boxes.shape[0]
    order = np.argsort(-scores, kind="mergesort")  # mergesort is Numba's stable sort
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    # a zero of the boxes' dtype: max(float32, 0) would widen the IoU arithmetic to float64
    zero = boxes.dtype.type(0)
    threshold = np.float64(iou_threshold)
    suppressed = np.zeros(n, dtype=np.bool_)
    keep = np.empty(n, dtype=np.int64)
    num_kept = 0
    for a in range(n):
        i = order[a]
        if suppressed[i]:
            continue
        keep[num_kept] = i
        num_kept += 1
        for b in range(a + 1, n):
            j = order[b]
            if suppressed[j]:
                continue
            w = max(zero, min(x2[i], x2[j]) - max(x1[i], x1[j]))
            h = max(zero, min(y2[i], y2[j]) - max(y1[i], y1[j]))
            inter = w * h
            iou = inter / (areas[i] + areas[j] - inter)
            if iou > threshold:
                suppressed[j] = True
    return keep[:num_kept]
