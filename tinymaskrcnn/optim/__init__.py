"""Optimisers and learning-rate schedules under torch.optim's names (``tm.optim`` for
``torch.optim``): ``optimizer.py`` holds SGD and AdamW with torch's exact updates and gradient
clipping, ``lr_scheduler.py`` the schedules (``tm.optim.lr_scheduler.StepLR`` ..., with torch's
values), and the detection recipe's warmup schedules, also named here as before."""
from . import lr_scheduler
from .lr_scheduler import LRScheduler, WarmupCosineLR, WarmupMultiStepLR
from .optimizer import SGD, AdamW, Optimizer, clip_grad_norm_

__all__ = ["Optimizer", "SGD", "AdamW", "clip_grad_norm_", "lr_scheduler", "LRScheduler", "WarmupMultiStepLR",
           "WarmupCosineLR"]
