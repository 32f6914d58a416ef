"""tm.optim.lr_scheduler against torch.optim.lr_scheduler: the same learning rate, to the last
bit, at every step of a few hundred, for each schedule, for chains and sequences of them, and
after a resume from state_dict."""
import copy

import numpy as np
import pytest

from tinymaskrcnn import nn, optim, weights
from tinymaskrcnn.optim import lr_scheduler as ours_lrs

STEPS = 300


def _groups_ours():
    return optim.SGD([{"params": [nn.Parameter(np.zeros(2))], "lr": 0.1},
                      {"params": [nn.Parameter(np.zeros(2))], "lr": 0.0075}], momentum=0.9)


def _groups_torch(torch):
    return torch.optim.SGD([{"params": [torch.zeros(2, requires_grad=True)], "lr": 0.1},
                            {"params": [torch.zeros(2, requires_grad=True)], "lr": 0.0075}], momentum=0.9)


def _halving(t):  # a plain function: LambdaLR's state_dict cannot hold it
    return 0.5 ** (t // 40)


class Cycle:
    """A callable object: its attributes travel in LambdaLR's state_dict."""

    def __init__(self, period):
        self.period = period

    def __call__(self, t):
        return 1.0 / (1 + t % self.period)


# name -> build(lr_scheduler module, optimizer); the same code builds torch's and ours
SCHEDULES = {
    "StepLR": lambda L, o: L.StepLR(o, step_size=30, gamma=0.3),
    "MultiStepLR": lambda L, o: L.MultiStepLR(o, milestones=[150, 30, 80, 80], gamma=0.5),
    "ConstantLR": lambda L, o: L.ConstantLR(o, factor=0.25, total_iters=40),
    "LinearLR warmup": lambda L, o: L.LinearLR(o, start_factor=0.001, total_iters=100),
    "LinearLR decay": lambda L, o: L.LinearLR(o, start_factor=1.0, end_factor=0.05, total_iters=120),
    "ExponentialLR": lambda L, o: L.ExponentialLR(o, gamma=0.99),
    "CosineAnnealingLR": lambda L, o: L.CosineAnnealingLR(o, T_max=50, eta_min=1e-4),  # three periods
    "LambdaLR": lambda L, o: L.LambdaLR(o, _halving),
    "LambdaLR per group": lambda L, o: L.LambdaLR(o, [_halving, Cycle(7)]),
    "SequentialLR warmup then cosine": lambda L, o: L.SequentialLR(
        o, [L.LinearLR(o, start_factor=0.01, total_iters=20), L.CosineAnnealingLR(o, T_max=280)], milestones=[20]),
    "SequentialLR of three": lambda L, o: L.SequentialLR(
        o, [L.ConstantLR(o, factor=0.1, total_iters=10), L.ExponentialLR(o, gamma=0.98),
            L.StepLR(o, step_size=25, gamma=0.5)], milestones=[10, 100]),
    "ChainedScheduler warmup and steps": lambda L, o: L.ChainedScheduler(
        [L.LinearLR(o, start_factor=0.001, total_iters=50), L.MultiStepLR(o, milestones=[40, 200], gamma=0.1)]),
    "ChainedScheduler exponential and cosine": lambda L, o: L.ChainedScheduler(
        [L.ExponentialLR(o, gamma=0.995), L.CosineAnnealingLR(o, T_max=60, eta_min=1e-3)]),
    "SequentialLR of a chain": lambda L, o: L.SequentialLR(
        o, [L.ChainedScheduler([L.LinearLR(o, start_factor=0.1, total_iters=10), L.ExponentialLR(o, gamma=0.97)]),
            L.StepLR(o, step_size=30)], milestones=[60]),
}


def _trace(optimizer, scheduler, steps):
    """The groups' lrs and get_last_lr() after construction and after each step."""
    rows = [([g["lr"] for g in optimizer.param_groups], scheduler.get_last_lr())]
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        rows.append(([g["lr"] for g in optimizer.param_groups], scheduler.get_last_lr()))
    return rows


# torch warns about the chain inside a SequentialLR; the values are what is compared
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_equals_torch_at_every_step(torch, name):
    build = SCHEDULES[name]
    theirs_opt = _groups_torch(torch)
    theirs = _trace(theirs_opt, build(torch.optim.lr_scheduler, theirs_opt), STEPS)
    ours_opt = _groups_ours()
    ours = _trace(ours_opt, build(ours_lrs, ours_opt), STEPS)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        assert a == b, f"{name}, step {step}: ours {a}, torch {b}"
    assert len({tuple(lrs) for lrs, _ in ours}) >= 2  # the schedule does move


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_resumes_from_state_dict(name, tmp_path):
    """Stop after 137 steps, save the optimizer's and the schedule's state through a checkpoint
    file, build both again, load, and go on: the rest of the sequence is the same."""
    build = SCHEDULES[name]
    optimizer = _groups_ours()
    scheduler = build(ours_lrs, optimizer)
    _trace(optimizer, scheduler, 137)
    weights.save(tmp_path / "state.npz", {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
    expected = _trace(optimizer, scheduler, 60)

    optimizer = _groups_ours()
    scheduler = build(ours_lrs, optimizer)
    state = weights.load(tmp_path / "state.npz")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    assert _trace(optimizer, scheduler, 60) == expected


def test_lambda_state_keeps_a_callable_objects_attributes():
    optimizer = _groups_ours()
    scheduler = ours_lrs.LambdaLR(optimizer, [_halving, Cycle(7)])
    state = scheduler.state_dict()
    assert state["lr_lambdas"] == [None, {"period": 7}] and "optimizer" not in state
    other = ours_lrs.LambdaLR(_groups_ours(), [_halving, Cycle(3)])
    other.load_state_dict(state)
    assert other.lr_lambdas[1].period == 7


def test_the_warmup_schedules_equal_their_chains():
    """WarmupMultiStepLR and WarmupCosineLR (closed forms, the trainer's) equal the chains of
    torch's schedules they stand for, built here from ours (tests/test_optim.py holds them equal
    to torch's)."""
    def lrs(build, steps):
        optimizer = _groups_ours()
        return np.array([row[0] for row in _trace(optimizer, build(optimizer), steps)])

    for method, warmup in (("linear", ours_lrs.LinearLR), ("constant", ours_lrs.ConstantLR)):
        closed = lrs(lambda o: optim.WarmupMultiStepLR(o, [60, 150, 151], gamma=0.2, warmup_factor=0.01,
                                                       warmup_iters=50, warmup_method=method), STEPS)
        chained = lrs(lambda o: ours_lrs.ChainedScheduler([warmup(o, 0.01, total_iters=50),
                                                           ours_lrs.MultiStepLR(o, [60, 150, 151], 0.2)]), STEPS)
        np.testing.assert_allclose(closed, chained, rtol=1e-13)
    closed = lrs(lambda o: optim.WarmupCosineLR(o, total_iters=STEPS, warmup_factor=0.1, warmup_iters=30,
                                                eta_min=1e-4), STEPS)
    sequence = lrs(lambda o: ours_lrs.SequentialLR(o, [ours_lrs.LinearLR(o, 0.1, total_iters=30),
                                                       ours_lrs.CosineAnnealingLR(o, STEPS - 30, 1e-4)], [30]), STEPS)
    np.testing.assert_allclose(closed, sequence, rtol=1e-12, atol=1e-17)


def test_schedules_reject_what_torch_rejects():
    optimizer = _groups_ours()
    with pytest.raises(ValueError, match="start_factor must be in"):
        ours_lrs.LinearLR(optimizer, start_factor=0.0)
    with pytest.raises(ValueError, match="factor must be in"):
        ours_lrs.ConstantLR(optimizer, factor=2.0)
    with pytest.raises(ValueError, match="one milestone fewer"):
        ours_lrs.SequentialLR(optimizer, [ours_lrs.StepLR(optimizer, 3)], milestones=[4])
    with pytest.raises(ValueError, match="another optimizer"):
        ours_lrs.ChainedScheduler([ours_lrs.StepLR(optimizer, 3), ours_lrs.StepLR(_groups_ours(), 3)])
    with pytest.raises(ValueError, match="2 lr_lambdas for 2|1 lr_lambdas for 2"):
        ours_lrs.LambdaLR(optimizer, [_halving])
    with pytest.raises(TypeError, match="needs an Optimizer"):
        ours_lrs.StepLR(object(), 3)
