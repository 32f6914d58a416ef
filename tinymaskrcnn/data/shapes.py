"""Synthetic shapes: circles, squares and triangles drawn as exact pixel masks.

The masks are computed analytically on the pixel grid (pixel centres at integer + 0.5), so a
shape's mask, box and area agree by construction. The detection data set of later chapters
and the classification set of the demo both draw with ``shape_mask``.
"""
import numpy as np

SHAPES = ("circle", "square", "triangle")


def shape_mask(kind, cx, cy, size, height, width, angle=0.0):
    """Boolean (height, width) mask of a shape centred at (cx, cy) with half-extent ``size``.

    circle: radius ``size``; square: half side ``size`` rotated by ``angle`` radians;
    triangle: equilateral with circumradius ``size``, rotated by ``angle``.
    """
    ys, xs = np.mgrid[0:height, 0:width]
    x, y = xs + 0.5 - cx, ys + 0.5 - cy
    if kind == "circle":
        return x * x + y * y <= size * size
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * x + s * y, -s * x + c * y  # coordinates in the shape's own frame
    if kind == "square":
        return (np.abs(u) <= size) & (np.abs(v) <= size)
    if kind == "triangle":
        # inside all three half-planes whose outward normals point at 90°, 210° and 330°
        inside = np.ones_like(u, dtype=bool)
        for a in (np.pi / 2, np.pi * 7 / 6, np.pi * 11 / 6):
            inside &= u * np.cos(a) + v * np.sin(a) <= size / 2
        return inside
    raise ValueError(f"unknown shape {kind!r}: expected one of {SHAPES}")


def classification_set(n, size=32, seed=0, dtype=np.float32):
    """``n`` images (n, 3, size, size) in [0, 1], each one random shape on a noisy background,
    and their labels (index into SHAPES)."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, size, size), dtype=dtype)
    labels = rng.integers(0, len(SHAPES), n)
    for i, label in enumerate(labels):
        background = rng.uniform(0, 0.5, 3)
        colour = rng.uniform(0.5, 1.0, 3)
        r = rng.uniform(size * 0.15, size * 0.3)
        cx, cy = rng.uniform(r + 1, size - r - 1, 2)
        mask = shape_mask(SHAPES[label], cx, cy, r, size, size, angle=rng.uniform(0, 2 * np.pi))
        img = background[:, None, None] + rng.normal(0, 0.05, (3, size, size))
        img = np.where(mask[None], colour[:, None, None], img)
        images[i] = np.clip(img, 0, 1)
    return images, labels
