"""Anchors: the fixed reference boxes the RPN scores and regresses.

Each FPN level ``l`` has a small set of *cell anchors*, boxes centred on the origin, one per
(aspect ratio, size) pair. With ratio ``r = h / w`` (torchvision's convention: r = 2 is a tall
box) and size ``s``, the box keeps the area ``s²``::

    h = s · sqrt(r),   w = s / sqrt(r),   cell anchor = round([-w, -h, w, h] / 2)

(rounded half to even, computed in float32 as torchvision does, so every size rounds alike).
The cell anchors are then copied to every position of the level's feature grid::

    stride = padded image size // feature size          (integer division, per axis)
    anchor[y, x, a] = cell_anchor[a] + (x·stride_w, y·stride_h, x·stride_w, y·stride_h)

The shift is the top-left corner of the cell, not its centre (torchvision has no half-cell
offset). The anchors of one image are the levels concatenated, each level in row-major grid
order with the A anchors of a position together: the order the RPN head's outputs are
flattened in. Every image of a batch shares them, since they depend only on the padded size.
"""
import numpy as np

from .. import nn
from ..core.autograd import as_array
from ..core.backend import get_array_module, get_default_dtype


def generate_cell_anchors(sizes, aspect_ratios):
    """The (len(aspect_ratios)·len(sizes), 4) zero-centred anchors of one level, ratio-major.

    Computed in float32 whatever the model's dtype, as torchvision does: the values are
    rounded to integers, and float32 arithmetic decides which way a near-half rounds.
    """
    scales = np.asarray(sizes, dtype=np.float32)
    ratios = np.asarray(aspect_ratios, dtype=np.float32)
    h_ratios = np.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / 2)


def _hw(shape, what):
    """The last two entries of a shape as a pair of ints."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"{what} needs at least (H, W), got shape {shape}")
    return shape[-2:]


class AnchorGenerator(nn.Module):
    """torchvision's AnchorGenerator: anchors for every level of a feature pyramid.

    Args:
        sizes: one tuple of sizes (square-root areas, pixels) per level.
        aspect_ratios: one tuple of ratios h / w per level (or one tuple shared by all levels).

    Call it as torchvision's, ``gen(image_list, feature_maps)``, or with plain shapes,
    ``gen((H, W), [(h0, w0), (h1, w1), ...])`` where (H, W) is the padded image size; either
    way it returns one (sum over levels of h·w·A, 4) array per image. To look at one level,
    ``gen.grid_anchors((H, W), grid_sizes)[level]`` has shape (h, w, A, 4): the A anchors of
    the cell at row y, column x are ``[..][y, x]``.
    """

    def __init__(self, sizes=((32,), (64,), (128,), (256,), (512,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5):
        super().__init__()
        # torchvision's shorthands: flat sizes mean one size per level; one flat ratio tuple is
        # shared by every level
        if not isinstance(sizes[0], (list, tuple)):
            sizes = tuple((s,) for s in sizes)
        if not isinstance(aspect_ratios[0], (list, tuple)):
            aspect_ratios = (tuple(aspect_ratios),) * len(sizes)
        if len(sizes) != len(aspect_ratios):
            raise ValueError(f"sizes has {len(sizes)} levels but aspect_ratios has {len(aspect_ratios)}: "
                             f"give one tuple of each per feature map")
        for level, (s, r) in enumerate(zip(sizes, aspect_ratios)):
            if len(s) == 0 or len(r) == 0 or min(s) <= 0 or min(r) <= 0:
                raise ValueError(f"level {level}: sizes {tuple(s)} and aspect_ratios {tuple(r)} must be "
                                 f"non-empty and positive")
        self.sizes = tuple(tuple(s) for s in sizes)
        self.aspect_ratios = tuple(tuple(r) for r in aspect_ratios)
        self.cell_anchors = [generate_cell_anchors(s, r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def extra_repr(self):
        return f"sizes={self.sizes}, aspect_ratios={self.aspect_ratios}"

    def num_anchors_per_location(self):
        """A, the number of anchors at each grid position, per level."""
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def strides(self, image_size, grid_sizes):
        """(stride_h, stride_w) per level: padded image size // feature size, per axis."""
        image_h, image_w = _hw(image_size, "image_size")
        strides = []
        for level, grid in enumerate(grid_sizes):
            grid_h, grid_w = _hw(grid, f"grid size of level {level}")
            if not (0 < grid_h <= image_h and 0 < grid_w <= image_w):
                raise ValueError(f"feature map {level} of size {(grid_h, grid_w)} does not fit the padded image "
                                 f"size {(image_h, image_w)}: pass the padded batch size, and non-empty maps")
            strides.append((image_h // grid_h, image_w // grid_w))
        return strides

    def grid_anchors(self, image_size, grid_sizes, dtype=None, xp=np):
        """The anchors of each level laid out on its grid: a list of (h, w, A, 4) arrays.

        ``image_size`` is the padded (H, W); ``grid_sizes`` the (h, w) of each level (shapes of
        feature maps are accepted, their last two entries are used).
        """
        grid_sizes = [_hw(g, f"grid size of level {i}") for i, g in enumerate(grid_sizes)]
        if len(grid_sizes) != len(self.cell_anchors):
            raise ValueError(f"got {len(grid_sizes)} feature maps but the generator has {len(self.cell_anchors)} "
                             f"levels (sizes {self.sizes}): give one size and ratio tuple per feature map")
        dtype = np.dtype(get_default_dtype() if dtype is None else dtype)
        out = []
        for (grid_h, grid_w), (stride_h, stride_w), cell in zip(
                grid_sizes, self.strides(image_size, grid_sizes), self.cell_anchors):
            shift_x = xp.arange(grid_w) * stride_w
            shift_y = xp.arange(grid_h) * stride_h
            shift_y, shift_x = xp.meshgrid(shift_y, shift_x, indexing="ij")
            shifts = xp.stack([shift_x, shift_y, shift_x, shift_y], axis=-1).astype(dtype)  # (h, w, 4)
            out.append(shifts[:, :, None, :] + xp.asarray(cell, dtype=dtype))
        return out

    def forward(self, images, feature_maps, dtype=None):
        """One (total anchors, 4) array per image, levels concatenated in the RPN's order.

        ``images``: an ImageList (``.tensors`` padded batch, ``.image_sizes``), a padded batch
        (N, C, H, W) array or Tensor, or a padded size (H, W) standing for one image.
        ``feature_maps``: the feature arrays/Tensors (N, C, h, w) of each level, or their shapes.
        The anchors take the features' dtype and array module; with shapes, ``dtype`` (default:
        the project default, float32).
        """
        if hasattr(images, "tensors") and hasattr(images, "image_sizes"):
            image_size, num_images = images.tensors.shape[-2:], len(images.image_sizes)
        elif getattr(images, "ndim", 1) != 1:
            if images.ndim != 4:
                raise ValueError(f"a padded batch must be (N, C, H, W), got shape {tuple(images.shape)}")
            image_size, num_images = images.shape[-2:], images.shape[0]
        else:
            image_size, num_images = images, 1
        maps = [as_array(f) for f in feature_maps]
        arrays = [m for m in maps if hasattr(m, "dtype")]
        xp = get_array_module(*arrays)
        if arrays:
            dtype = arrays[0].dtype
        grid_sizes = [m.shape if hasattr(m, "shape") else m for m in maps]
        levels = self.grid_anchors(image_size, grid_sizes, dtype, xp)
        anchors = xp.concatenate([level.reshape(-1, 4) for level in levels])
        # every image gets the same anchors (they depend only on the padded size), each its own
        # copy so that editing one image's anchors cannot change another's; no image, no anchors
        return [anchors if i == 0 else anchors.copy() for i in range(int(num_images))]
