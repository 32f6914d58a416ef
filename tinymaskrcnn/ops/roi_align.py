r"""RoIAlign: a fixed-size feature patch for each box, by bilinear sampling (torchvision.ops.roi_align).

Forward
-------
For RoI k (image b, box scaled to the map and, when ``aligned``, shifted by -1/2) cut into
ph × pw bins, each bin holding a grid of sample points s = (y_s, x_s):

    out[k, c, i, j] = (1 / count_k) Σ_{s in bin (i, j)} f(b, c, y_s, x_s)

where f reads the map by bilinear interpolation. With y0 = floor(y), y1 = y0 + 1, ly = y - y0,
hy = 1 - ly (x likewise),

    f(b, c, y, x) = hy·hx·X[b,c,y0,x0] + hy·lx·X[b,c,y0,x1] + ly·hx·X[b,c,y1,x0] + ly·lx·X[b,c,y1,x1]

(samples more than a pixel outside the map read 0; at the last row or column y1 = y0, x1 = x0;
see ``tinymaskrcnn/kernels/roi_align.py`` for torchvision's exact rules). So the output is
*linear* in the input: out = A X for a sparse matrix A whose row (k, c, i, j) holds the weights
w_{s,t} / count_k of the four taps t of each sample s, in the columns of the pixels they read.

Backward
--------
A linear map's gradient is its transpose: dL/dX = Aᵀ dL/dout, i.e. every tap hands its share
back to the pixel it read,

    dL/dX[b_k, c, y_t, x_t]  +=  (w_{s,t} / count_k) · dL/dout[k, c, i, j]     for all k, i, j, s, t.

Overlapping RoIs and neighbouring samples read the same pixels, so the contributions add up (a
scatter-add). The sample positions depend only on the boxes, never on X, which is why X is not
saved for the backward. The box coordinates enter only through the positions (piecewise
smooth, through floor); like torchvision, no gradient is given to the boxes.
"""
import numpy as np

from ..core.autograd import Function, as_array
from ..core.backend import get_array_module
from ..functional.arguments import kernel_dtype, pair
from ..functional.dispatch import kernel_for
from ..kernels.roi_align import sample_coordinates  # the sampling rule, for the figures


def _as_rois(boxes, dtype, xp):
    """(K, 5) rows [batch_index, x1, y1, x2, y2] from a (K, 5) array or a list of per-image (Ki, 4)."""
    if isinstance(boxes, (list, tuple)):
        parts = []
        for i, b in enumerate(boxes):
            b = xp.asarray(as_array(b))
            if b.ndim != 2 or b.shape[1] != 4:
                raise ValueError(f"boxes[{i}] has shape {tuple(b.shape)}; a list of boxes needs one (Ki, 4) array "
                                 f"of (x1, y1, x2, y2) per image")
            parts.append(xp.concatenate([xp.full((len(b), 1), i, dtype=dtype), b.astype(dtype)], axis=1))
        return xp.concatenate(parts, axis=0) if parts else xp.zeros((0, 5), dtype=dtype)
    rois = xp.asarray(as_array(boxes))
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"boxes has shape {tuple(rois.shape)}; give a (K, 5) array of rows "
                         f"[batch_index, x1, y1, x2, y2] or a list of per-image (Ki, 4) arrays")
    return rois.astype(dtype)


class RoIAlign(Function):
    """out = A(rois) X (forward), dL/dX = A(rois)ᵀ dL/dout (backward); see the module docstring."""

    def forward(self, input, rois, output_size, spatial_scale, sampling_ratio, aligned):
        kernel_dtype("roi_align", "input", input.dtype)  # callers that skip roi_align's checks included
        # the scale in the input's dtype keeps float32 box arithmetic in float32, as torchvision
        self.params = (input.dtype.type(spatial_scale), int(sampling_ratio), bool(aligned))
        self.rois, self.input_shape = rois, input.shape
        self.scatter = kernel_for("roi_align_backward", input)  # chosen with the forward's kernel
        input = get_array_module(input).ascontiguousarray(input)
        return kernel_for("roi_align_forward", input)(input, rois, *output_size, *self.params)

    def backward(self, grad_output):
        N, _, H, W = self.input_shape
        grad_output = get_array_module(grad_output).ascontiguousarray(grad_output)
        grad = self.scatter(grad_output, self.rois, N, H, W, *self.params)
        return grad, None


def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """torchvision.ops.roi_align: (K, C, *output_size) patches of ``input`` (N, C, H, W).

    ``boxes`` is a (K, 5) array of rows [batch_index, x1, y1, x2, y2] or a list of (Ki, 4)
    arrays, one per image (image i's boxes get batch index i); coordinates are in the image,
    mapped to the feature map by ``spatial_scale``. ``sampling_ratio`` > 0 takes that many
    samples per bin along each axis, ≤ 0 an adaptive ceil(roi_size / output_size).
    ``aligned=False`` is the legacy rule of torchvision's Mask R-CNN; ``aligned=True`` shifts by
    half a pixel (detectron2's ROIAlignV2). Boxes are cast to the input's dtype; the gradient
    flows to ``input`` only.
    """
    x = as_array(input)
    if not hasattr(x, "dtype") or x.ndim != 4:
        raise ValueError(f"input must be an (N, C, H, W) array, got shape {getattr(x, 'shape', type(x).__name__)}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"input must be float32 or float64, got dtype {x.dtype}: use .astype(np.float32)")
    N, _, H, W = x.shape
    output_size = pair(output_size, "output_size", "roi_align", 1)
    if not isinstance(sampling_ratio, (int, np.integer)):
        raise TypeError(f"sampling_ratio must be an int (samples per bin and axis; <= 0 for adaptive), "
                        f"got {sampling_ratio!r}")
    xp = get_array_module(x)
    rois = _as_rois(boxes, x.dtype, xp)
    if (H == 0 or W == 0) and len(rois):  # with no RoI there is nothing to read: an empty result
        raise ValueError(f"input has an empty feature map, shape {x.shape}: H and W must be > 0")
    batch = rois[:, 0].astype(np.int64)  # truncated, as torchvision reads the index
    # both checks in one reduction: on the GPU each host read is a synchronisation
    if len(rois) and bool(~xp.isfinite(rois).all() | (batch.min() < 0) | (batch.max() >= N)):
        if not xp.isfinite(rois).all():
            raise ValueError("boxes contain NaN or infinity: remove or clip them first")
        raise ValueError(f"box batch indices must lie in [0, {N}) for an input of {N} images, "
                         f"got values in [{batch.min()}, {batch.max()}]")
    return RoIAlign.apply(input, xp.ascontiguousarray(rois), output_size=output_size, spatial_scale=spatial_scale,
                          sampling_ratio=sampling_ratio, aligned=aligned)
