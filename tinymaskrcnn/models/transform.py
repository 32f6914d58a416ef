"""The transform around the network: images in, one padded batch out, and back again.

Before the backbone, each image is

1. normalised per channel, ``(x - mean) / std``;
2. resized so its short side becomes ``min_size`` unless that makes the long side exceed
   ``max_size``: ``scale = min(min_size / short, max_size / long)``, bilinear
   (align_corners=False), the output size ``floor(side · scale)`` and the sampling step then
   recomputed from the sizes (``recompute_scale_factor=True``, as torchvision calls it);
   a target's boxes are scaled by the per-axis ratio new size / old size and its masks
   resized nearest;
3. zero-padded, with the others, to one (N, C, H, W) batch whose H and W are multiples of
   ``size_divisible`` (so every FPN level divides evenly). ``image_sizes`` remembers each
   image's size before padding: boxes are clipped to it, not to the padded size.

After the heads, ``postprocess`` maps the detections back to each original image: boxes
scaled by old / new size, masks pasted into the full image (``paste_masks_in_image``).
"""
import numpy as np

from .. import functional as F
from .. import nn
from ..core.autograd import Tensor, as_array
from ..core.backend import get_array_module, to_numpy
from ..ops.paste_masks import paste_masks_in_image
from ..core.random import get_rng


class ImageList:
    """A padded batch (``tensors``, a (N, C, H, W) Tensor) and each image's size before
    padding (``image_sizes``, a list of (h, w) ints), as torchvision's ImageList."""

    def __init__(self, tensors, image_sizes):
        self.tensors = tensors
        self.image_sizes = image_sizes

    def __repr__(self):
        return f"ImageList(tensors of shape {tuple(self.tensors.shape)}, image_sizes={self.image_sizes})"


def resize_boxes(boxes, original_size, new_size):
    """Scale (K, 4) xyxy boxes from an image of ``original_size`` (h, w) to ``new_size``.

    x coordinates are multiplied by new_w / old_w, y by new_h / old_h. torchvision forms the
    two ratios in float32 whatever the boxes' dtype, so float64 boxes are scaled by a
    float32-rounded ratio; ours are too, or float64 results would differ at the 1e-8 level.
    """
    ratio_h, ratio_w = (np.float32(new) / np.float32(old) for new, old in zip(new_size, original_size))
    xp = get_array_module(boxes)
    return boxes * xp.asarray([ratio_w, ratio_h, ratio_w, ratio_h], dtype=boxes.dtype)


class GeneralizedRCNNTransform(nn.Module):
    """torchvision's GeneralizedRCNNTransform: normalise, resize, batch; and postprocess.

    Args:
        min_size: the short side after resizing; a tuple of choices in training (one drawn per
            image from ``tinymaskrcnn.core.random``), its last entry at inference.
        max_size: the cap on the long side after resizing.
        image_mean, image_std: per-channel normalisation.
        size_divisible: the padded batch's H and W are multiples of it.
        fixed_size: resize every image to this (width, height) instead (torchvision's order).

    ``transform(images, targets=None)`` takes a list of (C, H, W) floating arrays or Tensors
    and optional target dicts (``boxes`` (K, 4) xyxy, ``labels`` (K,), ``masks`` (K, H, W)),
    and returns ``(ImageList, targets)`` with the targets resized to match (new dicts; the
    inputs are not modified).
    """

    def __init__(self, min_size=800, max_size=1333, image_mean=(0.485, 0.456, 0.406),
                 image_std=(0.229, 0.224, 0.225), size_divisible=32, fixed_size=None):
        super().__init__()
        if not isinstance(min_size, (list, tuple)):
            min_size = (min_size,)
        if len(image_mean) != len(image_std):
            raise ValueError(f"image_mean has {len(image_mean)} channels but image_std has {len(image_std)}: "
                             f"give one value of each per channel")
        self.min_size = tuple(min_size)
        self.max_size = max_size
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)
        self.size_divisible = size_divisible
        self.fixed_size = fixed_size

    def extra_repr(self):
        return (f"Normalize(mean={self.image_mean}, std={self.image_std})\n"
                f"Resize(min_size={self.min_size}, max_size={self.max_size}, mode='bilinear')")

    # ----- the forward pass -------------------------------------------------------------------
    def forward(self, images, targets=None):
        images = self._check_images(images)
        if targets is not None:
            targets = self._check_targets(targets, images)
        resized, new_targets = [], []
        for image, target in zip(images, targets if targets is not None else [None] * len(images)):
            image, target = self.resize(self.normalize(image), target)
            resized.append(image)
            new_targets.append(target)
        image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in resized]
        batch = ImageList(Tensor(self.batch_images(resized, self.size_divisible)), image_sizes)
        return batch, (new_targets if targets is not None else None)

    def normalize(self, image):
        """(x - mean) / std per channel, in the image's dtype."""
        image = as_array(image)
        if image.dtype.kind != "f":
            raise TypeError(f"images must be floating (values in [0, 1]), got dtype {image.dtype}: "
                            f"convert with image.astype(np.float32) / 255")
        xp = get_array_module(image)
        mean = xp.asarray(self.image_mean, dtype=image.dtype)
        std = xp.asarray(self.image_std, dtype=image.dtype)
        return (image - mean[:, None, None]) / std[:, None, None]

    def _min_size(self):
        # draw only when there is a choice, so a fixed min_size leaves the project RNG untouched
        if self.training and len(self.min_size) > 1:
            return self.min_size[int(get_rng().integers(len(self.min_size)))]
        return self.min_size[-1]

    def resize(self, image, target=None):
        """Resize one normalised (C, H, W) image, and its target's boxes and masks to match."""
        h, w = image.shape[-2:]
        if self.fixed_size is not None:
            how = dict(size=(self.fixed_size[1], self.fixed_size[0]))
        else:
            scale = min(self._min_size() / min(h, w), self.max_size / max(h, w))
            how = dict(scale_factor=scale, recompute_scale_factor=True)
        image = as_array(F.interpolate(image[None], mode="bilinear", align_corners=False, **how))[0]
        if target is None:
            return image, None
        target = dict(target)
        target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
        if "masks" in target:
            target["masks"] = self._resize_masks(target["masks"], image.shape[-2:], how)
        return image, target

    @staticmethod
    def _resize_masks(masks, size, how):
        xp = get_array_module(masks)
        if masks.shape[0] == 0:
            return xp.zeros((0,) + tuple(size), dtype=np.uint8)
        # torchvision resizes masks as float32 (whatever the image dtype), nearest, back to uint8
        resized = F.interpolate(masks[:, None].astype(np.float32), mode="nearest", **how)
        return as_array(resized)[:, 0].astype(np.uint8)

    @staticmethod
    def batch_images(images, size_divisible=32):
        """Zero-pad (C, h, w) images into one (N, C, H, W) array, H and W multiples of size_divisible."""
        xp = get_array_module(*images)
        c, h, w = (max(int(img.shape[k]) for img in images) for k in range(3))
        h, w = (-(-s // size_divisible) * size_divisible for s in (h, w))  # round up
        batch = xp.zeros((len(images), c, h, w), dtype=images[0].dtype)
        for i, img in enumerate(images):  # indexed: iterating a device array makes an array per row
            batch[i, : img.shape[0], : img.shape[1], : img.shape[2]] = img
        return batch

    # ----- back to the original images ----------------------------------------------------------
    def postprocess(self, result, image_shapes, original_image_sizes, paste_masks=True):
        """Detections on the resized images → on the originals (inference only; in training
        the result is returned as it is). Boxes are rescaled; (K, 1, M, M) mask probabilities
        are pasted into (K, 1, H, W) images (left as they are with ``paste_masks`` False).
        Returns new dicts."""
        if self.training:
            return result
        out = []
        for pred, size, original in zip(result, image_shapes, original_image_sizes):
            pred = dict(pred)
            pred["boxes"] = resize_boxes(as_array(pred["boxes"]), size, original)
            if "masks" in pred and paste_masks:
                pred["masks"] = as_array(paste_masks_in_image(as_array(pred["masks"]), pred["boxes"], tuple(original)))
            out.append(pred)
        return out

    # ----- validation ---------------------------------------------------------------------------
    def _check_images(self, images):
        if not isinstance(images, (list, tuple)):
            raise TypeError(f"images must be a list of (C, H, W) arrays, got {type(images).__name__}: "
                            f"wrap a single image as [image]")
        if len(images) == 0:
            raise ValueError("images is an empty list: give at least one (C, H, W) image")
        images = [as_array(img) for img in images]
        channels = len(self.image_mean)
        for i, img in enumerate(images):
            if not hasattr(img, "dtype"):
                raise TypeError(f"image {i} is a {type(img).__name__}, not an array: pass NumPy/CuPy arrays or Tensors")
            if img.ndim != 3 or img.shape[0] != channels or 0 in img.shape:
                raise ValueError(f"image {i} has shape {tuple(img.shape)}; expected ({channels}, H, W) with H, W > 0 "
                                 f"(channels first: transpose an (H, W, {channels}) image with image.transpose(2, 0, 1))")
            if img.dtype.kind != "f":
                raise TypeError(f"image {i} has dtype {img.dtype}; images must be floating (values in [0, 1]): "
                                f"convert with image.astype(np.float32) / 255")
            if img.dtype != images[0].dtype:
                raise ValueError(f"image {i} is {img.dtype} but image 0 is {images[0].dtype}: give every image "
                                 f"the same dtype")
        return images

    def _check_targets(self, targets, images):
        if not isinstance(targets, (list, tuple)) or len(targets) != len(images):
            n = len(targets) if isinstance(targets, (list, tuple)) else type(targets).__name__
            raise ValueError(f"targets must be a list with one dict per image: got {n} for {len(images)} images")
        checked = []
        for i, (target, image) in enumerate(zip(targets, images)):
            if not isinstance(target, dict) or "boxes" not in target:
                raise ValueError(f"target {i} must be a dict with a 'boxes' entry (K, 4), got "
                                 f"{sorted(target) if isinstance(target, dict) else type(target).__name__}")
            target = {k: as_array(v) for k, v in target.items()}
            boxes = target["boxes"]
            if not hasattr(boxes, "dtype") or boxes.ndim != 2 or boxes.shape[1] != 4:
                raise ValueError(f"target {i}: boxes must be a (K, 4) array of (x1, y1, x2, y2), got shape "
                                 f"{getattr(boxes, 'shape', type(boxes).__name__)} (no boxes: np.zeros((0, 4)))")
            if boxes.dtype != image.dtype:
                # boxes take the images' dtype (integer pixel boxes included), so a float32 model
                # sees float32 targets; torchvision keeps their dtype and leans on torch's promotion
                boxes = target["boxes"] = boxes.astype(image.dtype)
            k = boxes.shape[0]
            labels = target.get("labels")
            if labels is not None and (labels.ndim != 1 or labels.shape[0] != k):
                raise ValueError(f"target {i}: labels has shape {tuple(labels.shape)} but there are {k} boxes: "
                                 f"give one label per box, shape ({k},)")
            masks = target.get("masks")
            if masks is not None and tuple(masks.shape) != (k,) + tuple(image.shape[1:]):
                raise ValueError(f"target {i}: masks has shape {tuple(masks.shape)}; expected ({k}, "
                                 f"{image.shape[1]}, {image.shape[2]}): one mask per box, the size of image {i}")
            checked.append(target)
        self._check_boxes([t["boxes"] for t in checked])
        return checked

    @staticmethod
    def _check_boxes(boxes):
        """Every box finite with x2 > x1 and y2 > y1, checked for all images in one host read."""
        xp = get_array_module(*boxes)
        bad = [~xp.isfinite(b).all(axis=1) | (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1]) for b in boxes]
        if not bool(xp.concatenate(bad).any()):
            return
        i = next(i for i, b in enumerate(bad) if b.any())
        j = int(xp.nonzero(bad[i])[0][0])
        raise ValueError(f"target {i}: box {j} {to_numpy(boxes[i][j]).tolist()} is degenerate: boxes must be "
                         f"finite (x1, y1, x2, y2) with x2 > x1 and y2 > y1; fix or drop it")
