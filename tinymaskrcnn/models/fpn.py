"""Feature Pyramid Network (Lin et al., 2017), torchvision's version.

The ResNet stages C2..C5 have strides 4..32: the deep ones know *what* is in the image, the
shallow ones *where*. The FPN gives every level both, with 256 channels everywhere so one RPN
head and one RoI head serve all levels:

    inner_k  = 1×1 conv of C_k                              (lateral: to 256 channels)
    M_5      = inner_5
    M_k      = inner_k + upsample_nearest(M_{k+1}, size of inner_k)   (top-down pathway)
    P_k      = 3×3 conv of M_k                              (smooths the upsampling seams)

Upsampling goes *to the lateral's size*, not by a factor 2: with input sizes that are not
multiples of 32 the maps halve with rounding up (e.g. 25 → 13), and a plain ×2 would not match.
An extra block adds coarser levels: ``LastLevelMaxPool`` appends 'pool' = P5 subsampled by 2
(a 1×1 max pool with stride 2), used by the RPN for the largest anchors.

Module and parameter names are torchvision's: ``inner_blocks.k.0.weight``,
``layer_blocks.k.0.bias`` (each conv sits in a one-element Sequential, as in torchvision's
Conv2dNormActivation without norm or activation).
"""
from collections import OrderedDict

from .. import functional as F
from .. import nn

__all__ = ["FeaturePyramidNetwork", "LastLevelMaxPool"]


class LastLevelMaxPool(nn.Module):
    """Extra FPN level 'pool': max_pool2d(kernel 1, stride 2) of the last FPN output.

    ``forward(results, inputs, names)`` gets the FPN outputs, the backbone maps it was given
    and their names, and returns the extended (results, names) as new lists.
    """

    def forward(self, results, inputs, names):
        pooled = F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0)
        return list(results) + [pooled], list(names) + ["pool"]


class FeaturePyramidNetwork(nn.Module):
    """Lateral 1×1 convs, nearest-neighbour top-down pathway, 3×3 output convs.

    Args:
        in_channels_list: channels of each input map, finest first (e.g. 256, 512, 1024, 2048).
        out_channels: channels of every output level (256 in Mask R-CNN).
        extra_blocks: an optional module like ``LastLevelMaxPool`` that appends levels.

    ``forward(maps)`` takes an OrderedDict name → (N, C_k, H_k, W_k), finest first, and returns
    an OrderedDict with the same names (plus those of the extra block) → (N, out_channels, H_k, W_k).
    """

    def __init__(self, in_channels_list, out_channels, extra_blocks=None):
        super().__init__()
        if not in_channels_list or any(int(c) <= 0 for c in in_channels_list):
            raise ValueError(f"in_channels_list must be a non-empty list of positive channel counts, got {in_channels_list}")
        self.in_channels_list = [int(c) for c in in_channels_list]
        self.inner_blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(c, out_channels, kernel_size=1))
                                           for c in self.in_channels_list])
        self.layer_blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1))
                                           for _ in self.in_channels_list])
        # torchvision's choice: uniform He init with a=1, i.e. bound sqrt(3 / fan_in), no ReLU gain
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0.0)
        self.extra_blocks = extra_blocks

    def forward(self, maps):
        if not isinstance(maps, dict):
            raise TypeError(f"the FPN takes an OrderedDict name -> feature map, got {type(maps).__name__}")
        names, feats = list(maps.keys()), list(maps.values())
        expected = self.in_channels_list
        got = [f.shape[1] for f in feats]
        if got != expected:
            raise ValueError(f"the FPN was built for input channels {expected}, got maps with channels {got} "
                             f"(shapes {[tuple(f.shape) for f in feats]})")

        last = len(feats) - 1
        top_down = self.inner_blocks[last](feats[last])
        results = [self.layer_blocks[last](top_down)]
        for k in range(last - 1, -1, -1):
            lateral = self.inner_blocks[k](feats[k])
            upsampled = F.interpolate(top_down, size=tuple(lateral.shape[-2:]), mode="nearest")
            top_down = lateral + upsampled
            results.insert(0, self.layer_blocks[k](top_down))

        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, feats, names)
        return OrderedDict(zip(names, results))
