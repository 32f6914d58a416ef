"""Learning-rate schedules with torch.optim.lr_scheduler's names, arguments and values.

A schedule owns nothing but a counter: each ``step()`` (once per epoch or iteration, after
``optimizer.step()``) advances ``last_epoch`` (t, torch's name) and writes a new ``lr`` into every
parameter group of the optimizer. Construction records each group's starting lr as
``initial_lr`` (the ``base_lrs``) and applies the value for t = 0.

torch computes most schedules *chainably*: the new lr is the group's current lr times a factor,
so that two schedules stepping the same optimizer multiply their effects (ChainedScheduler).
Every class here does the same, with the same factors in the same order of floating-point
operations, so a sequence of learning rates equals torch's to the last bit:

    StepLR             lr(t) = lr(t-1) · gamma          when t > 0 and step_size divides t
    MultiStepLR        lr(t) = lr(t-1) · gamma^c        c = how often t is among the milestones
    ConstantLR         lr(0) = lr · factor, lr(total_iters) = lr(total_iters - 1) / factor
    LinearLR           lr(0) = lr · s, and for 0 < t <= T (s, e: start and end factors)
                       lr(t) = lr(t-1) · (1 + (e - s) / (T·s + (t-1)·(e - s)))
                       which telescopes to base_lr · (s + (e - s) · t / T)
    ExponentialLR      lr(t) = lr(t-1) · gamma
    CosineAnnealingLR  lr(t) - eta_min = (lr(t-1) - eta_min) · (1 + cos(pi t/T)) / (1 + cos(pi (t-1)/T)),
                       which telescopes to eta_min + (base_lr - eta_min) · (1 + cos(pi t / T)) / 2;
                       at the bottom of each period, where that ratio is 0/0, it climbs by
                       (base_lr - eta_min) · (1 - cos(pi / T)) / 2 instead
    LambdaLR           lr(t) = base_lr · lr_lambda(t)    (not chainable: a closed form)

``SequentialLR`` runs one schedule after another, switching at its milestones; the schedule
switched to restarts from its own closed form at t = 0. ``ChainedScheduler`` steps several on
the same optimizer at once. The detection recipe's ``WarmupMultiStepLR`` and ``WarmupCosineLR``
stand beside them on the same base class: closed forms that equal a LinearLR (or ConstantLR)
warmup chained with MultiStepLR, and a LinearLR warmup followed by CosineAnnealingLR held at its
minimum (the tests hold each equal to those chains and to torch's).

``state_dict()`` holds everything but the optimizer (which has its own), so a run resumes
exactly: load the optimizer's state (its groups carry the current lr) and the schedule's.
"""
import copy
import math
import types
from bisect import bisect_right

from .optimizer import Optimizer

__all__ = ["LRScheduler", "StepLR", "MultiStepLR", "ConstantLR", "LinearLR", "ExponentialLR", "CosineAnnealingLR",
           "LambdaLR", "SequentialLR", "ChainedScheduler", "WarmupMultiStepLR", "WarmupCosineLR"]


class LRScheduler:
    """Base of the schedules (torch.optim.lr_scheduler.LRScheduler's protocol).

    A subclass defines ``get_lr()``: the lrs for ``last_epoch`` from the groups' current ones
    (chainable) or from ``base_lrs``; and, where one exists, ``_closed_form_lr()``: the lrs at
    ``last_epoch`` from ``base_lrs`` alone, which SequentialLR uses to restart a schedule.
    ``_initial`` is True during the step that construction takes, as some schedules leave the
    lr alone then.
    """

    def __init__(self, optimizer, last_epoch=-1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__} needs an Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            if last_epoch == -1:
                group.setdefault("initial_lr", group["lr"])
            elif "initial_lr" not in group:
                raise KeyError("resuming a schedule (last_epoch != -1) needs 'initial_lr' in every parameter "
                               "group: load the optimizer's state_dict first")
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._initial_step()

    def _initial_step(self):
        self._step_count, self._initial = 0, True
        try:
            self.step()
        finally:
            self._initial = False

    def get_lr(self):
        raise NotImplementedError(f"{type(self).__name__} defines no get_lr()")

    def _closed_form_lr(self):
        return self.get_lr()

    def _current_lrs(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    def step(self):
        """Advance one epoch (or iteration) and set every group's lr."""
        self._step_count += 1
        self.last_epoch += 1
        self._set_lrs(self.get_lr())

    def _restart(self):
        """Jump to t = 0 by the closed form (SequentialLR at a milestone)."""
        self.last_epoch = 0
        self._set_lrs(self._closed_form_lr())

    def _set_lrs(self, values):
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr
        self._last_lr = self._current_lrs()

    def get_last_lr(self):
        """The learning rates the last ``step()`` set, one per parameter group."""
        return list(self._last_lr)

    def state_dict(self):
        """Everything but the optimizer (which has its own state_dict)."""
        return {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict):
        self.__dict__.update(copy.deepcopy(state_dict))


class StepLR(LRScheduler):
    """Multiply the lr by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]

    def _closed_form_lr(self):
        return [base * self.gamma ** (self.last_epoch // self.step_size) for base in self.base_lrs]


class MultiStepLR(LRScheduler):
    """Multiply the lr by ``gamma`` at each milestone (epoch numbers; one repeated k times
    multiplies by gamma^k there)."""

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        self.milestones, self.gamma = sorted(milestones), gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        hits = self.milestones.count(self.last_epoch)
        if hits == 0:
            return self._current_lrs()
        return [lr * self.gamma ** hits for lr in self._current_lrs()]

    def _closed_form_lr(self):
        return [base * self.gamma ** bisect_right(self.milestones, self.last_epoch) for base in self.base_lrs]


class ConstantLR(LRScheduler):
    """The lr times ``factor`` for the first ``total_iters`` epochs, then the lr itself."""

    def __init__(self, optimizer, factor=1.0 / 3, total_iters=5, last_epoch=-1):
        if not 0 <= factor <= 1:
            raise ValueError(f"ConstantLR factor must be in [0, 1], got {factor}")
        self.factor, self.total_iters = factor, total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch == 0:
            return [lr * self.factor for lr in self._current_lrs()]
        if self.last_epoch != self.total_iters:
            return self._current_lrs()
        return [lr * (1.0 / self.factor) for lr in self._current_lrs()]

    def _closed_form_lr(self):
        done = self.last_epoch >= self.total_iters
        return [base * (self.factor + done * (1 - self.factor)) for base in self.base_lrs]


class LinearLR(LRScheduler):
    """The lr times a factor that moves linearly from ``start_factor`` to ``end_factor`` over
    ``total_iters`` epochs, then stays (the usual warmup: start_factor small, end_factor 1)."""

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5, last_epoch=-1):
        if not 0 < start_factor <= 1:
            raise ValueError(f"LinearLR start_factor must be in (0, 1], got {start_factor}")
        if not 0 <= end_factor <= 1:
            raise ValueError(f"LinearLR end_factor must be in [0, 1], got {end_factor}")
        self.start_factor, self.end_factor, self.total_iters = start_factor, end_factor, total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch == 0:
            return [lr * self.start_factor for lr in self._current_lrs()]
        if self._initial or self.last_epoch > self.total_iters:
            return self._current_lrs()
        rise = self.end_factor - self.start_factor
        factor = 1.0 + rise / (self.total_iters * self.start_factor + (self.last_epoch - 1) * rise)
        return [lr * factor for lr in self._current_lrs()]

    def _closed_form_lr(self):
        progress = min(self.total_iters, self.last_epoch)
        return [base * (self.start_factor + (self.end_factor - self.start_factor) * progress / self.total_iters)
                for base in self.base_lrs]


class ExponentialLR(LRScheduler):
    """Multiply the lr by ``gamma`` every epoch."""

    def __init__(self, optimizer, gamma, last_epoch=-1):
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self._initial:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]

    def _closed_form_lr(self):
        return [base * self.gamma ** self.last_epoch for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """Half a cosine from the lr down to ``eta_min`` over ``T_max`` epochs, then back up over
    the next T_max, and so on (SGDR without restarts; the module docstring gives the step)."""

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        t, period = self.last_epoch, self.T_max
        if self._initial:
            return self._current_lrs()
        if (t - 1 - period) % (2 * period) == 0:  # leaving the bottom: the ratio below would be 0/0
            return [lr + (base - self.eta_min) * (1 - math.cos(math.pi / period)) / 2
                    for lr, base in zip(self._current_lrs(), self.base_lrs)]
        ratio = (1 + math.cos(math.pi * t / period)) / (1 + math.cos(math.pi * (t - 1) / period))
        return [ratio * (lr - self.eta_min) + self.eta_min for lr in self._current_lrs()]

    def _closed_form_lr(self):
        return [self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for base in self.base_lrs]


class LambdaLR(LRScheduler):
    """lr(t) = base_lr · lr_lambda(t), with one function for all groups or one per group.

    ``state_dict`` keeps a callable object's attributes but not a plain function (which a
    checkpoint cannot hold); build the schedule with the same function before loading.
    """

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != len(optimizer.param_groups):
                raise ValueError(f"LambdaLR got {len(lr_lambda)} lr_lambdas for {len(optimizer.param_groups)} "
                                 "parameter groups: give one, or one per group")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * len(optimizer.param_groups)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [base * fn(self.last_epoch) for fn, base in zip(self.lr_lambdas, self.base_lrs)]

    def state_dict(self):
        state = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        state["lr_lambdas"] = [None if isinstance(fn, types.FunctionType) else copy.deepcopy(fn.__dict__)
                               for fn in self.lr_lambdas]
        return state

    def load_state_dict(self, state_dict):
        state = copy.deepcopy(dict(state_dict))
        for fn, attributes in zip(self.lr_lambdas, state.pop("lr_lambdas")):
            if attributes is not None:
                fn.__dict__.update(attributes)
        self.__dict__.update(state)


def _check_same_optimizer(kind, schedulers, optimizer):
    if not schedulers:
        raise ValueError(f"{kind} needs at least one schedule")
    for i, scheduler in enumerate(schedulers):
        if getattr(scheduler, "optimizer", None) is not optimizer:
            raise ValueError(f"{kind}: schedule {i} ({type(scheduler).__name__}) steps another optimizer; every "
                             "schedule must step the same one")


class _Composite(LRScheduler):
    """What SequentialLR and ChainedScheduler share: a list of schedules saved and loaded with
    them (their own __init__ replaces the base's: they take no step of their own at first)."""

    def state_dict(self):
        state = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k not in ("optimizer", "_schedulers")}
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state_dict):
        state = copy.deepcopy(dict(state_dict))
        for scheduler, saved in zip(self._schedulers, state.pop("_schedulers")):
            scheduler.load_state_dict(saved)
        self.__dict__.update(state)


def _step_back(scheduler):
    """Undo the step each schedule took when it was built (nested composites included)."""
    if hasattr(scheduler, "_schedulers"):
        for inner in scheduler._schedulers:
            _step_back(inner)
    else:
        scheduler.last_epoch -= 1


class SequentialLR(_Composite):
    """``schedulers[i]`` runs from ``milestones[i - 1]`` up to ``milestones[i]``; each one after
    the first restarts at its milestone from its closed form at t = 0, e.g. a LinearLR warmup
    for 5 epochs and then a CosineAnnealingLR: ``SequentialLR(opt, [warmup, cosine], [5])``."""

    def __init__(self, optimizer, schedulers, milestones, last_epoch=-1):
        _check_same_optimizer("SequentialLR", schedulers, optimizer)
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"SequentialLR needs one milestone fewer than schedules: got {len(schedulers)} "
                             f"schedules and {len(milestones)} milestones")
        self._schedulers, self._milestones = list(schedulers), list(milestones)
        self.optimizer, self.last_epoch = optimizer, last_epoch + 1
        # the schedules were built one after another, each stepping the lr: start again from
        # the initial lr and let only the first one take its first step
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        _step_back(self)
        first = self._schedulers[bisect_right(self._milestones, 0)]
        first._initial_step()
        self._last_lr = first.get_last_lr()

    def step(self):
        self.last_epoch += 1
        index = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[index]
        if index > 0 and self._milestones[index - 1] == self.last_epoch:
            scheduler._restart()
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()


class ChainedScheduler(_Composite):
    """Step every schedule in ``schedulers`` at each ``step()``: chainable schedules multiply,
    e.g. ``ChainedScheduler([LinearLR(opt, 0.001, total_iters=1000), MultiStepLR(opt, [8000])])``
    is a warmup followed by a decay."""

    def __init__(self, schedulers, optimizer=None):
        if optimizer is None and schedulers:
            optimizer = getattr(schedulers[0], "optimizer", None)
        _check_same_optimizer("ChainedScheduler", schedulers, optimizer)
        self._schedulers, self.optimizer = list(schedulers), optimizer
        self._last_lr = self._current_lrs()

    def step(self):
        for scheduler in self._schedulers:
            scheduler.step()
        self._last_lr = self._current_lrs()


# ----- the detection recipe's schedules, in closed form ------------------------------------------


def _warmup_factor(step, warmup_iters, warmup_factor, method):
    """The multiplier during warmup: ``warmup_factor`` rising linearly to 1 at ``warmup_iters``
    (method 'linear', LinearLR's closed form), or held at ``warmup_factor`` ('constant', ConstantLR)."""
    if step >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    alpha = step / warmup_iters
    return warmup_factor * (1 - alpha) + alpha


def _check_warmup(method, warmup_iters):
    if method not in ("linear", "constant"):
        raise ValueError(f"warmup_method must be 'linear' or 'constant', got {method!r}")
    if warmup_iters < 0:
        raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")


class WarmupMultiStepLR(LRScheduler):
    """The detection recipe: warmup over ``warmup_iters`` iterations, then the lr multiplied by
    ``gamma`` at each milestone (iteration numbers, increasing):

        lr(t) = base_lr · warmup(t) · gamma^(number of milestones <= t)

    Equal (to rounding) to ChainedScheduler([LinearLR(opt, warmup_factor, total_iters=warmup_iters),
    MultiStepLR(opt, milestones, gamma)]) stepped once per iteration (ConstantLR for
    ``warmup_method='constant'``). Kept in closed form: each value depends on t alone, which is
    what the trainer's runs were made with.
    """

    def __init__(self, optimizer, milestones, gamma=0.1, warmup_factor=1.0 / 1000, warmup_iters=1000,
                 warmup_method="linear", last_epoch=-1):
        milestones = list(milestones)
        if milestones != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {milestones}")
        _check_warmup(warmup_method, warmup_iters)
        self.milestones, self.gamma = milestones, gamma
        self.warmup_factor, self.warmup_iters, self.warmup_method = warmup_factor, warmup_iters, warmup_method
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        warmup = _warmup_factor(self.last_epoch, self.warmup_iters, self.warmup_factor, self.warmup_method)
        return [base * warmup * self.gamma ** bisect_right(self.milestones, self.last_epoch) for base in self.base_lrs]


class WarmupCosineLR(LRScheduler):
    """Warmup over ``warmup_iters`` iterations, then half a cosine from base_lr down to
    ``eta_min`` at ``total_iters`` (held there afterwards):

        lr(t) = base_lr · warmup(t)                                        t < warmup_iters
        lr(t) = eta_min + (base_lr - eta_min) · (1 + cos(pi · s)) / 2,      s = (t - W) / (T - W) <= 1

    Equal (to rounding, up to ``total_iters``) to SequentialLR(opt, [LinearLR(opt, warmup_factor,
    total_iters=W), CosineAnnealingLR(opt, T_max=T - W, eta_min)], milestones=[W]); unlike
    CosineAnnealingLR it does not climb again after T.
    """

    def __init__(self, optimizer, total_iters, warmup_factor=1.0 / 1000, warmup_iters=0, eta_min=0.0,
                 warmup_method="linear", last_epoch=-1):
        _check_warmup(warmup_method, warmup_iters)
        if total_iters <= warmup_iters:
            raise ValueError(f"total_iters ({total_iters}) must exceed warmup_iters ({warmup_iters})")
        self.total_iters, self.eta_min = total_iters, eta_min
        self.warmup_factor, self.warmup_iters, self.warmup_method = warmup_factor, warmup_iters, warmup_method
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [self._lr_at(base, self.last_epoch) for base in self.base_lrs]

    def _lr_at(self, base_lr, step):
        if step < self.warmup_iters:
            return base_lr * _warmup_factor(step, self.warmup_iters, self.warmup_factor, self.warmup_method)
        span = self.total_iters - self.warmup_iters
        s = min(step - self.warmup_iters, span) / span
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * s)) / 2
