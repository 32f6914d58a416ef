"""ResNet, FPN and resnet_fpn_backbone against torchvision, with the same weights.

torchvision's models are built here with random weights, saved with torch.save and read back
by our torch-free loader. For the detection configuration (ResNet-50, FrozenBatchNorm2d) every
frozen BN is first calibrated to the statistics of its own input, so activations stay of order
one through the 50 layers (checked) and the comparison means something. Forward outputs and the
gradients of the input and of every trainable parameter under a random cotangent must agree
in float64 to rounding.
"""
import copy

import numpy as np
import pytest
from conftest import require_reference
from helpers import compare_module_with_torch

import tinymaskrcnn as tm
from tinymaskrcnn import nn
from tinymaskrcnn.core.autograd import as_array
from tinymaskrcnn.core.gradcheck import rel_error
from tinymaskrcnn.models.backbone import resnet_fpn_backbone
from tinymaskrcnn.models.fpn import FeaturePyramidNetwork, LastLevelMaxPool
from tinymaskrcnn.models.resnet import resnet18, resnet50
from tinymaskrcnn.functional import conv_schedule
from tinymaskrcnn.chapters.reference_models import calibrate_frozen_batchnorm, save_state_dict
from tinymaskrcnn.weights import load_torchvision

OUT_TOL = {np.float64: 1e-10, np.float32: 1e-4}
GRAD_TOL = 1e-9  # float64 only: see test_resnet50_fpn_frozen_bn_float32
# Non-square, and the stages round up (40×56 → 10×14, 5×7, 3×4, 2×2), so the FPN's nearest
# upsampling to the lateral's size is not a plain ×2.
IMAGE_SHAPE = (2, 3, 40, 56)
# Frozen BN statistics come from a larger batch, so that no channel's variance is degenerate.
CALIBRATION_SHAPE = (2, 3, 96, 128)


def _torchvision_backbone(torch, name, norm="frozen", seed=0, **kw):
    """torchvision's resnet_fpn_backbone with random weights whose activations are of order one."""
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone as tv_resnet_fpn_backbone

    torch.manual_seed(seed)
    norm_layer = {"frozen": _tv_frozen_bn(), "batch": torch.nn.BatchNorm2d}[norm]
    model = tv_resnet_fpn_backbone(backbone_name=name, weights=None, norm_layer=norm_layer, **kw)
    if norm == "frozen":
        gen = torch.Generator().manual_seed(seed + 1)
        calibrate_frozen_batchnorm(model, torch.rand(CALIBRATION_SHAPE, generator=gen) * 4 - 2, seed)
    else:
        _randomize_batchnorm(torch, model, seed)
    return model


def _tv_frozen_bn():
    from torchvision.ops.misc import FrozenBatchNorm2d

    return FrozenBatchNorm2d


def _randomize_batchnorm(torch, model, seed):
    """Random affine parameters and running statistics, so none of them is a trivial 0 or 1."""
    gen = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                m.num_batches_tracked.fill_(3)


def _ours_from(theirs, path, builder, dtype):
    """Our module from ``builder()``, converted to ``dtype`` and loaded from torchvision's .pth."""
    ours = builder()
    ours.to(dtype=dtype)
    load_torchvision(ours, path)
    ours.train(theirs.training)
    return ours


def _trainable(named_parameters):
    return {name for name, p in named_parameters if p.requires_grad}


def _image(dtype, seed=3):
    return np.random.default_rng(seed).uniform(-2, 2, IMAGE_SHAPE).astype(dtype)


def _compare(torch, ours, theirs, dtype, check_grads=True, seed=4):
    """Forward both on the same image batch and pull one random cotangent per output back.

    Asserts the outputs agree within the tolerance for ``dtype`` and, in float64 with
    ``check_grads``, the input gradient and every trainable parameter's gradient too; frozen
    parameters must get no gradient. Returns torchvision's outputs.
    """
    check_grads = check_grads and dtype == np.float64
    errors, ref = compare_module_with_torch(ours, theirs, _image(dtype), seed, backward=check_grads)
    _assert_within_tolerance(errors, dtype)
    return ref


def _assert_within_tolerance(errors, dtype):
    for what, err in errors.items():
        tol = OUT_TOL[dtype] if what.startswith("output") else GRAD_TOL
        assert err <= tol, f"{what}: relative error {err:.3g}"


def _assert_same_state_dict_layout(ours, theirs):
    """The same keys in the same order, with the same shapes: torchvision's names exactly."""
    ref = theirs.state_dict()
    mine = ours.state_dict()
    assert list(mine) == list(ref)
    for k in ref:
        assert tuple(mine[k].shape) == tuple(ref[k].shape), f"{k}: {mine[k].shape} vs {tuple(ref[k].shape)}"


@pytest.fixture(scope="module")
def resnet50_detection(tmp_path_factory):
    """torchvision's ResNet-50-FPN (FrozenBatchNorm2d, trainable_layers=3, calibrated), and its .pth."""
    torch = require_reference()
    theirs = _torchvision_backbone(torch, "resnet50", trainable_layers=3)
    return theirs, save_state_dict(theirs, tmp_path_factory.mktemp("resnet50"))


@pytest.fixture(params=["default", "winograd_everywhere", "twins"])
def conv_algorithms(request, monkeypatch):
    """The conv op as it chooses, with Winograd's algorithm for every 3x3 stride-1 conv of 16
    channels or more however small (by default only the larger ones use it), and the kernels'
    twins: the textbook convolution (functional/conv_textbook.py) for every conv, the NumPy
    max pooling and frozen batch norm."""
    if request.param == "winograd_everywhere":
        monkeypatch.setattr(conv_schedule, "WINOGRAD_MIN_FLOPS", 0)
    with tm.use_kernels("twins" if request.param == "twins" else "fast"):
        yield request.param


def test_resnet50_fpn_frozen_bn_float64_forward_and_gradients(torch, resnet50_detection, conv_algorithms):
    theirs, path = resnet50_detection
    theirs = copy.deepcopy(theirs).double()
    ours = _ours_from(theirs, path, lambda: resnet_fpn_backbone("resnet50", trainable_layers=3), np.float64)
    _assert_same_state_dict_layout(ours, theirs)
    assert ours.out_channels == 256
    ref = _compare(torch, ours, theirs, np.float64)
    assert list(ref) == ["0", "1", "2", "3", "pool"]
    stds = [float(v.detach().std()) for v in ref.values()]
    assert all(0.3 < s < 30 for s in stds), f"activations not of order one: level stds {stds}"


def test_resnet50_fpn_frozen_bn_float32(torch, resnet50_detection, conv_algorithms):
    """Outputs only: through 50 layers of ReLU kinks even torch's own float32 gradients are
    about 1e-2 away from its float64 ones, so a float32 gradient comparison proves nothing."""
    theirs, path = resnet50_detection
    ours = _ours_from(theirs, path, lambda: resnet_fpn_backbone("resnet50", trainable_layers=3), np.float32)
    _compare(torch, ours, theirs, np.float32)


def test_resnet18_fpn_batchnorm_train_mode(torch, tmp_path):
    """BatchNorm2d in train mode: batch statistics forward, their backward, running-stat update.
    All five layers trainable, so bn1's parameters get gradients too."""
    theirs = _torchvision_backbone(torch, "resnet18", norm="batch", trainable_layers=5).double()
    path = save_state_dict(theirs, tmp_path)
    ours = _ours_from(theirs, path, lambda: resnet_fpn_backbone("resnet18", trainable_layers=5,
                                                                norm_layer=nn.BatchNorm2d), np.float64)
    assert ours.training and theirs.training
    _assert_same_state_dict_layout(ours, theirs)
    _compare(torch, ours, theirs, np.float64)
    ref = theirs.state_dict()
    for k, v in ours.state_dict().items():
        if k.endswith("num_batches_tracked"):
            assert int(v) == int(ref[k]) == 4, k
        elif k.endswith(("running_mean", "running_var")):
            assert rel_error(v, ref[k].numpy()) <= OUT_TOL[np.float64], k


def test_returned_layers_subset(torch, tmp_path):
    """returned_layers=[2, 4]: outputs '0', '1', 'pool' from layer2 and layer4 (forward only:
    the backward runs through the same code as in the tests above)."""
    theirs = _torchvision_backbone(torch, "resnet18", trainable_layers=3, returned_layers=[2, 4]).double()
    path = save_state_dict(theirs, tmp_path)
    ours = _ours_from(theirs, path, lambda: resnet_fpn_backbone("resnet18", returned_layers=[2, 4]), np.float64)
    ref = _compare(torch, ours, theirs, np.float64, check_grads=False)
    assert list(ref) == ["0", "1", "pool"]


@pytest.mark.parametrize("name,returned_layers", [("resnet18", [1, 2]), ("resnet34", None), ("resnet18", [3])])
def test_state_dict_layout_equals_torchvision(torch, name, returned_layers):
    """Keys, order and shapes of BackboneWithFPN's state_dict, incl. a body cut after layer2."""
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone as tv_resnet_fpn_backbone

    theirs = tv_resnet_fpn_backbone(backbone_name=name, weights=None, returned_layers=returned_layers)
    _assert_same_state_dict_layout(resnet_fpn_backbone(name, returned_layers=returned_layers), theirs)


@pytest.mark.parametrize("norm", ["frozen", "batch"])
@pytest.mark.parametrize("trainable_layers", range(6))
def test_trainable_layers_match_torchvision(torch, norm, trainable_layers):
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone as tv_resnet_fpn_backbone

    tv_norm, our_norm = {"frozen": (_tv_frozen_bn(), nn.FrozenBatchNorm2d),
                         "batch": (torch.nn.BatchNorm2d, nn.BatchNorm2d)}[norm]
    theirs = tv_resnet_fpn_backbone(backbone_name="resnet18", weights=None, norm_layer=tv_norm,
                                    trainable_layers=trainable_layers)
    ours = resnet_fpn_backbone("resnet18", trainable_layers=trainable_layers, norm_layer=our_norm)
    assert _trainable(ours.named_parameters()) == _trainable(theirs.named_parameters())


def test_resnet18_classifier_eval_mode(torch, tmp_path):
    """The plain ResNet (with its average pool and fc) in eval mode: running statistics."""
    import torchvision

    torch.manual_seed(5)
    theirs = torchvision.models.resnet18(weights=None, num_classes=7).double().eval()
    _randomize_batchnorm(torch, theirs, 5)
    path = save_state_dict(theirs, tmp_path)
    ours = _ours_from(theirs, path, lambda: resnet18(num_classes=7), np.float64)
    _assert_same_state_dict_layout(ours, theirs)
    x = _image(np.float64)
    errors, _ = compare_module_with_torch(ours, theirs, x, seed=6)
    _assert_within_tolerance(errors, np.float64)
    feats = ours.features(tm.Tensor(x))
    assert [tuple(v.shape) for v in feats.values()] == [(2, 64, 10, 14), (2, 128, 5, 7), (2, 256, 3, 4), (2, 512, 2, 2)]


# ----- initialisation ------------------------------------------------------------------------


def _conv_weights(module):
    return [(name, m.weight.data) for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]


def test_resnet_initialisation():
    """kaiming_normal_(fan_out, relu) convs, BN weight 1 / bias 0, float32 by default."""
    tm.manual_seed(0)
    model = resnet18(norm_layer=nn.BatchNorm2d)
    for name, w in _conv_weights(model):
        assert w.dtype == np.float32, name
        expected = np.sqrt(2.0 / (w.shape[0] * w.shape[2] * w.shape[3]))
        assert abs(w.std() / expected - 1) < 0.05, f"{name}: std {w.std():.4g}, expected {expected:.4g}"
        assert abs(w.mean()) < 0.05 * expected, name
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert np.all(m.weight.data == 1) and np.all(m.bias.data == 0), name


@pytest.mark.parametrize("builder,last_norm", [(resnet18, "bn2"), (resnet50, "bn3")])
@pytest.mark.parametrize("norm_layer", [nn.BatchNorm2d, nn.FrozenBatchNorm2d])
def test_zero_init_residual(builder, last_norm, norm_layer):
    model = builder(zero_init_residual=True, norm_layer=norm_layer)
    blocks = [m for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for m in stage]
    for block in blocks:
        assert np.all(as_array(getattr(block, last_norm).weight) == 0)
        assert np.all(as_array(block.bn1.weight) == 1)


def test_fpn_initialisation():
    """kaiming_uniform_(a=1): |w| ≤ sqrt(3 / fan_in), std sqrt(1 / fan_in); biases 0."""
    tm.manual_seed(0)
    fpn = FeaturePyramidNetwork([64, 128], 256)
    for name, w in _conv_weights(fpn):
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        assert np.abs(w).max() <= np.sqrt(3.0 / fan_in), name
        assert abs(w.std() * np.sqrt(fan_in) - 1) < 0.05, name
    for name, p in fpn.named_parameters():
        if name.endswith("bias"):
            assert np.all(p.data == 0), name


def test_float32_by_default():
    out = resnet_fpn_backbone("resnet18")(np.random.default_rng(0).uniform(0, 1, (1, 3, 64, 96)).astype(np.float32))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [v.shape for v in out.values()] == [(1, 256, 16, 24), (1, 256, 8, 12), (1, 256, 4, 6), (1, 256, 2, 3),
                                               (1, 256, 1, 2)]
    assert all(v.dtype == np.float32 for v in out.values())


def test_last_level_max_pool_subsamples():
    """max_pool2d with a 1×1 window and stride 2 keeps every other row and column."""
    p = np.random.default_rng(0).standard_normal((1, 2, 5, 6))
    results, names = LastLevelMaxPool()([tm.Tensor(p)], [None], ["0"])
    assert names == ["0", "pool"]
    np.testing.assert_array_equal(results[1].data, p[:, :, ::2, ::2])


# ----- bad input -------------------------------------------------------------------------------


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="resnet5"):
        resnet_fpn_backbone("resnet5")
    for bad in (-1, 6, 2.5):
        with pytest.raises(ValueError, match="trainable_layers"):
            resnet_fpn_backbone("resnet18", trainable_layers=bad)
    for bad in ([0, 1], [5], []):
        with pytest.raises(ValueError, match="returned_layers"):
            resnet_fpn_backbone("resnet18", returned_layers=bad)
    with pytest.raises(ValueError, match="in_channels_list"):
        FeaturePyramidNetwork([64, 0], 256)


def test_bad_input_raises():
    backbone = resnet_fpn_backbone("resnet18")
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*\(3, 64, 64\)"):
        backbone(np.zeros((3, 64, 64), dtype=np.float32))
    fpn = FeaturePyramidNetwork([8, 16], 4)
    maps = {"0": np.zeros((1, 8, 8, 8), np.float32), "1": np.zeros((1, 12, 4, 4), np.float32)}
    with pytest.raises(ValueError, match=r"\[8, 16\].*\[8, 12\]"):
        fpn(maps)
