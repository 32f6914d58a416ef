"""Modules against torch.nn: state_dict keys, loading torch's weights, forward passes, init,
dtype conversion, the registration API and its errors."""
import numpy as np
import pytest
from helpers import compare_module_with_torch

import tinymaskrcnn as tm
from tinymaskrcnn import nn, optim
from tinymaskrcnn.core.gradcheck import rel_error

TOL64 = 1e-10


def _layer_pairs(torch):
    """(ours, torch's) constructors of the same layer, for every layer with state."""
    from torchvision.ops import FrozenBatchNorm2d

    tnn = torch.nn
    return {
        "conv": (lambda: nn.Conv2d(3, 8, 3, stride=2, padding=1), lambda: tnn.Conv2d(3, 8, 3, stride=2, padding=1)),
        "conv_nobias_groups": (lambda: nn.Conv2d(4, 6, (3, 1), padding=(1, 0), dilation=2, groups=2, bias=False),
                               lambda: tnn.Conv2d(4, 6, (3, 1), padding=(1, 0), dilation=2, groups=2, bias=False)),
        "conv_transpose": (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
                           lambda: tnn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)),
        "batchnorm": (lambda: nn.BatchNorm2d(5), lambda: tnn.BatchNorm2d(5)),
        "batchnorm_no_affine": (lambda: nn.BatchNorm2d(5, affine=False, momentum=None),
                                lambda: tnn.BatchNorm2d(5, affine=False, momentum=None)),
        "batchnorm_no_stats": (lambda: nn.BatchNorm2d(5, track_running_stats=False),
                               lambda: tnn.BatchNorm2d(5, track_running_stats=False)),
        "frozen_batchnorm": (lambda: nn.FrozenBatchNorm2d(5), lambda: FrozenBatchNorm2d(5)),
        "linear": (lambda: nn.Linear(7, 3), lambda: tnn.Linear(7, 3)),
        "nested": (lambda: nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()),
                                         nn.ModuleList([nn.Linear(2, 2), nn.Identity()])),
                   lambda: tnn.Sequential(tnn.Conv2d(3, 4, 1), tnn.Sequential(tnn.BatchNorm2d(4), tnn.ReLU()),
                                          tnn.ModuleList([tnn.Linear(2, 2), tnn.Identity()]))),
    }


LAYERS = ["conv", "conv_nobias_groups", "conv_transpose", "batchnorm", "batchnorm_no_affine", "batchnorm_no_stats",
          "frozen_batchnorm", "linear", "nested"]


@pytest.mark.parametrize("name", LAYERS)
def test_state_dict_keys_shapes_and_dtypes_equal_torch(torch, name):
    make_ours, make_theirs = _layer_pairs(torch)[name]
    ours, theirs = make_ours().state_dict(), make_theirs().state_dict()
    assert [(k, tuple(v.shape)) for k, v in ours.items()] == [(k, tuple(v.shape)) for k, v in theirs.items()]
    for k, v in theirs.items():  # float32 parameters and statistics, int64 num_batches_tracked
        assert ours[k].dtype == np.dtype(str(v.dtype).replace("torch.", "")), k


@pytest.mark.parametrize("name", LAYERS)
def test_parameter_buffer_and_module_names_equal_torch(torch, name):
    make_ours, make_theirs = _layer_pairs(torch)[name]
    ours, theirs = make_ours(), make_theirs()
    assert [k for k, _ in ours.named_parameters()] == [k for k, _ in theirs.named_parameters()]
    assert [k for k, _ in ours.named_buffers()] == [k for k, _ in theirs.named_buffers()]
    assert [k for k, _ in ours.named_modules()] == [k for k, _ in theirs.named_modules()]
    assert [k for k, _ in ours.named_children()] == [k for k, _ in theirs.named_children()]


def test_repr_equals_torch(torch):
    from torchvision.ops import FrozenBatchNorm2d

    tnn = torch.nn
    ours = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2), nn.ConvTranspose2d(8, 4, 2, stride=2, output_padding=1, groups=2),
                         nn.FrozenBatchNorm2d(4), nn.Flatten(), nn.Linear(4, 3), nn.Identity(),
                         nn.Sequential(nn.BatchNorm2d(2, affine=False, momentum=None)))
    theirs = tnn.Sequential(tnn.Conv2d(3, 8, 3, padding=1, bias=False), tnn.BatchNorm2d(8), tnn.ReLU(inplace=True),
                            tnn.MaxPool2d(2), tnn.ConvTranspose2d(8, 4, 2, stride=2, output_padding=1, groups=2),
                            FrozenBatchNorm2d(4), tnn.Flatten(), tnn.Linear(4, 3), tnn.Identity(),
                            tnn.Sequential(tnn.BatchNorm2d(2, affine=False, momentum=None)))
    assert repr(ours) == repr(theirs)


# ----- loading torch's weights, then the same forward and backward ---------------------------------------


def _randomise(torch, module, seed):
    """Random parameters and (positive) statistics, so that loading them is visible."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if t.dtype.is_floating_point:
                t.copy_(torch.rand(t.shape, generator=gen, dtype=t.dtype) + 0.5 if "var" in name
                        else torch.randn(t.shape, generator=gen, dtype=t.dtype))


def _compare_module(torch, ours, theirs, x, seed=0):
    """Forward both on ``x`` (float64) and pull a random cotangent back; every error ≤ 1e-10."""
    errors, _ = compare_module_with_torch(ours, theirs, x, seed)
    assert max(errors.values()) <= TOL64, errors
    for name, b in theirs.named_buffers():
        ours_b = ours.state_dict()[name]
        assert ours_b.dtype == np.dtype(str(b.dtype).replace("torch.", "")), name
        assert rel_error(ours_b, b.numpy()) <= TOL64, f"buffer {name}"


@pytest.mark.parametrize("name, shape", [("conv", (2, 3, 9, 8)), ("conv_nobias_groups", (2, 4, 7, 6)),
                                         ("conv_transpose", (2, 4, 5, 4)), ("linear", (2, 3, 7)),
                                         ("frozen_batchnorm", (2, 5, 4, 3))])
def test_loaded_layer_forward_and_backward_equal_torch(torch, name, shape):
    make_ours, make_theirs = _layer_pairs(torch)[name]
    theirs = make_theirs().double()
    _randomise(torch, theirs, seed=1)
    ours = make_ours().to(dtype=np.float64)
    ours.load_state_dict(theirs.state_dict())
    x = np.random.default_rng(2).standard_normal(shape)
    _compare_module(torch, ours, theirs, x)
    theirs.eval()  # frozen BN (and the others) behave the same in both modes
    ours.eval()
    ours.zero_grad()
    theirs.zero_grad()
    _compare_module(torch, ours, theirs, x, seed=1)


@pytest.mark.parametrize("name", ["batchnorm", "batchnorm_no_affine", "batchnorm_no_stats"])
def test_batchnorm_train_then_eval_equals_torch(torch, name):
    """Three training steps (outputs, gradients, running statistics and num_batches_tracked
    after each), then eval with the statistics they left."""
    make_ours, make_theirs = _layer_pairs(torch)[name]
    theirs = make_theirs().double()
    _randomise(torch, theirs, seed=3)
    ours = make_ours().to(dtype=np.float64)
    ours.load_state_dict(theirs.state_dict())
    rng = np.random.default_rng(4)
    for step in range(3):
        ours.zero_grad()
        theirs.zero_grad()
        _compare_module(torch, ours, theirs, 2 + 3 * rng.standard_normal((3, 5, 4, 3)), seed=step)
    if ours.track_running_stats:
        assert int(ours.num_batches_tracked) == 3
    ours.eval()
    theirs.eval()
    ours.zero_grad()
    theirs.zero_grad()
    _compare_module(torch, ours, theirs, rng.standard_normal((2, 5, 3, 3)))


def test_frozen_batchnorm_loads_a_batchnorm_state_and_trains_nothing(torch):
    bn = torch.nn.BatchNorm2d(5).double()
    _randomise(torch, bn, seed=5)
    frozen = nn.FrozenBatchNorm2d(5, dtype=np.float64)
    assert frozen.load_state_dict(bn.state_dict()) == ([], [])  # num_batches_tracked dropped, as torchvision
    assert list(frozen.parameters()) == []
    bn.eval()
    x = np.random.default_rng(0).standard_normal((2, 5, 3, 3))
    assert rel_error(frozen(tm.Tensor(x)).data, bn(torch.tensor(x)).detach().numpy()) <= TOL64


# ----- initialisation ------------------------------------------------------------------------------------


def _fan_in(torch, weight):
    return torch.nn.init._calculate_fan_in_and_fan_out(weight)[0]


@pytest.mark.parametrize("make", [lambda: nn.Conv2d(16, 32, 3), lambda: nn.ConvTranspose2d(16, 32, 3, groups=4),
                                  lambda: nn.Linear(300, 40)], ids=["conv", "conv_transpose", "linear"])
def test_default_init_matches_torch_bounds(torch, make):
    """Weights and biases U(±1/sqrt(fan_in)) with torch's fan_in (for ConvTranspose2d that is
    out/groups·k·k); the samples fill the interval (max close to the bound, std bound/sqrt 3)."""
    tnn = torch.nn
    tm.manual_seed(0)  # fixed draws, so the statistical checks below cannot fail by chance
    torch.manual_seed(0)
    ours = make()
    theirs = {nn.Conv2d: tnn.Conv2d(16, 32, 3), nn.ConvTranspose2d: tnn.ConvTranspose2d(16, 32, 3, groups=4),
              nn.Linear: tnn.Linear(300, 40)}[type(ours)]
    bound = 1 / np.sqrt(_fan_in(torch, theirs.weight))
    for name, p in ours.named_parameters():
        sample = p.data
        assert p.dtype == np.float32 and p.shape == tuple(getattr(theirs, name).shape)
        assert np.abs(sample).max() <= bound
        assert np.abs(sample).max() >= 0.9 * bound
        if sample.size >= 1000:  # the spread of a small sample's std is too wide to test
            assert abs(sample.std() / (bound / np.sqrt(3)) - 1) < 0.15
            assert abs(sample.mean()) < 0.2 * bound
        # the same statistics hold for torch's own sample: the check is of the distribution
        ref = getattr(theirs, name).detach().numpy()
        assert np.abs(ref).max() <= bound
        if ref.size >= 1000:
            assert abs(ref.std() / (bound / np.sqrt(3)) - 1) < 0.15


def test_init_namespace_and_seed(torch):
    w = nn.Parameter(np.zeros((64, 32, 3, 3), dtype=np.float64))
    nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
    expected_std = torch.nn.init.calculate_gain("relu") / np.sqrt(64 * 9)  # torch's gain, fan_out
    assert w.dtype == np.float64 and abs(w.data.std() / expected_std - 1) < 0.05
    nn.init.normal_(w, std=0.01)
    assert abs(w.data.std() / 0.01 - 1) < 0.05
    nn.init.kaiming_uniform_(w, a=1.0)
    bound = np.sqrt(3) * torch.nn.init.calculate_gain("leaky_relu", 1.0) / np.sqrt(32 * 9)
    assert bound * 0.95 < np.abs(w.data).max() <= bound
    for fn, value in [(nn.init.zeros_, 0.0), (nn.init.ones_, 1.0), (lambda t: nn.init.constant_(t, 0.5), 0.5)]:
        fn(w)
        assert np.all(w.data == value)
    for nonlinearity, param in [("tanh", None), ("leaky_relu", 0.2), ("selu", None), ("conv2d", None)]:
        assert nn.init.calculate_gain(nonlinearity, param) == pytest.approx(torch.nn.init.calculate_gain(nonlinearity, param))
    with pytest.raises(ValueError, match="fan in and fan out"):
        nn.init.kaiming_normal_(nn.Parameter(np.zeros(3)))
    tm.manual_seed(7)
    a = nn.Conv2d(3, 4, 3).weight.data.copy()
    tm.manual_seed(7)
    np.testing.assert_array_equal(nn.Conv2d(3, 4, 3).weight.data, a)


def test_layers_follow_the_default_dtype():
    try:
        tm.set_default_dtype(np.float64)
        assert all(v.dtype == np.float64 for k, v in nn.BatchNorm2d(3).state_dict().items() if "num_batches" not in k)
        assert nn.Linear(2, 2).weight.dtype == np.float64
    finally:
        tm.set_default_dtype(np.float32)
    assert nn.Conv2d(2, 2, 1).weight.dtype == np.float32
    assert nn.Conv2d(2, 2, 1, dtype=np.float64).bias.dtype == np.float64


# ----- to(), modes, gradients -------------------------------------------------------------------------------


def test_to_float64_converts_everything_and_keeps_the_parameter_objects():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.FrozenBatchNorm2d(4), nn.Linear(4, 2))
    params = list(model.parameters())
    opt = optim.SGD(model.parameters(), lr=0.1)
    params[0].grad = np.ones(params[0].shape, dtype=np.float32)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    assert model.to(dtype=np.float64) is model
    for k, v in model.state_dict().items():
        assert v.dtype == (np.int64 if k.endswith("num_batches_tracked") else np.float64), k
        np.testing.assert_array_equal(v, before[k])  # float32 values are exact in float64
    assert all(a is b for a, b in zip(model.parameters(), params))
    assert params[0].grad.dtype == np.float64
    opt.step()  # the optimizer holds the same Parameters and now updates float64 arrays
    assert params[0].dtype == np.float64
    np.testing.assert_array_equal(params[0].data, before["0.weight"].astype(np.float64) - 0.1)
    with pytest.raises(ValueError, match="floating dtype"):
        model.to(dtype=np.int32)


def test_train_eval_requires_grad_and_zero_grad():
    model = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.BatchNorm2d(3)))
    assert model.training and model[1][0].training
    assert model.eval() is model and not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    model.requires_grad_(False)
    assert not any(p.requires_grad for p in model.parameters())
    model.requires_grad_()
    for p in model.parameters():
        p.grad = np.ones(p.shape, dtype=p.dtype)
    model.zero_grad(set_to_none=False)
    assert all(np.all(p.grad == 0) for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="bool"):
        model.train("no")


def test_containers_and_registration():
    a, b, c = nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)
    seq = nn.Sequential(a, b, c)
    assert seq[0] is a and seq[-1] is c and list(seq) == [a, b, c] and len(seq) == 3
    assert [k for k, _ in seq[1:].named_children()] == ["1", "2"]
    with pytest.raises(IndexError, match="out of range"):
        seq[3]
    ml = nn.ModuleList([a]).append(c)
    assert [k for k, _ in ml.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    md = nn.ModuleDict({"head": c})
    md["body"] = a
    assert list(md.keys()) == ["head", "body"] and "body" in md and md["body"] is a
    with pytest.raises(KeyError, match="head"):
        md["tail"]

    shared = nn.Sequential(a, a)  # one parameter under two names: trained once, saved twice (torch)
    assert len(list(shared.parameters())) == 2 and len(shared.state_dict()) == 4

    m = nn.Module()
    m.register_buffer("scratch", np.zeros(2), persistent=False)
    m.register_buffer("kept", np.zeros(2))
    m.w = nn.Parameter(np.zeros(2))
    assert list(m.state_dict()) == ["w", "kept"] and [k for k, _ in m.named_buffers()] == ["scratch", "kept"]
    with pytest.raises(TypeError, match="nn.Parameter"):
        m.w = tm.Tensor(np.zeros(2))
    del m.w
    assert list(m.state_dict()) == ["kept"]
    with pytest.raises(AttributeError, match="super"):
        class Forgetful(nn.Module):
            def __init__(self):
                self.w = nn.Parameter(np.zeros(1))
        Forgetful()


def test_shared_parameter_is_stepped_once():
    lin = nn.Linear(2, 2, dtype=np.float64)
    model = nn.Sequential(lin, lin)
    opt = optim.SGD(model.parameters(), lr=1.0)
    lin.weight.grad = np.ones((2, 2))
    w = lin.weight.data.copy()
    opt.step()
    np.testing.assert_array_equal(lin.weight.data, w - 1)


# ----- load_state_dict errors -----------------------------------------------------------------------------


def _model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_load_state_dict_converts_dtype_and_copies():
    src = _model().to(dtype=np.float64)
    dst = _model()
    dst.load_state_dict(src.state_dict())
    for k, v in dst.state_dict().items():
        assert v.dtype == (np.int64 if "num_batches" in k else np.float32)
        np.testing.assert_allclose(v, src.state_dict()[k], rtol=1e-7)
    src[0].weight.data += 1  # a copy, not a view of the source
    assert not np.allclose(dst[0].weight.data, src[0].weight.data)


def test_load_state_dict_missing_key_names_key_and_shape():
    state = _model().state_dict()
    del state["1.running_var"]
    with pytest.raises(ValueError, match=r"missing \(1, in the module, not in the state\): 1\.running_var \(4,\)"):
        _model().load_state_dict(state)


def test_load_state_dict_unexpected_key_names_key_and_shape():
    state = _model().state_dict()
    state["2.weight"] = np.zeros((5, 6))
    with pytest.raises(ValueError, match=r"unexpected \(1, in the state, not in the module\): 2\.weight \(5, 6\)"):
        _model().load_state_dict(state)


def test_load_state_dict_mis_shaped_key_names_key_and_both_shapes():
    state = _model().state_dict()
    state["0.weight"] = np.zeros((4, 3, 5, 5), dtype=np.float32)
    for strict in (True, False):  # a shape mismatch is an error even when not strict
        with pytest.raises(ValueError, match=r"mis-shaped \(1\): 0\.weight: state \(4, 3, 5, 5\), module \(4, 3, 3, 3\)"):
            _model().load_state_dict(state, strict=strict)


def test_load_state_dict_not_strict_returns_missing_and_unexpected():
    src = _model()
    state = src.state_dict()
    del state["0.bias"]
    state["extra.weight"] = np.zeros(2)
    dst = _model()
    result = dst.load_state_dict(state, strict=False)
    missing, unexpected = result
    assert missing == ["0.bias"] == result.missing_keys and unexpected == ["extra.weight"] == result.unexpected_keys
    np.testing.assert_array_equal(dst[0].weight.data, src[0].weight.data)  # the rest was loaded
    with pytest.raises(TypeError, match="mapping"):
        dst.load_state_dict([1, 2])
