"""Boxes: IoU, clipping, the box coder, the matcher and the sampler.

Every box is a row ``(x1, y1, x2, y2)`` in pixel coordinates ("xyxy"), with no "+1": a box
from x = 2 to x = 5 is 3 wide. The same conventions as torchvision.ops.boxes and
torchvision.models.detection._utils, which the tests hold these functions equal to.

The pieces, in the order a detector uses them:

- ``box_iou`` scores every (ground truth, anchor or proposal) pair;
- ``Matcher`` turns that IoU matrix into one label per anchor: the index of its ground-truth
  box, or ``BELOW_LOW_THRESHOLD`` (background) or ``BETWEEN_THRESHOLDS`` (ignored);
- ``BalancedPositiveNegativeSampler`` picks the few hundred anchors the loss looks at;
- ``BoxCoder.encode`` turns each matched pair into the regression target the head learns,
  and ``BoxCoder.decode`` turns predicted deltas back into boxes;
- ``clip_boxes_to_image`` and ``remove_small_boxes`` tidy the decoded boxes before NMS
  (``tinymaskrcnn.ops.nms``).

Arrays in, arrays out (NumPy or CuPy, the module taken from the inputs): nothing here is
differentiated, the targets and proposals are constants of the loss.
"""
import math

import numpy as np

from .autograd import Tensor
from .backend import get_array_module, is_cupy
from .random import get_rng


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


def box_area(boxes):
    """Area of each box, (x2 - x1) * (y2 - y1): (N, 4) → (N,)."""
    boxes = check_boxes(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1, boxes2):
    """Intersection over union of every pair: (N, 4) and (M, 4) → (N, M).

    The intersection of two boxes is the box from the larger of the top-left corners to the
    smaller of the bottom-right corners, empty (area 0) when that has negative width or height:

        inter = max(0, min(x2, x2') - max(x1, x1')) · max(0, min(y2, y2') - max(y1, y1'))
        iou   = inter / (area + area' - inter)

    Two empty boxes give 0/0 = NaN, as in torchvision.
    """
    boxes1, boxes2 = check_boxes(boxes1, "boxes1"), check_boxes(boxes2, "boxes2")
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


class BoxCoder:
    """The box parametrisation of R-CNN: boxes as deltas from a reference box (anchor or proposal).

    With a reference box of centre (x_a, y_a) and size (w_a, h_a), a box of centre (x, y) and
    size (w, h) is coded as

        dx = wx · (x - x_a) / w_a        dw = ww · log(w / w_a)
        dy = wy · (y - y_a) / h_a        dh = wh · log(h / h_a)

    so the targets do not depend on where the box is or how big it is, and the weights
    (wx, wy, ww, wh) scale them to about unit variance: (1, 1, 1, 1) in the RPN, (10, 10, 5, 5)
    in the box head. Decoding inverts it; dw and dh are first clamped at ``bbox_xform_clip``
    (log(1000/16)) so that one wild prediction cannot overflow exp().
    """

    def __init__(self, weights, bbox_xform_clip=math.log(1000.0 / 16)):
        if len(weights) != 4:
            raise ValueError(f"BoxCoder weights must be 4 numbers (wx, wy, ww, wh), got {weights!r}")
        # Python floats, so they take the dtype of the arrays they scale (float32 stays float32).
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = float(bbox_xform_clip)

    def encode(self, reference_boxes, proposals):
        """Regression targets (N, 4) that move each proposal (N, 4) onto its reference box (N, 4).

        ``reference_boxes`` are the matched ground-truth boxes, ``proposals`` the anchors or
        proposals they were matched to (torchvision's argument order).
        """
        reference_boxes = check_boxes(reference_boxes, "reference_boxes")
        proposals = check_boxes(proposals, "proposals")
        if reference_boxes.shape[0] != proposals.shape[0]:
            raise ValueError(f"reference_boxes {tuple(reference_boxes.shape)} and proposals "
                             f"{tuple(proposals.shape)} must have one row per pair")
        xp = get_array_module(reference_boxes, proposals)
        # torchvision casts the weights to the reference boxes' dtype before multiplying
        wx, wy, ww, wh = (reference_boxes.dtype.type(w) for w in self.weights)
        ex_w, ex_h, ex_cx, ex_cy = _centre_size(proposals)
        gt_w, gt_h, gt_cx, gt_cy = _centre_size(reference_boxes)
        with np.errstate(divide="ignore", invalid="ignore"):  # degenerate boxes give inf/NaN, like torch
            return xp.stack([
                wx * (gt_cx - ex_cx) / ex_w,
                wy * (gt_cy - ex_cy) / ex_h,
                ww * xp.log(gt_w / ex_w),
                wh * xp.log(gt_h / ex_h),
            ], axis=1)

    def decode(self, rel_codes, boxes):
        """Boxes (N, K, 4) from deltas (N, 4·K) relative to reference boxes (N, 4).

        K is 1 for the RPN and the number of classes for the box head, whose every class
        predicts its own deltas for the same proposal.
        """
        boxes = check_boxes(boxes)
        rel_codes = as_array(rel_codes, "rel_codes")
        if rel_codes.ndim != 2 or rel_codes.shape[1] % 4 != 0 or rel_codes.shape[0] != boxes.shape[0]:
            raise ValueError(f"rel_codes must have shape (N, 4*K) with N = {boxes.shape[0]} boxes, "
                             f"got {tuple(rel_codes.shape)}")
        if rel_codes.dtype.kind != "f":
            raise TypeError(f"rel_codes must be a floating array, got dtype {rel_codes.dtype}")
        xp = get_array_module(rel_codes, boxes)
        boxes = boxes.astype(rel_codes.dtype, copy=False)
        widths, heights, ctr_x, ctr_y = (v[:, None] for v in _centre_size(boxes))
        wx, wy, ww, wh = self.weights
        dx = rel_codes[:, 0::4] / wx
        dy = rel_codes[:, 1::4] / wy
        dw = xp.minimum(rel_codes[:, 2::4] / ww, self.bbox_xform_clip)
        dh = xp.minimum(rel_codes[:, 3::4] / wh, self.bbox_xform_clip)
        pred_cx = dx * widths + ctr_x
        pred_cy = dy * heights + ctr_y
        half_w = 0.5 * (xp.exp(dw) * widths)
        half_h = 0.5 * (xp.exp(dh) * heights)
        return xp.stack([pred_cx - half_w, pred_cy - half_h, pred_cx + half_w, pred_cy + half_h], axis=2)


def _centre_size(boxes):
    """(width, height, centre x, centre y) of (N, 4) boxes, each (N,)."""
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return widths, heights, boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights


class Matcher:
    """Give each prediction (anchor or proposal) the index of its best ground-truth box, or a
    negative code.

    Called on an IoU matrix (M ground truths, N predictions), it returns N int64 labels: for
    each prediction, the ground truth with the highest IoU if that IoU is ≥ ``high_threshold``,
    ``BELOW_LOW_THRESHOLD`` (-1) if it is < ``low_threshold``, ``BETWEEN_THRESHOLDS`` (-2) in
    between. Ties between ground truths go to the lowest index.

    With ``allow_low_quality_matches`` (the RPN), every ground truth also claims the
    predictions of its highest IoU, however low, ties included, so no object is left without
    a positive anchor: those predictions get back their best ground truth.
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold, low_threshold, allow_low_quality_matches=False):
        if low_threshold > high_threshold:
            raise ValueError(f"Matcher needs low_threshold <= high_threshold, got low {low_threshold} "
                             f"and high {high_threshold}")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix):
        quality = as_array(match_quality_matrix, "match_quality_matrix")
        if quality.ndim != 2:
            raise ValueError(f"match_quality_matrix must be (num_gt, num_predictions), got shape {tuple(quality.shape)}")
        if quality.shape[0] == 0:
            raise ValueError("no ground-truth boxes for this image: handle images without objects before matching")
        if quality.shape[1] == 0:
            raise ValueError("no predicted boxes (anchors or proposals) for this image to match")
        xp = get_array_module(quality)
        best_gt = xp.argmax(quality, axis=0).astype(np.int64)  # first maximum on ties, as torch
        best_iou = quality.max(axis=0)
        matches = best_gt.copy()
        matches[best_iou < self.low_threshold] = self.BELOW_LOW_THRESHOLD
        matches[(best_iou >= self.low_threshold) & (best_iou < self.high_threshold)] = self.BETWEEN_THRESHOLDS
        if self.allow_low_quality_matches:
            best_per_gt = quality.max(axis=1)
            claimed = xp.nonzero(quality == best_per_gt[:, None])[1]
            matches[claimed] = best_gt[claimed]
        return matches


class BalancedPositiveNegativeSampler:
    """Pick ``batch_size_per_image`` labelled examples per image, at most ``positive_fraction``
    of them positive.

    Called on a list of per-image label arrays (≥ 1 positive, 0 negative, -1 ignored), it
    draws up to ``int(batch_size_per_image · positive_fraction)`` positives at random and fills
    the rest of the batch with random negatives (fewer when an image lacks them). Returns two
    lists of boolean masks, the chosen positives and the chosen negatives of each image
    (torchvision returns uint8 masks; booleans index arrays safely in NumPy). The draws come
    from ``tinymaskrcnn.random.get_rng()``, so ``manual_seed`` makes them repeatable.
    """

    def __init__(self, batch_size_per_image, positive_fraction):
        if int(batch_size_per_image) != batch_size_per_image or batch_size_per_image < 0:
            raise ValueError(f"batch_size_per_image must be a non-negative integer, got {batch_size_per_image!r}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction!r}")
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = positive_fraction

    def __call__(self, matched_idxs):
        if not isinstance(matched_idxs, (list, tuple)):
            raise TypeError("the sampler takes a list with one label array per image, "
                            f"got {type(matched_idxs).__name__}: wrap a single image's labels in a list")
        rng = get_rng()
        pos_masks, neg_masks = [], []
        for labels in matched_idxs:
            labels = as_array(labels, "labels")
            xp = get_array_module(labels)
            positive = xp.nonzero(labels >= 1)[0]
            negative = xp.nonzero(labels == 0)[0]
            num_pos = min(positive.size, int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.size, self.batch_size_per_image - num_pos)
            pos_masks.append(_random_subset_mask(positive, num_pos, labels.shape, rng, xp))
            neg_masks.append(_random_subset_mask(negative, num_neg, labels.shape, rng, xp))
        return pos_masks, neg_masks


def _random_subset_mask(candidates, k, shape, rng, xp):
    """Boolean mask of ``shape`` with ``k`` of the ``candidates`` (indices) chosen at random."""
    # the permutation is drawn on the host so the one project generator serves CuPy arrays too
    chosen = candidates[xp.asarray(rng.permutation(candidates.size)[:k])]
    mask = xp.zeros(shape, dtype=bool)
    mask[chosen] = True
    return mask
