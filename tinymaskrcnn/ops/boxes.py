"""Box ops under torchvision.ops.boxes names: areas, IoU, clipping, small-box removal and NMS.

Every box is a row ``(x1, y1, x2, y2)`` in pixel coordinates ("xyxy"), with no "+1": a box
from x = 2 to x = 5 is 3 wide, the convention of torchvision.ops.boxes, which the tests hold
these functions equal to. ``box_iou`` scores every (ground truth, anchor or proposal) pair for
the matcher (models/matcher.py); ``clip_boxes_to_image`` and ``remove_small_boxes`` tidy
decoded boxes before NMS.

NMS and batched NMS select boxes rather than compute values, so nothing here has a backward:
the functions take arrays (or Tensors, whose data is used), NumPy or CuPy, and return arrays.

dtypes, as torchvision: ``box_area`` and ``box_iou`` widen float16 boxes to float32 before
computing (an 800-pixel box has an area of 640000, above float16's largest value, 65504, so in
float16 its IoU would be inf/inf = NaN); ``clip_boxes_to_image`` and ``remove_small_boxes``
work in the boxes' dtype; NMS takes float32 and float64 (torchvision's CPU NMS refuses float16
too). Integer boxes are refused: torchvision accepts them, but a box here is a floating array.
"""
import numpy as np

from ..core.autograd import Tensor
from ..core.backend import get_array_module, is_cupy, uses_cuda_kernels
from ..functional.arguments import kernel_dtype
from ..functional.dispatch import kernel_for

__all__ = ["box_area", "box_iou", "clip_boxes_to_image", "remove_small_boxes", "nms", "batched_nms"]


def as_array(x, name):
    """The array inside ``x``: a Tensor's data, a NumPy/CuPy array as is, a list made an array."""
    if isinstance(x, Tensor):
        return x.data
    if isinstance(x, np.ndarray) or is_cupy(x):
        return x
    try:
        return np.asarray(x)
    except Exception as e:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}") from e


def check_boxes(boxes, name="boxes", batched=False):
    """Validate a box array and return it: floating, shape (N, 4), or (..., 4) if ``batched``."""
    boxes = as_array(boxes, name)
    if batched:
        shape_ok = boxes.ndim >= 1 and boxes.shape[-1] == 4
    else:
        shape_ok = boxes.ndim == 2 and boxes.shape[1] == 4
    if not shape_ok:
        want = "(..., 4)" if batched else "(N, 4)"
        raise ValueError(f"{name} must have shape {want} with rows (x1, y1, x2, y2), got shape {tuple(boxes.shape)}")
    if boxes.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating array, got dtype {boxes.dtype}: use .astype(np.float32)")
    return boxes


def _widened(boxes):
    """float16 boxes as float32 (torchvision's upcast: a product of coordinates overflows float16)."""
    return boxes.astype(np.float32) if boxes.dtype == np.float16 else boxes


def box_area(boxes):
    """Area of each box, (x2 - x1) * (y2 - y1): (N, 4) → (N,). An inverted box has a negative
    area, as in torchvision; float16 boxes give float32 areas."""
    boxes = _widened(check_boxes(boxes))
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1, boxes2):
    """Intersection over union of every pair: (N, 4) and (M, 4) → (N, M).

    The intersection of two boxes is the box from the larger of the top-left corners to the
    smaller of the bottom-right corners, empty (area 0) when that has negative width or height:

        inter = max(0, min(x2, x2') - max(x1, x1')) · max(0, min(y2, y2') - max(y1, y1'))
        iou   = inter / (area + area' - inter)

    Two empty boxes give 0/0 = NaN, as in torchvision; float16 boxes give a float32 IoU.
    """
    boxes1, boxes2 = _widened(check_boxes(boxes1, "boxes1")), _widened(check_boxes(boxes2, "boxes2"))
    xp = get_array_module(boxes1, boxes2)
    area1, area2 = box_area(boxes1), box_area(boxes2)
    top_left = xp.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = xp.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = xp.maximum(bottom_right - top_left, 0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):  # degenerate pairs give NaN, like torch
        return inter / union


def _image_size(size_hw):
    try:
        height, width = (float(s) for s in size_hw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"size_hw must be (height, width), got {size_hw!r}") from e
    return height, width


def clip_boxes_to_image(boxes, size_hw):
    """Clamp x into [0, width] and y into [0, height]; boxes (..., 4), size_hw = (height, width).

    Any leading shape is kept, so the (N, num_classes, 4) per-class boxes of the box head clip
    in one call.
    """
    boxes = check_boxes(boxes, batched=True)
    xp = get_array_module(boxes)
    height, width = _image_size(size_hw)
    clipped = xp.empty_like(boxes)
    clipped[..., 0::2] = xp.clip(boxes[..., 0::2], 0, width)
    clipped[..., 1::2] = xp.clip(boxes[..., 1::2], 0, height)
    return clipped


def remove_small_boxes(boxes, min_size):
    """Indices (int64) of the boxes whose width and height are both at least ``min_size``."""
    boxes = check_boxes(boxes)
    xp = get_array_module(boxes)
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return xp.nonzero((widths >= min_size) & (heights >= min_size))[0].astype(np.int64)

# Above this many box coordinates, torchvision's batched_nms runs one NMS per class instead of
# one NMS over offset boxes. The two differ in rounding, so we switch where torchvision's CPU
# path does, on both devices: the GPU and CPU paths then run one algorithm on one input and keep
# the same boxes (torchvision's GPU path switches at 100,000).
PER_CLASS_ABOVE = 4000


def _check_scores(scores, boxes, name="scores"):
    scores = as_array(scores, name)
    if scores.ndim != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"{name} must have shape ({boxes.shape[0]},), one per box, got {tuple(scores.shape)}")
    return scores


def nms(boxes, scores, iou_threshold):
    """Greedy non-maximum suppression: indices (int64) of the kept boxes, highest score first.

    A box is dropped when its IoU with a higher-scoring kept box is greater than
    ``iou_threshold``; among equal scores the lower index goes first. See
    ``tinymaskrcnn.kernels.nms`` for the algorithm and its NumPy twin. Empty boxes must still be
    (0, 4), as in torchvision's nms (batched_nms takes any empty array).
    """
    boxes = check_boxes(boxes)
    kernel_dtype("nms", "boxes", boxes.dtype)
    scores = _check_scores(scores, boxes)
    if scores.dtype.kind != "f":
        raise TypeError(f"scores must be a floating array, got dtype {scores.dtype}")
    xp = get_array_module(boxes)
    if boxes.shape[0] == 0:
        return xp.zeros(0, dtype=np.int64)
    # on the host only: on the GPU the check would cost a synchronisation per call; NaN scores
    # sort last there, and a model that gives them has NaN losses, which the trainer stops on
    if xp is np and bool(xp.isnan(scores).any()):
        raise ValueError(f"scores contain {int(xp.isnan(scores).sum())} NaN values: NMS cannot rank them "
                         "(a NaN score usually means the model diverged)")
    return kernel_for("nms", boxes)(xp.ascontiguousarray(boxes), xp.ascontiguousarray(scores), float(iou_threshold))


def batched_nms(boxes, scores, idxs, iou_threshold):
    """NMS within each category: boxes with different ``idxs`` never suppress each other.

    Returns int64 indices of the kept boxes, highest score first. Small inputs use the
    coordinate trick: every category's boxes are shifted by (category · (max coordinate + 1))
    so that boxes of different categories cannot overlap, and one NMS does all categories.
    Large inputs run NMS per category (on the GPU in one launch), which keeps the work small.
    Either way the answer is torchvision's CPU path's, which makes the same choice at the same
    size (``PER_CLASS_ABOVE``, the same on both devices).
    Boxes with no element, whatever their shape, keep nothing, as in torchvision.
    """
    boxes = as_array(boxes, "boxes")
    if boxes.size == 0:
        return get_array_module(boxes).zeros(0, dtype=np.int64)
    boxes = check_boxes(boxes)
    kernel_dtype("batched_nms", "boxes", boxes.dtype)
    scores = _check_scores(scores, boxes)
    idxs = _check_scores(idxs, boxes, "idxs")
    if idxs.dtype.kind not in "iu":
        raise TypeError(f"idxs must be integer category ids, got dtype {idxs.dtype}: use .astype(np.int64)")
    if boxes.size > PER_CLASS_ABOVE:
        return _batched_nms_per_class(boxes, scores, idxs, iou_threshold)
    # offsets computed in the boxes' dtype, as torchvision does, so the shifted boxes round alike
    offsets = idxs.astype(boxes.dtype) * (boxes.max() + boxes.dtype.type(1))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def _batched_nms_per_class(boxes, scores, idxs, iou_threshold):
    """One NMS per category, then all kept boxes ordered by score (ties: lower index first)."""
    xp = get_array_module(boxes)
    if uses_cuda_kernels(boxes):
        # the CUDA kernel takes the categories and never lets two of them meet: NMS per
        # category in one launch, without a host round trip per category
        return kernel_for("nms", boxes)(xp.ascontiguousarray(boxes), xp.ascontiguousarray(scores),
                                        float(iou_threshold), idxs)
    # group the box indices by category, each group in ascending index order (the tie order)
    by_category = np.argsort(idxs, kind="stable")
    starts = np.nonzero(np.diff(idxs[by_category]))[0] + 1
    keep = np.sort(np.concatenate([members[nms(boxes[members], scores[members], iou_threshold)]
                                   for members in np.split(by_category, starts)]))
    # torchvision's final sort here is unstable; equal scores across categories may come out
    # in another order there, we keep the lower index first
    return keep[np.argsort(-scores[keep], kind="stable")].astype(np.int64)
