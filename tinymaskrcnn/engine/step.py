"""One training step in one process: the losses of a batch and their gradients.

The trainer runs it on the whole batch in one process, and each data-parallel process
(engine/data_parallel.py) on its share.
"""
import numpy as np

from ..core import random as tm_random
from ..core.backend import get_array_module, to_numpy


def trainable_parameters(model):
    """The parameters that get gradients (requires_grad), in the model's order."""
    return [p for p in model.parameters() if p.requires_grad]


def forward_backward(model, images, targets, seed=None):
    """Losses of ``images`` and their gradient in every ``.grad`` (cleared first): returns
    (loss values, training statistics) as Python numbers. ``seed``, when given, reseeds the
    project's generator first (a data-parallel rank's share of a batch)."""
    if seed is not None:
        tm_random.manual_seed(seed)
    for p in model.parameters():
        p.grad = None
    stats = {}
    losses = model(images, targets, stats=stats)
    sum(losses.values()).backward()
    return read_at_once({name: loss.data for name, loss in losses.items()}, stats)


def read_at_once(*dicts):
    """Each dict of 0-d arrays (and numbers) as Python numbers, the arrays read from the device
    in one transfer: on the GPU one synchronisation per step instead of one per value."""
    names = [(i, k) for i, d in enumerate(dicts) for k, v in d.items() if hasattr(v, "dtype")]
    arrays = [dicts[i][k] for i, k in names]
    out = [dict(d) for d in dicts]
    if arrays:
        xp = get_array_module(*arrays)
        values = to_numpy(xp.stack([xp.asarray(a, dtype=np.float64).reshape(()) for a in arrays])).tolist()
        for (i, k), value in zip(names, values):
            out[i][k] = value
    return tuple(out)
