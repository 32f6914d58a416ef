"""MultiScaleRoIAlign: crop a fixed-size feature patch for each box from the FPN level that suits it.

A box of side sqrt(area) = s goes to level k = floor(4 + log2(s / 224) + 1e-6), clamped to the
levels present (2..5 for P2..P5): a 224-pixel box — an ImageNet-sized object — is read from
P4, and each halving of the side moves one level finer (FPN paper, eq. 1).
"""
import math

import numpy as np

from .. import nn
from ..core.autograd import cat
from ..core.backend import get_array_module, to_numpy
from .boxes import box_area
from ..functional.arguments import pair
from .roi_align import RoIAlign, roi_align


def boxes_to_rois(boxes):
    """Per-image (Ki, 4) boxes → (sum Ki, 5) rows [image index, x1, y1, x2, y2]."""
    xp = get_array_module(boxes[0])
    ids = [xp.full((len(b), 1), i, dtype=b.dtype) for i, b in enumerate(boxes)]
    return xp.concatenate([xp.concatenate(ids), xp.concatenate(boxes)], axis=1)


def infer_scale(feature_size, image_size):
    """The power of two nearest to feature height / image height (torchvision reads the height)."""
    return 2.0 ** round(math.log2(feature_size[0] / image_size[0]))


def map_levels(boxes, k_min, k_max, canonical_scale=224, canonical_level=4, eps=1e-6):
    """The FPN level index (0 = k_min) of every box of every image."""
    xp = get_array_module(boxes[0])
    s = xp.sqrt(xp.concatenate([box_area(b) for b in boxes]))
    k = xp.floor(canonical_level + xp.log2(s / canonical_scale) + eps)
    return (xp.clip(k, k_min, k_max) - k_min).astype(np.int64)


class MultiScaleRoIAlign(nn.Module):
    """RoIAlign from the FPN maps named ``featmap_names`` into (K, C, *output_size) patches.

    The scale of each map relative to the (largest unpadded) image is inferred from the shapes;
    each box is pooled from one level chosen by ``map_levels``. The result keeps the order of
    the boxes, and the gradient flows back into each level's feature map.
    """

    def __init__(self, featmap_names, output_size, sampling_ratio, canonical_scale=224, canonical_level=4):
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.output_size = pair(output_size, "output_size", "MultiScaleRoIAlign", 1)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def extra_repr(self):
        return f"featmap_names={self.featmap_names}, output_size={self.output_size}, sampling_ratio={self.sampling_ratio}"

    def forward(self, features, boxes, image_sizes):
        if len(image_sizes) == 0:
            raise ValueError("MultiScaleRoIAlign: image_sizes is empty: give one (height, width) per image")
        maps = [features[name] for name in self.featmap_names]
        largest = (max(h for h, _ in image_sizes), max(w for _, w in image_sizes))
        scales = [infer_scale(m.shape[-2:], largest) for m in maps]
        rois = boxes_to_rois(boxes)
        if len(maps) == 1:
            return roi_align(maps[0], rois, self.output_size, scales[0], self.sampling_ratio)
        k_min, k_max = int(-math.log2(scales[0])), int(-math.log2(scales[-1]))
        levels = map_levels(boxes, k_min, k_max, self.canonical_scale, self.canonical_level)
        xp = get_array_module(rois)
        # the boxes sorted by level (stably: each level's in box order) and cut at the level
        # sizes, read in one transfer: on the GPU one synchronisation, not one per level
        order = xp.argsort(levels, kind="stable")
        bounds = np.cumsum(to_numpy(xp.bincount(levels, minlength=len(maps))))[:-1].tolist()
        # RoIAlign without roi_align's checks of the boxes, which the model made: each check is
        # a host read, one per level
        pooled = [RoIAlign.apply(feature_map, xp.ascontiguousarray(rois[idx]), output_size=self.output_size,
                                 spatial_scale=scale, sampling_ratio=self.sampling_ratio, aligned=False)
                  for feature_map, scale, idx in zip(maps, scales, xp.split(order, bounds))]
        # patches come out grouped by level; gathering with the inverse permutation restores
        # the box order (and its backward scatters gradients back to each level's rows)
        return cat(pooled, dim=0)[xp.argsort(order)]
