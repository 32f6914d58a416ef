"""One training step in one process: the losses of a batch and their gradients.

The trainer runs it on the whole batch in one process, and each data-parallel process
(engine/data_parallel.py) on its share.
"""
from ..core import random as tm_random


def trainable_parameters(model):
    """The parameters that get gradients (requires_grad), in the model's order."""
    return [p for p in model.parameters() if p.requires_grad]


def forward_backward(model, images, targets, seed=None):
    """Losses of ``images`` and their gradient in every ``.grad`` (cleared first): returns
    (loss values, training statistics). ``seed``, when given, reseeds the project's generator
    first (the worker's half of a batch)."""
    if seed is not None:
        tm_random.manual_seed(seed)
    for p in model.parameters():
        p.grad = None
    stats = {}
    losses = model(images, targets, stats=stats)
    values = {name: float(loss.item()) for name, loss in losses.items()}
    sum(losses.values()).backward()
    return values, stats
