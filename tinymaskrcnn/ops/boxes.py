"""Box ops under torchvision.ops names: ``nms``, ``batched_nms`` and ``box_iou``.

These select boxes rather than compute values, so they have no backward: they take arrays
(or Tensors, whose data is used) and return int64 indices into them.
"""
import numpy as np

from ..backend import get_array_module, is_cupy, to_numpy, uses_cuda_kernels
from ..boxes import as_array, box_iou, check_boxes
from ..kernels.nms import nms as _nms_kernel

__all__ = ["nms", "batched_nms", "box_iou"]

# Above this many box coordinates, torchvision's batched_nms runs one NMS per class instead of
# one NMS over offset boxes (on the GPU the limit is higher). The two differ in rounding, so
# we switch at the same sizes to give the same answer.
_PER_CLASS_ABOVE = {"cpu": 4000, "cuda": 100_000}


def _check_scores(scores, boxes, name="scores"):
    scores = as_array(scores, name)
    if scores.ndim != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"{name} must have shape ({boxes.shape[0]},), one per box, got {tuple(scores.shape)}")
    return scores


def nms(boxes, scores, iou_threshold):
    """Greedy non-maximum suppression: indices (int64) of the kept boxes, highest score first.

    A box is dropped when its IoU with a higher-scoring kept box is greater than
    ``iou_threshold``; among equal scores the lower index goes first. See
    ``tinymaskrcnn.kernels.nms`` for the algorithm and its NumPy twin.
    """
    boxes = check_boxes(boxes)
    scores = _check_scores(scores, boxes)
    if scores.dtype.kind != "f":
        raise TypeError(f"scores must be a floating array, got dtype {scores.dtype}")
    xp = get_array_module(boxes)
    if boxes.shape[0] == 0:
        return xp.zeros(0, dtype=np.int64)
    if bool(xp.isnan(scores).any()):
        raise ValueError(f"scores contain {int(xp.isnan(scores).sum())} NaN values: NMS cannot rank them "
                         "(a NaN score usually means the model diverged)")
    if uses_cuda_kernels(boxes):
        from ..kernels.cuda.nms import nms as cuda_nms
        return cuda_nms(boxes, scores, float(iou_threshold))
    return _nms_kernel(np.ascontiguousarray(boxes), np.ascontiguousarray(scores), float(iou_threshold))


def batched_nms(boxes, scores, idxs, iou_threshold):
    """NMS within each category: boxes with different ``idxs`` never suppress each other.

    Returns int64 indices of the kept boxes, highest score first. Small inputs use the
    coordinate trick: every category's boxes are shifted by (category · (max coordinate + 1))
    so that boxes of different categories cannot overlap, and one NMS does all categories.
    Large inputs run one NMS per category, which keeps each NMS small. Either way the answer
    is torchvision's, which makes the same choice at the same size (``_PER_CLASS_ABOVE``).
    """
    boxes = check_boxes(boxes)
    scores = _check_scores(scores, boxes)
    idxs = _check_scores(idxs, boxes, "idxs")
    if idxs.dtype.kind not in "iu":
        raise TypeError(f"idxs must be integer category ids, got dtype {idxs.dtype}: use .astype(np.int64)")
    xp = get_array_module(boxes)
    if boxes.shape[0] == 0:
        return xp.zeros(0, dtype=np.int64)
    if boxes.size > _PER_CLASS_ABOVE["cuda" if is_cupy(boxes) else "cpu"]:
        return _batched_nms_per_class(boxes, scores, idxs, iou_threshold)
    # offsets computed in the boxes' dtype, as torchvision does, so the shifted boxes round alike
    offsets = idxs.astype(boxes.dtype) * (boxes.max() + boxes.dtype.type(1))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def _batched_nms_per_class(boxes, scores, idxs, iou_threshold):
    """One NMS per category, then all kept boxes ordered by score."""
    xp = get_array_module(boxes)
    # group the box indices by category, each group in ascending index order (the tie order)
    by_category = xp.argsort(idxs, kind="stable")
    starts = xp.nonzero(xp.diff(idxs[by_category]))[0] + 1
    keep_mask = xp.zeros(boxes.shape[0], dtype=bool)
    for members in xp.split(by_category, to_numpy(starts).tolist()):
        keep_mask[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    keep = xp.nonzero(keep_mask)[0]
    # torchvision's final sort here is unstable; equal scores across categories may come out
    # in another order there, we keep the lower index first
    return keep[xp.argsort(-scores[keep], kind="stable")].astype(np.int64)
