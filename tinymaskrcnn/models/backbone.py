"""ResNet + FPN = the Mask R-CNN backbone (torchvision's ``resnet_fpn_backbone``).

``BackboneWithFPN`` holds ``body`` (the ResNet's stem and stages, no avgpool/fc) and ``fpn``;
its state_dict keys are torchvision's (``body.layer1.0.conv1.weight``,
``fpn.inner_blocks.0.0.weight`` ...), so a torchvision Mask R-CNN checkpoint loads by name.

Freezing (``trainable_layers``): ImageNet features of the early layers are generic, and
fine-tuning them on small detection batches mostly adds noise, so torchvision trains only the
last ``trainable_layers`` of [layer4, layer3, layer2, layer1, conv1] (and bn1 too when all 5
are trainable). Frozen parameters get ``requires_grad = False``: no gradient is computed for
them and the optimizer leaves them alone.
"""
import numbers
import warnings
from collections import OrderedDict

from .. import nn
from .fpn import FeaturePyramidNetwork, LastLevelMaxPool
from .resnet import resnet

__all__ = ["BackboneWithFPN", "IntermediateLayerGetter", "resnet_fpn_backbone", "resnet_fpn_extractor",
           "validate_trainable_layers"]

# Last to first: trainable_layers = k trains the first k of these.
_TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")


class IntermediateLayerGetter(nn.Module):
    """Run a model's children in order and return the outputs of some of them.

    ``return_layers`` maps child name → output name (e.g. {'layer1': '0', ...}). Children after
    the last returned one are dropped (the ResNet's fc), and the remaining ones keep their names,
    so the state_dict keys stay the model's. Only works for models whose forward simply chains
    their children in registration order, as a ResNet without its head does.
    """

    def __init__(self, model, return_layers):
        super().__init__()
        children = [name for name, _ in model.named_children()]
        missing = [name for name in return_layers if name not in children]
        if missing:
            raise ValueError(f"return_layers {missing} are not children of the model (children: {children})")
        self.return_layers = {str(k): str(v) for k, v in return_layers.items()}
        self.layer_names = []
        remaining = set(self.return_layers)
        for name, child in model.named_children():
            if not remaining:
                break
            setattr(self, name, child)
            self.layer_names.append(name)
            remaining.discard(name)

    def forward(self, x):
        out = OrderedDict()
        for name in self.layer_names:
            x = getattr(self, name)(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


class BackboneWithFPN(nn.Module):
    """``body`` (IntermediateLayerGetter over a model) followed by ``fpn``.

    Args:
        backbone: the model whose children produce the maps (a ResNet).
        return_layers: child name → output name, finest first.
        in_channels_list: channels of those maps, in the same order.
        out_channels: FPN channels; kept as ``self.out_channels`` for the heads.
        extra_blocks: extra FPN levels; ``LastLevelMaxPool()`` when None.

    ``forward(images)`` maps an (N, 3, H, W) batch to an OrderedDict of (N, out_channels, h, w).
    """

    def __init__(self, backbone, return_layers, in_channels_list, out_channels, extra_blocks=None):
        super().__init__()
        self.body = IntermediateLayerGetter(backbone, return_layers)
        self.fpn = FeaturePyramidNetwork(in_channels_list, out_channels,
                                         extra_blocks if extra_blocks is not None else LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x):
        if getattr(x, "ndim", None) != 4 or x.shape[1] != 3:
            raise ValueError(f"the backbone takes an (N, 3, H, W) image batch, got shape {getattr(x, 'shape', None)}")
        return self.fpn(self.body(x))


def _check_trainable_layers(trainable_layers):
    if not isinstance(trainable_layers, numbers.Integral) or not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be an integer in [0, 5], got {trainable_layers!r}")


def _check_returned_layers(returned_layers):
    """The stages to return as a list, [1, 2, 3, 4] by default; each must be in 1..4."""
    returned_layers = [1, 2, 3, 4] if returned_layers is None else list(returned_layers)
    if not returned_layers or any(k not in (1, 2, 3, 4) for k in returned_layers):
        raise ValueError(f"returned_layers must be a non-empty list of stages in [1, 4], got {returned_layers}")
    return returned_layers


def freeze_resnet_layers(backbone, trainable_layers):
    """Set requires_grad False on every parameter outside the last ``trainable_layers`` layers.

    Which layers train: the first ``trainable_layers`` of (layer4, layer3, layer2, layer1,
    conv1), plus bn1 when all five train; everything else (incl. fc) is frozen.
    """
    _check_trainable_layers(trainable_layers)
    trainable = set(_TRAINABLE_ORDER[:trainable_layers])
    if trainable_layers == 5:
        trainable.add("bn1")
    for name, child in backbone.named_children():
        if name not in trainable:
            child.requires_grad_(False)


def resnet_fpn_extractor(backbone, trainable_layers, returned_layers=None, extra_blocks=None):
    """Wrap an existing ResNet (e.g. with ImageNet weights loaded) as a BackboneWithFPN.

    Freezes as ``freeze_resnet_layers``; ``returned_layers`` (default [1, 2, 3, 4]) picks the
    stages whose outputs feed the FPN, named '0', '1', ... in that order. With ImageNet weights::

        body = resnet50(weights="IMAGENET1K_V1", norm_layer=nn.FrozenBatchNorm2d)  # or a .pth path
        backbone = resnet_fpn_extractor(body, trainable_layers=3)
    """
    returned_layers = _check_returned_layers(returned_layers)
    freeze_resnet_layers(backbone, trainable_layers)
    return_layers = OrderedDict((f"layer{k}", str(i)) for i, k in enumerate(returned_layers))
    # layer1 has 64·expansion channels and each later stage doubles them
    c2 = backbone.layer1[0].expansion * 64
    in_channels_list = [c2 * 2 ** (k - 1) for k in returned_layers]
    return BackboneWithFPN(backbone, return_layers, in_channels_list, 256, extra_blocks=extra_blocks)


def resnet_fpn_backbone(backbone_name, *, weights=None, norm_layer=nn.FrozenBatchNorm2d, trainable_layers=3,
                        returned_layers=None, extra_blocks=None):
    """torchvision's ``resnet_fpn_backbone``, with its arguments.

    Args:
        backbone_name: 'resnet18', 'resnet34', 'resnet50', 'resnet101' or 'resnet152'.
        weights: the ResNet's weights, as ``resnet`` takes them: None, a ``.pth`` path, or
            torchvision's names ('IMAGENET1K_V1', 'DEFAULT' ...) found in torch's cache folder.
        norm_layer: ``nn.FrozenBatchNorm2d`` (detection default) or ``nn.BatchNorm2d``.
        trainable_layers: 0..5 layers trained, counted from layer4 backwards (see module doc).
        returned_layers: ResNet stages feeding the FPN, default [1, 2, 3, 4].
        extra_blocks: extra FPN levels, default ``LastLevelMaxPool`` ('pool').

    Returns a BackboneWithFPN with ``out_channels = 256`` whose outputs are '0'..'3', 'pool'.
    """
    # check the cheap arguments before building (and randomly initialising) the ResNet
    _check_trainable_layers(trainable_layers)
    _check_returned_layers(returned_layers)
    body = resnet(backbone_name, weights, norm_layer=norm_layer)
    return resnet_fpn_extractor(body, trainable_layers, returned_layers, extra_blocks)


def validate_trainable_layers(is_trained, trainable_backbone_layers, max_value, default_value):
    """How many backbone layers a detection builder trains, by torchvision's rule: with
    weights (``is_trained``) ``trainable_backbone_layers``, ``default_value`` when None;
    without any, all ``max_value`` of them, since frozen random layers would never learn (a
    value given then is overridden, with a warning, as torchvision does)."""
    if not is_trained:
        if trainable_backbone_layers is not None:
            warnings.warn(f"trainable_backbone_layers={trainable_backbone_layers} has no effect without weights or "
                          f"weights_backbone: all {max_value} layers train, as in torchvision", stacklevel=3)
        trainable_backbone_layers = max_value
    if trainable_backbone_layers is None:
        trainable_backbone_layers = default_value
    if not isinstance(trainable_backbone_layers, numbers.Integral) or not 0 <= trainable_backbone_layers <= max_value:
        raise ValueError(f"trainable_backbone_layers must be an integer in [0, {max_value}], got "
                         f"{trainable_backbone_layers!r}")
    return trainable_backbone_layers
