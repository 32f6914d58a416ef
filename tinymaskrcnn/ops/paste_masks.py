"""Paste M × M mask probabilities into full-size images (torchvision's roi_heads.paste_masks_in_image).

Inference only, so no backward. The recipe (pad, grow the box, make it integer, bilinear
resize, clipped paste) and torchvision's rounding are explained in
``tinymaskrcnn/kernels/paste_masks.py``.
"""
import numpy as np

from ..core.autograd import as_array
from ..core.backend import get_array_module
from ..functional.dispatch import kernel_for


def paste_masks_in_image(masks, boxes, img_shape, padding=1):
    """(N, 1, H, W) images holding each (N, 1, M, M) mask pasted into its (N, 4) xyxy box.

    ``img_shape`` is (H, W); ``padding`` zero pixels are added around each mask before it is
    resized to the box grown by (M + 2·padding) / M. The result has the masks' dtype; a box
    wholly outside the image gives a zero image. Returns a plain array (no gradient).
    """
    masks, boxes = as_array(masks), as_array(boxes)
    xp = get_array_module(masks, boxes)
    masks, boxes = xp.asarray(masks), xp.asarray(boxes)
    if masks.ndim != 4 or masks.shape[1] != 1 or masks.shape[2] != masks.shape[3] or masks.shape[3] == 0:
        raise ValueError(f"masks must have shape (N, 1, M, M) with M > 0, got {tuple(masks.shape)}")
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) != len(masks):
        raise ValueError(f"boxes must have shape (N, 4) = ({len(masks)}, 4) to match masks {tuple(masks.shape)}, "
                         f"got {tuple(boxes.shape)}")
    for name, a in (("masks", masks), ("boxes", boxes)):
        if a.dtype not in (np.float32, np.float64):
            raise TypeError(f"{name} must be float32 or float64, got dtype {a.dtype}: use .astype(np.float32)")
    if not xp.isfinite(boxes).all():
        raise ValueError("boxes contain NaN or infinity: clip them to the image first")
    pair = isinstance(img_shape, (tuple, list)) and len(img_shape) == 2
    if not pair or not all(isinstance(s, (int, np.integer)) and s >= 0 for s in img_shape):
        raise ValueError(f"img_shape must be (height, width) as non-negative ints, got {img_shape!r}")
    if not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ValueError(f"padding must be a non-negative int, got {padding!r}")
    m = masks.shape[3]
    # the growth factor in the boxes' dtype: torchvision multiplies a float32 box by float32(s)
    scale = boxes.dtype.type(float(m + 2 * padding) / m)
    im_h, im_w = int(img_shape[0]), int(img_shape[1])
    out = kernel_for("paste_masks", masks, boxes)(xp.ascontiguousarray(masks[:, 0]), xp.ascontiguousarray(boxes),
                                                  im_h, im_w, int(padding), scale)
    return out[:, None]
