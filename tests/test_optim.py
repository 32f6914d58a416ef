"""SGD, the LR schedules and gradient clipping against torch.optim, step by step, in float64."""
import copy
import math
import warnings

import numpy as np
import pytest

import tinymaskrcnn as tm
from tinymaskrcnn import nn, optim
from tinymaskrcnn.core.gradcheck import rel_error

TOL64 = 1e-10


# ----- a small network, built identically in torch and ours ----------------------------------------


def _twin_mlps(torch, seed=0):
    """Linear(4, 6) → ReLU → Linear(6, 3) in torch (float64) and ours with the same weights."""
    torch.manual_seed(seed)
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3)).double()
    ours = nn.Sequential(nn.Linear(4, 6, dtype=np.float64), nn.ReLU(), nn.Linear(6, 3, dtype=np.float64))
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _batches(n, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((5, 4)), rng.standard_normal((5, 3))) for _ in range(n)]


def _loss(model, x, y):
    """Mean squared error, written with tape arithmetic (the same lines work on torch tensors)."""
    d = model(x) - y
    return (d * d).mean()


def _train_ours(model, opt, batches, scheduler=None):
    for x, y in batches:
        opt.zero_grad()
        _loss(model, tm.Tensor(x), y).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


def _train_theirs(torch, model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        _loss(model, torch.tensor(x), torch.tensor(y)).backward()
        opt.step()


def _assert_same_parameters(ours, theirs, tol=TOL64):
    ref = {k: v.detach().numpy() for k, v in theirs.named_parameters()}
    got = {k: p.data for k, p in ours.named_parameters()}
    assert list(got) == list(ref)
    for k in ref:
        err = rel_error(got[k], ref[k])
        assert err <= tol, f"{k}: relative error {err:.3g} > {tol:g}"


# (optimizer name in both libraries, settings)
OPTIMIZER_SETTINGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=1e-2)),
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=True)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=5e-3)),
    ("AdamW", dict()),
    ("AdamW", dict(lr=0.05, weight_decay=0.0)),
    ("AdamW", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
]


def _setting_id(case):
    return case[0] + ":" + (",".join(f"{k}={v}" for k, v in case[1].items()) or "defaults")


@pytest.mark.parametrize("name, settings", OPTIMIZER_SETTINGS, ids=map(_setting_id, OPTIMIZER_SETTINGS))
def test_optimizer_matches_torch_every_step(torch, name, settings):
    ours, theirs = _twin_mlps(torch)
    opt = getattr(optim, name)(ours.parameters(), **settings)
    ref_opt = getattr(torch.optim, name)(theirs.parameters(), **settings)
    for batch in _batches(10):
        _train_ours(ours, opt, [batch])
        _train_theirs(torch, theirs, ref_opt, [batch])
        _assert_same_parameters(ours, theirs)


def test_sgd_parameter_groups_with_their_own_hyperparameters(torch):
    ours, theirs = _twin_mlps(torch)

    def groups(model):
        return [{"params": model[0].parameters(), "lr": 0.2, "momentum": 0.5},
                {"params": model[2].parameters()}]

    opt = optim.SGD(groups(ours), lr=0.05, momentum=0.9, weight_decay=1e-3)
    ref_opt = torch.optim.SGD(groups(theirs), lr=0.05, momentum=0.9, weight_decay=1e-3)
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.05]
    batches = _batches(10)
    _train_ours(ours, opt, batches)
    _train_theirs(torch, theirs, ref_opt, batches)
    _assert_same_parameters(ours, theirs)


def test_sgd_skips_parameters_without_gradient_and_keeps_dtype():
    p, q = nn.Parameter(np.ones(3, dtype=np.float32)), nn.Parameter(np.ones(2, dtype=np.float32))
    opt = optim.SGD([p, q], lr=0.5, momentum=0.9)
    p.grad = np.full(3, 2.0, dtype=np.float32)
    opt.step()
    np.testing.assert_array_equal(q.data, np.ones(2))  # no gradient: untouched, no state
    assert q not in opt.state and p.data.dtype == np.float32
    np.testing.assert_allclose(p.data, 1 - 0.5 * 2.0)


def test_optimizer_state_dict_round_trip_resumes_exactly(torch):
    """Train 4 steps, snapshot model + optimizer + schedule, train 6 more; a fresh copy loaded
    from the snapshot and trained on the same 6 batches ends bit-for-bit equal."""
    batches = _batches(10)
    settings = dict(lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True)
    model, _ = _twin_mlps(torch)
    opt = optim.SGD(model.parameters(), **settings)
    sched = optim.WarmupMultiStepLR(opt, milestones=[6, 8], gamma=0.5, warmup_factor=0.1, warmup_iters=3)
    _train_ours(model, opt, batches[:4], sched)
    snapshot = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), sched.state_dict())
    _train_ours(model, opt, batches[4:], sched)

    resumed, _ = _twin_mlps(torch, seed=5)  # different weights, overwritten by the snapshot
    resumed_opt = optim.SGD(resumed.parameters(), lr=1.0)  # different hyperparameters, restored too
    resumed_sched = optim.WarmupMultiStepLR(resumed_opt, milestones=[6, 8])
    resumed.load_state_dict(snapshot[0])
    resumed_opt.load_state_dict(snapshot[1])
    resumed_sched.load_state_dict(snapshot[2])
    assert resumed_opt.param_groups[0]["nesterov"] and resumed_sched.last_epoch == 4
    _train_ours(resumed, resumed_opt, batches[4:], resumed_sched)

    for (k, a), (_, b) in zip(model.named_parameters(), resumed.named_parameters()):
        np.testing.assert_array_equal(a.data, b.data, err_msg=k)
    assert resumed_sched.get_last_lr() == sched.get_last_lr()
    for p, q in zip(model.parameters(), resumed.parameters()):
        np.testing.assert_array_equal(opt.state[p]["momentum_buffer"], resumed_opt.state[q]["momentum_buffer"])


@pytest.mark.parametrize("name, settings", [("SGD", dict(lr=0.05, momentum=0.9, weight_decay=1e-2)),
                                            ("AdamW", dict(lr=0.02, weight_decay=0.1))])
def test_optimizer_loads_torch_state_and_continues_like_torch(torch, name, settings):
    """torch's state_dict (momentum buffers, or AdamW's step and moments, as torch tensors)
    loads into ours, hyperparameters included, and the next steps agree with torch's."""
    ours, theirs = _twin_mlps(torch)
    ref_opt = getattr(torch.optim, name)(theirs.parameters(), **settings)
    batches = _batches(8)
    _train_theirs(torch, theirs, ref_opt, batches[:3])
    ours.load_state_dict(theirs.state_dict())
    opt = getattr(optim, name)(ours.parameters(), lr=1.0)
    opt.load_state_dict(ref_opt.state_dict())
    assert opt.param_groups[0]["lr"] == settings["lr"]
    _train_ours(ours, opt, batches[3:])
    _train_theirs(torch, theirs, ref_opt, batches[3:])
    _assert_same_parameters(ours, theirs)



def test_adamw_groups_and_schedule_match_torch(torch):
    """Per-group hyperparameters and a warmup-cosine schedule: the lr each step uses and the
    parameters after every step agree with torch's AdamW driven by the same lr values."""
    ours, theirs = _twin_mlps(torch)

    def groups(model):
        return [{"params": model[0].parameters(), "lr": 0.01, "weight_decay": 0.0}, {"params": model[2].parameters()}]

    opt = optim.AdamW(groups(ours), lr=0.03, weight_decay=0.05)
    ref_opt = torch.optim.AdamW(groups(theirs), lr=0.03, weight_decay=0.05)
    sched = optim.WarmupCosineLR(opt, total_iters=8, warmup_factor=0.1, warmup_iters=3)
    for batch in _batches(10):
        for ref_group, group in zip(ref_opt.param_groups, opt.param_groups):
            ref_group["lr"] = group["lr"]
        _train_ours(ours, opt, [batch], sched)
        _train_theirs(torch, theirs, ref_opt, [batch])
        _assert_same_parameters(ours, theirs)


def test_adamw_state_dict_round_trip_resumes_exactly(torch):
    batches = _batches(8)
    model, _ = _twin_mlps(torch)
    opt = optim.AdamW(model.parameters(), lr=0.02)
    _train_ours(model, opt, batches[:3])
    snapshot = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train_ours(model, opt, batches[3:])
    resumed, _ = _twin_mlps(torch, seed=5)
    resumed.load_state_dict(snapshot[0])
    resumed_opt = optim.AdamW(resumed.parameters(), lr=1.0)
    resumed_opt.load_state_dict(snapshot[1])
    _train_ours(resumed, resumed_opt, batches[3:])
    for (k, a), (_, b) in zip(model.named_parameters(), resumed.named_parameters()):
        np.testing.assert_array_equal(a.data, b.data, err_msg=k)


def test_adamw_keeps_float32():
    p = nn.Parameter(np.ones(3, dtype=np.float32))
    opt = optim.AdamW([p], lr=0.1)
    p.grad = np.full(3, 2.0, dtype=np.float32)
    opt.step()
    assert p.data.dtype == np.float32 and opt.state[p]["exp_avg"].dtype == np.float32
    # the first step moves every weight by lr (bias-corrected m / sqrt(v) = sign(g)), after decay
    np.testing.assert_allclose(p.data, 1 * (1 - 0.1 * 0.01) - 0.1, rtol=1e-6)


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_adamw_kernel_equals_its_twin(dtype, rtol):
    from tinymaskrcnn.kernels.adamw import adamw_update, adamw_update_twin

    rng = np.random.default_rng(0)
    p, m = (rng.standard_normal((3, 5, 7)).astype(dtype) for _ in range(2))
    v = rng.uniform(0, 2, (3, 5, 7)).astype(dtype)
    ours, twins = [p.copy(), m.copy(), v.copy()], [p.copy(), m.copy(), v.copy()]
    for step in (1.0, 2.0, 3.0):  # three steps: the state carries over
        g = rng.standard_normal((3, 5, 7)).astype(dtype)
        adamw_update(ours[0], g, ours[1], ours[2], 0.01, 0.9, 0.999, 1e-8, 0.05, step)
        adamw_update_twin(twins[0], g, twins[1], twins[2], 0.01, 0.9, 0.999, 1e-8, 0.05, step)
    for a, b in zip(ours, twins):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)
    assert not np.allclose(ours[0], p)


def test_adamw_steps_a_strided_parameter_through_the_twin():
    """A parameter that is a strided view cannot go to the kernel; it is still updated in place."""
    base = np.ones((4, 6), dtype=np.float32)
    p = nn.Parameter(base[:, ::2])
    opt = optim.AdamW([p], lr=0.1, weight_decay=0.0)
    p.grad = np.full((4, 3), -3.0, dtype=np.float32)
    opt.step()
    np.testing.assert_allclose(base[:, ::2], 1.1, rtol=1e-6)
    np.testing.assert_array_equal(base[:, 1::2], 1.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-1.0), "learning rate"),
    (dict(betas=(1.0, 0.999)), "betas"),
    (dict(eps=-1.0), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"),
])
def test_adamw_rejects_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        optim.AdamW([nn.Parameter(np.zeros(2))], **kwargs)

# ----- schedules -----------------------------------------------------------------------------------


def _lr_trace(make_scheduler, optimizer, steps):
    """The lr of every group at iterations 0..steps (one optimizer step, then one schedule step)."""
    scheduler = make_scheduler(optimizer)
    trace = [[g["lr"] for g in optimizer.param_groups]]
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        trace.append([g["lr"] for g in optimizer.param_groups])
    return np.array(trace), scheduler


def _two_groups_ours():
    return optim.SGD([{"params": [nn.Parameter(np.zeros(2))], "lr": 0.02},
                      {"params": [nn.Parameter(np.zeros(2))], "lr": 0.005}], momentum=0.9)


def _two_groups_torch(torch):
    return torch.optim.SGD([{"params": [torch.zeros(2, requires_grad=True)], "lr": 0.02},
                            {"params": [torch.zeros(2, requires_grad=True)], "lr": 0.005}], momentum=0.9)


def _assert_same_trace(ours, theirs):
    assert ours.shape == theirs.shape
    for step, (a, b) in enumerate(zip(ours, theirs)):
        assert rel_error(a, b) <= TOL64, f"iteration {step}: ours {a}, torch {b}"


@pytest.mark.parametrize("method", ["linear", "constant"])
def test_warmup_multistep_matches_torch_chained_schedulers(torch, method):
    lrs = torch.optim.lr_scheduler
    warmup = lrs.LinearLR if method == "linear" else lrs.ConstantLR
    ours, sched = _lr_trace(lambda o: optim.WarmupMultiStepLR(o, [8, 15, 22], gamma=0.3, warmup_factor=0.01,
                                                              warmup_iters=10, warmup_method=method),
                            _two_groups_ours(), 30)
    theirs, _ = _lr_trace(lambda o: lrs.ChainedScheduler([warmup(o, 0.01, total_iters=10),
                                                          lrs.MultiStepLR(o, [8, 15, 22], 0.3)]),
                          _two_groups_torch(torch), 30)
    _assert_same_trace(ours, theirs)
    assert sched.get_last_lr() == list(ours[-1])


def test_warmup_cosine_matches_torch(torch):
    lrs = torch.optim.lr_scheduler
    ours, _ = _lr_trace(lambda o: optim.WarmupCosineLR(o, total_iters=25, eta_min=1e-4), _two_groups_ours(), 25)
    theirs, _ = _lr_trace(lambda o: lrs.CosineAnnealingLR(o, T_max=25, eta_min=1e-4), _two_groups_torch(torch), 25)
    _assert_same_trace(ours, theirs)

    ours, _ = _lr_trace(lambda o: optim.WarmupCosineLR(o, total_iters=25, warmup_factor=0.1, warmup_iters=5,
                                                       eta_min=1e-4), _two_groups_ours(), 25)
    with warnings.catch_warnings():  # SequentialLR steps its second schedule with an explicit epoch
        warnings.simplefilter("ignore")
        theirs, _ = _lr_trace(lambda o: lrs.SequentialLR(o, [lrs.LinearLR(o, 0.1, total_iters=5),
                                                             lrs.CosineAnnealingLR(o, T_max=20, eta_min=1e-4)],
                                                         milestones=[5]), _two_groups_torch(torch), 25)
    _assert_same_trace(ours, theirs)


def test_cosine_holds_the_minimum_after_total_iters():
    trace, _ = _lr_trace(lambda o: optim.WarmupCosineLR(o, total_iters=6, eta_min=1e-4), _two_groups_ours(), 9)
    np.testing.assert_allclose(trace[6:], 1e-4, rtol=1e-12)


def test_scheduler_state_dict_round_trip():
    opt = _two_groups_ours()
    sched = optim.WarmupCosineLR(opt, total_iters=30, warmup_factor=0.1, warmup_iters=5)
    for _ in range(12):
        sched.step()
    opt_state, sched_state = copy.deepcopy(opt.state_dict()), sched.state_dict()
    resumed_opt = _two_groups_ours()
    resumed_opt.load_state_dict(opt_state)
    resumed = optim.WarmupCosineLR(resumed_opt, total_iters=30, last_epoch=-1)
    resumed.load_state_dict(sched_state)
    for _ in range(10):
        sched.step()
        resumed.step()
        assert resumed.get_last_lr() == sched.get_last_lr()
        assert [g["lr"] for g in resumed_opt.param_groups] == [g["lr"] for g in opt.param_groups]


# ----- gradient clipping ------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])  # clipping, and a bound too large to clip
def test_clip_grad_norm_matches_torch(torch, norm_type, max_norm):
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(s) for s in [(3, 4), (4,), (2, 2, 2)]]
    ours = [nn.Parameter(np.zeros_like(g)) for g in grads]
    theirs = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for p, t, g in zip(ours, theirs, grads):
        p.grad, t.grad = g.copy(), torch.tensor(g)
    total = optim.clip_grad_norm_(ours + [nn.Parameter(np.zeros(2))], max_norm, norm_type)  # one without grad
    ref_total = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    assert abs(total - ref_total.item()) <= TOL64 * ref_total.item()
    for p, t in zip(ours, theirs):
        assert rel_error(p.grad, t.grad.numpy()) <= TOL64


# ----- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-1.0), "learning rate"),
    (dict(lr=0.1, momentum=-0.5), "momentum"),
    (dict(lr=0.1, weight_decay=-1.0), "weight_decay"),
    (dict(lr=0.1, nesterov=True), "Nesterov"),
    (dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "Nesterov"),
])
def test_sgd_rejects_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        optim.SGD([nn.Parameter(np.zeros(2))], **kwargs)


def test_optimizer_rejects_bad_parameters_and_mismatched_state():
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    p = nn.Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="appears twice"):
        optim.SGD([p, p], lr=0.1)
    with pytest.raises(TypeError, match="Tensors"):
        optim.SGD([np.zeros(2)], lr=0.1)
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        optim.SGD([{"params": [p], "betas": (0.9, 0.99)}], lr=0.1)
    state = optim.SGD([p, nn.Parameter(np.zeros(1))], lr=0.1).state_dict()
    with pytest.raises(ValueError, match=r"group sizes differ: state \[2\], optimizer \[1\]"):
        optim.SGD([p], lr=0.1).load_state_dict(state)


def test_schedules_reject_bad_settings():
    opt = _two_groups_ours()
    with pytest.raises(ValueError, match="increasing"):
        optim.WarmupMultiStepLR(opt, [10, 5])
    with pytest.raises(ValueError, match="warmup_method"):
        optim.WarmupMultiStepLR(opt, [5], warmup_method="cubic")
    with pytest.raises(ValueError, match="must exceed warmup_iters"):
        optim.WarmupCosineLR(opt, total_iters=5, warmup_iters=5)
