"""The box heads against torchvision's, with the same weights: TwoMLPHead and FastRCNNConvFCHead
(convs with and without BatchNorm2d, train and eval mode), float64 forward and gradients."""
import numpy as np
import pytest
from helpers import compare_module_with_torch

import tinymaskrcnn as tm
from tinymaskrcnn.core.gradcheck import rel_error
from tinymaskrcnn.models import FastRCNNConvFCHead, TwoMLPHead


def _torch_state(module):
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _compare(ours, theirs, x, training):
    """Load theirs into ours (float64, the given mode) and compare_module_with_torch: returns
    the errors, and both modules."""
    theirs = theirs.double().train(training)
    ours.to(dtype=np.float64)
    ours.load_state_dict(_torch_state(theirs))
    ours.train(training)
    errors, _ = compare_module_with_torch(ours, theirs, x, seed=1)
    return errors, ours, theirs


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("norm", [None, "batch_norm"])
def test_conv_fc_head_matches_torchvision(torch, rng, norm, training):
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead as TorchHead

    torch.manual_seed(0)
    torch_norm = torch.nn.BatchNorm2d if norm else None
    theirs = TorchHead((6, 7, 7), [8, 5], [16, 12], norm_layer=torch_norm)
    if norm:  # eval mode must use running statistics that are not the initial (0, 1)
        with torch.no_grad():
            for m in theirs.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
    ours = FastRCNNConvFCHead((6, 7, 7), (8, 5), (16, 12), norm_layer=tm.nn.BatchNorm2d if norm else None)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = rng.standard_normal((9, 6, 7, 7))
    errors, ours, theirs = _compare(ours, theirs, x, training)
    assert any(k.startswith("gradient of") for k in errors) and max(errors.values()) < 1e-10, errors
    if norm and training:  # the running statistics moved the same way
        for (k, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
            assert rel_error(np.asarray(a, dtype=np.float64), b.numpy().astype(np.float64)) < 1e-10, k


def test_two_mlp_head_matches_torchvision(torch, rng):
    from torchvision.models.detection.faster_rcnn import TwoMLPHead as TorchHead

    torch.manual_seed(0)
    theirs = TorchHead(6 * 7 * 7, 16)
    errors, *_ = _compare(TwoMLPHead(6 * 7 * 7, 16), theirs, rng.standard_normal((5, 6, 7, 7)), True)
    assert max(errors.values()) < 1e-10, errors


def test_resnet18_model_takes_a_conv_box_head():
    model = tm.models.maskrcnn_resnet18_fpn(num_classes=4, fpn_channels=32, box_head_convs=(16, 16))
    head = model.roi_heads.box_head
    assert isinstance(head, FastRCNNConvFCHead)
    keys = [k for k in model.state_dict() if k.startswith("roi_heads.box_head.")]
    assert "roi_heads.box_head.0.1.running_var" in keys and "roi_heads.box_head.3.weight" in keys
    assert head[3].weight.shape == (256, 16 * 7 * 7)
    assert isinstance(tm.models.maskrcnn_resnet18_fpn(num_classes=4).roi_heads.box_head, TwoMLPHead)
