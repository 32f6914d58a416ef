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


class PastedMasks:
    """The model's (N, 1, M, M) mask probabilities and their (N, 4) xyxy boxes, pasted into an
    (H, W) image one mask at a time, when indexed: ``masks[k]`` is mask k's (1, H, W) image,
    as ``paste_masks_in_image`` makes it (each mask is pasted on its own, so one at a time
    gives what all at once gives).

    What inference keeps instead of N full-size images: 20 detections on a 4032x3024 photo are
    1 GB of float32 pasted, and 100 on a 12000x12000 image 58 GB, while their M x M
    probabilities are a few hundred kB. Code that needs one mask at a time (COCO's RLE, a
    picture) indexes it; ``masks[keep]`` with an array selects masks without pasting any, and
    ``at_size`` pastes them into a resized image instead (a picture drawn smaller). ``shape``
    is that of the pasted stack.
    """

    def __init__(self, masks, boxes, image_size, padding=1):
        if len(masks) != len(boxes):
            raise ValueError(f"{len(masks)} masks but {len(boxes)} boxes: give one box per mask")
        self.masks, self.boxes, self.padding = masks, boxes, padding
        self.image_size = tuple(int(s) for s in image_size)
        self.shape = (len(masks), 1) + self.image_size
        self.dtype = masks.dtype

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            if not -len(self) <= index < len(self):
                raise IndexError(f"mask {index} of {len(self)}")
            k = int(index) % len(self)
            return paste_masks_in_image(self.masks[k:k + 1], self.boxes[k:k + 1], self.image_size, self.padding)[0]
        return PastedMasks(self.masks[index], self.boxes[index], self.image_size, self.padding)

    def __iter__(self):
        return (self[k] for k in range(len(self)))

    def at_size(self, height, width):
        """The same masks pasted into the image resized to (height, width): each box scaled by
        the per-axis ratio of the sizes."""
        h, w = self.image_size
        ratio = get_array_module(self.boxes).asarray([width / w, height / h, width / w, height / h],
                                                     dtype=self.boxes.dtype)
        return PastedMasks(self.masks, self.boxes * ratio, (height, width), self.padding)
