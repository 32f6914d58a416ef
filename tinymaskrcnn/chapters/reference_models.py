"""Helpers for holding tinymaskrcnn side by side with torchvision (tests, benchmarks, notebooks).

Importing this module needs nothing; its functions import torch and torchvision when called
(the `reference` extra), and tinymaskrcnn itself never does.
"""
import os
import tempfile


def calibrate_frozen_batchnorm(module, x, seed=0):
    """Give every torchvision FrozenBatchNorm2d in ``module`` the statistics of its own input.

    A forward pass on ``x`` (a torch tensor) visits the layers in order; just before each
    frozen BN runs, its running mean and variance are set to its input's per-channel mean and
    variance, and its affine weight and bias to random values near 1 and 0. Every BN output is
    then of order one, so a 50-layer network with random weights neither explodes nor
    vanishes, and a comparison of its outputs means something.
    """
    import torch
    from torchvision.ops.misc import FrozenBatchNorm2d

    gen = torch.Generator().manual_seed(seed)

    def set_statistics(bn, args):
        inp = args[0]
        c = inp.shape[1]
        bn.running_mean.copy_(inp.mean(dim=(0, 2, 3)))
        bn.running_var.copy_(inp.var(dim=(0, 2, 3), unbiased=False))
        bn.weight.copy_(0.5 + torch.rand(c, generator=gen, dtype=bn.weight.dtype))
        bn.bias.copy_(0.2 * torch.randn(c, generator=gen, dtype=bn.bias.dtype))

    handles = [m.register_forward_pre_hook(set_statistics) for m in module.modules() if isinstance(m, FrozenBatchNorm2d)]
    try:
        with torch.no_grad():
            module(x.to(next(module.parameters()).dtype))
    finally:
        for h in handles:
            h.remove()


def torchvision_maskrcnn(num_classes=91, seed=0, calibration_size=(320, 448), **kwargs):
    """torchvision's maskrcnn_resnet50_fpn in the detection configuration (FrozenBatchNorm2d,
    three trainable layers) with random weights whose activations stay of order one."""
    import torch
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(seed)
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d,
                                   trainable_layers=3)
    model = MaskRCNN(backbone, num_classes=num_classes, **kwargs)
    gen = torch.Generator().manual_seed(seed + 1)
    calibrate_frozen_batchnorm(model.backbone, torch.rand((2, 3) + tuple(calibration_size), generator=gen) * 4 - 2, seed)
    return model


def save_state_dict(model, directory=None):
    """torch.save the model's state_dict to a .pth file and return its path."""
    import torch

    fd, path = tempfile.mkstemp(suffix=".pth", dir=directory)
    os.close(fd)
    torch.save(model.state_dict(), path)
    return path
