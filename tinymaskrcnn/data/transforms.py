"""Training-time transforms of ``(image, target)`` pairs, and a target sanitiser.

A transform is called as ``t(image, target, rng=None)`` and returns a new pair (inputs are not
modified). Randomness comes from ``rng`` when given (the DataLoader passes one derived from
(seed, epoch, index), so a resumed run repeats its augmentations) and otherwise from the
project generator ``tinymaskrcnn.core.random.get_rng()``. The DataLoader takes torchvision's
kind too, ``t(image, target)`` (``loader.takes_generator`` tells them apart by signature).
"""
import warnings

from ..core import random as tm_random
from ..core.backend import get_array_module

PER_INSTANCE_KEYS = ("boxes", "labels", "masks", "area", "iscrowd")  # indexed by instance


def hflip(image, target):
    """Mirror an image (..., H, W) and its target left to right.

    Pixel column j goes to W - 1 - j, so a box edge at x (pixels span [j, j + 1]) goes to
    W - x: [x1, y1, x2, y2] becomes [W - x2, y1, W - x1, y2] (the edges swap roles).
    """
    xp = get_array_module(image)
    width = image.shape[-1]
    target = dict(target)
    if "boxes" in target:
        boxes = target["boxes"]
        flipped = boxes.copy()
        flipped[:, 0] = width - boxes[:, 2]
        flipped[:, 2] = width - boxes[:, 0]
        target["boxes"] = flipped
    if "masks" in target:
        target["masks"] = xp.ascontiguousarray(target["masks"][..., ::-1])
    return xp.ascontiguousarray(image[..., ::-1]), target


class RandomHorizontalFlip:
    """Flip the image, boxes and masks left to right with probability ``p``.

    One number is drawn per call whether or not it flips, so the generator's position after
    a call does not depend on the outcome.
    """

    def __init__(self, p=0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip(p={p!r}): p is a probability in [0, 1]")
        self.p = p

    def __call__(self, image, target, rng=None):
        rng = tm_random.get_rng() if rng is None else rng
        if rng.random() < self.p:
            return hflip(image, target)
        return image, dict(target)

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class Compose:
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, target, rng=None):
        rng = tm_random.get_rng() if rng is None else rng
        for t in self.transforms:
            image, target = t(image, target, rng)
        return image, target

    def __repr__(self):
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


def target_problems(target):
    """[(instance index, what is wrong)] for boxes with x2 <= x1 or y2 <= y1 (or not finite)
    and empty masks; raises ValueError when the per-instance arrays disagree in length."""
    boxes = target["boxes"]
    xp = get_array_module(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"target boxes must have shape (K, 4), got {tuple(boxes.shape)}")
    sizes = {k: target[k].shape[0] for k in PER_INSTANCE_KEYS if k in target}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"target arrays disagree on the number of instances: {sizes}")
    problems = []
    finite = xp.isfinite(boxes).all(axis=1)
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    for k in range(boxes.shape[0]):
        box = [float(v) for v in boxes[k]]
        if not finite[k]:
            problems.append((k, f"box {box} is not finite"))
        elif width[k] <= 0 or height[k] <= 0:
            problems.append((k, f"box {box} has width {float(width[k]):g} and height {float(height[k]):g}"))
    if "masks" in target:
        masks = target["masks"]
        nonempty = masks.reshape(masks.shape[0], -1).any(axis=1)
        problems += [(k, "mask is empty") for k in range(masks.shape[0]) if not nonempty[k]]
    return sorted(problems)


def sanitize_target(target, image_id=None, drop=False):
    """Check a target for degenerate boxes and empty masks; return it (cleaned if ``drop``).

    Without ``drop`` any problem raises ValueError listing each bad instance with the image
    id; with ``drop`` the bad instances are removed from every per-instance array and a
    warning reports them. ``image_id`` defaults to ``target["image_id"]``.
    """
    problems = target_problems(target)
    if not problems:
        return target
    image_id = target.get("image_id") if image_id is None else image_id
    report = f"image {image_id}: " + "; ".join(f"instance {k}: {what}" for k, what in problems)
    if not drop:
        raise ValueError(f"{report}. Fix the annotations, or pass drop=True to leave these instances out")
    warnings.warn(f"{report} (dropped)")
    xp = get_array_module(target["boxes"])
    keep = xp.ones(target["boxes"].shape[0], dtype=bool)
    keep[[k for k, _ in problems]] = False
    return {k: (v[keep] if k in PER_INSTANCE_KEYS else v) for k, v in target.items()}


class SanitizeTarget:
    """``sanitize_target`` as a transform, for use inside ``Compose``."""

    def __init__(self, drop=True):
        self.drop = drop

    def __call__(self, image, target, rng=None):
        return image, sanitize_target(target, drop=self.drop)

    def __repr__(self):
        return f"SanitizeTarget(drop={self.drop})"
