"""The box coder of R-CNN: a box as deltas from a reference box (anchor or proposal), and back.

``BoxCoder.encode`` turns each matched (ground truth, anchor or proposal) pair into the
regression target a head learns; ``BoxCoder.decode`` turns predicted deltas back into boxes.
Arrays in, arrays out (NumPy or CuPy): the targets are constants of the loss. The same
conventions as torchvision.models.detection._utils.BoxCoder, which the tests hold it equal to.
"""
import math

import numpy as np

from ..core.backend import get_array_module
from ..ops.boxes import as_array, check_boxes


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
