"""ResNet (He et al., 2016), torchvision's version: the feature extractor under Mask R-CNN.

A ResNet is a stem (7×7 stride-2 conv, norm, ReLU, 3×3 stride-2 max pool: 1/4 resolution)
followed by four stages ``layer1..layer4``. Each stage is a stack of residual blocks
``y = relu(F(x) + shortcut(x))``; the first block of stages 2..4 halves the resolution and the
shortcut then becomes a strided 1×1 conv + norm (``downsample``) so the shapes match. The
stage outputs C2..C5 have strides 4, 8, 16, 32: those are the maps the FPN consumes.

Two block types:

- ``BasicBlock`` (ResNet-18/34): 3×3 conv → norm → ReLU → 3×3 conv → norm, + shortcut, ReLU.
- ``Bottleneck`` (ResNet-50/101/152): 1×1 conv (reduce to ``planes``) → 3×3 conv → 1×1 conv
  (expand to 4·planes), each followed by a norm, ReLU between. torchvision puts the stride in
  the 3×3 conv ("ResNet v1.5"); the original paper put it in the first 1×1 conv, which skips
  three quarters of the input positions before any 3×3 filter has seen them.

Module names are torchvision's (``conv1``, ``bn1``, ``layer2.0.downsample.0`` ...), so a
torchvision state_dict loads by name. ``norm_layer`` picks the normalisation: ``BatchNorm2d``
(classification training, torchvision's default) or ``FrozenBatchNorm2d`` (detection: the
batches are too small for batch statistics, so the ImageNet statistics and affine parameters
are fixed buffers).
"""
from collections import OrderedDict

from .. import nn
from ..weights.torchvision import load_torchvision, num_classes_in, read_weights

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def conv3x3(in_planes, out_planes, stride=1):
    """3×3 conv, padding 1 (keeps the size at stride 1), no bias: a norm layer follows."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    """1×1 conv without bias: changes the channel count (and, strided, the resolution)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convs: out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    The stride (if any) is in ``conv1``; ``downsample`` (or None for the identity) maps the
    input to the output's shape for the shortcut.
    """

    expansion = 1  # output channels = planes * expansion

    def __init__(self, inplanes, planes, stride=1, downsample=None, norm_layer=None):
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (carries the stride: v1.5) → 1×1 expand, + shortcut, ReLU.

    out = relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x)), with
    ``planes`` channels inside and ``4 * planes`` at the output.
    """

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, norm_layer=None):
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = norm_layer(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """torchvision's ResNet: stem, layer1..layer4, global average pool, ``fc`` classifier.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: number of blocks in each of the four stages, e.g. [3, 4, 6, 3] for ResNet-50.
        num_classes: outputs of ``fc``.
        zero_init_residual: start every block's last norm with weight 0, so each residual
            branch starts at zero and the block at the identity (Goyal et al., 2017).
        norm_layer: a callable ``norm_layer(num_channels) -> Module``; ``nn.BatchNorm2d`` by
            default, ``nn.FrozenBatchNorm2d`` for detection.

    ``forward(x)`` gives the (N, num_classes) logits; ``features(x)`` the stage outputs.
    """

    def __init__(self, block, layers, num_classes=1000, zero_init_residual=False, norm_layer=None):
        super().__init__()
        if block not in (BasicBlock, Bottleneck):
            raise TypeError(f"block must be BasicBlock or Bottleneck, got {block!r}")
        if len(layers) != 4:
            raise ValueError(f"layers must give the block count of the 4 stages, got {list(layers)}")
        norm_layer = norm_layer or nn.BatchNorm2d
        self.inplanes = 64  # channels entering the next stage; _make_layer advances it
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], 1, norm_layer)
        self.layer2 = self._make_layer(block, 128, layers[1], 2, norm_layer)
        self.layer3 = self._make_layer(block, 256, layers[2], 2, norm_layer)
        self.layer4 = self._make_layer(block, 512, layers[3], 2, norm_layer)
        # torchvision's avgpool (AdaptiveAvgPool2d(1)) has no state: forward takes the mean
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        # He initialisation with fan_out keeps the gradients' variance steady going backwards
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1.0)
                nn.init.constant_(m.bias, 0.0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    last_norm = m.bn3 if isinstance(m, Bottleneck) else m.bn2
                    nn.init.constant_(last_norm.weight, 0.0)  # a Parameter, or a frozen BN's buffer

    def _make_layer(self, block, planes, blocks, stride, norm_layer):
        """One stage: a first block that may change resolution and width, then ``blocks - 1`` more."""
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       norm_layer(planes * block.expansion))
        stage = [block(self.inplanes, planes, stride, downsample, norm_layer)]
        self.inplanes = planes * block.expansion
        stage += [block(self.inplanes, planes, norm_layer=norm_layer) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def features(self, x):
        """The outputs of layer1..layer4 (strides 4, 8, 16, 32) as an OrderedDict by name."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        maps = OrderedDict()
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            maps[name] = x
        return maps

    def forward(self, x):
        c5 = self.features(x)["layer4"]
        return self.fc(c5.mean(axis=(2, 3)))


_ARCHITECTURES = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
    "resnet152": (Bottleneck, [3, 8, 36, 3]),
}


def resnet(name, weights=None, progress=True, **kwargs):
    """Build a ResNet by torchvision's name ('resnet18' ... 'resnet152'); kwargs go to ResNet.

    ``weights``, as torchvision's: None (random), a path to a ``.pth`` file, or one of its names
    ('DEFAULT', 'IMAGENET1K_V1', 'ResNet50_Weights.IMAGENET1K_V2' or the enum member), found in
    torch's cache folder (``tm.weights.resolve_weights``). Weights fix ``num_classes`` (1000 for
    ImageNet). ``progress`` is accepted for torchvision's signature: nothing is downloaded.
    """
    if name not in _ARCHITECTURES:
        raise ValueError(f"unknown ResNet {name!r}: choose one of {', '.join(_ARCHITECTURES)}")
    state, _ = read_weights(weights, name)
    if state is not None:
        kwargs["num_classes"] = num_classes_in(state, "fc.weight", kwargs.get("num_classes"), name)
    block, layers = _ARCHITECTURES[name]
    model = ResNet(block, layers, **kwargs)
    if state is not None:
        load_torchvision(model, state)
    return model


def resnet18(*, weights=None, progress=True, **kwargs):
    """ResNet-18: BasicBlocks [2, 2, 2, 2]; ``weights`` as ``resnet``; kwargs as ResNet
    (num_classes, norm_layer, ...)."""
    return resnet("resnet18", weights, progress, **kwargs)


def resnet34(*, weights=None, progress=True, **kwargs):
    """ResNet-34: BasicBlocks [3, 4, 6, 3]."""
    return resnet("resnet34", weights, progress, **kwargs)


def resnet50(*, weights=None, progress=True, **kwargs):
    """ResNet-50: Bottlenecks [3, 4, 6, 3] (the Mask R-CNN backbone)."""
    return resnet("resnet50", weights, progress, **kwargs)


def resnet101(*, weights=None, progress=True, **kwargs):
    """ResNet-101: Bottlenecks [3, 4, 23, 3]."""
    return resnet("resnet101", weights, progress, **kwargs)


def resnet152(*, weights=None, progress=True, **kwargs):
    """ResNet-152: Bottlenecks [3, 8, 36, 3]."""
    return resnet("resnet152", weights, progress, **kwargs)
