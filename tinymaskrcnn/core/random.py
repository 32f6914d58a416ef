"""The project's one random number generator.

Parameter initialisation, samplers, data shuffling and augmentation all draw from it, so
``manual_seed`` makes a run repeatable and ``get_state``/``set_state`` let a checkpoint resume
a run exactly.
"""
import numpy as np

_rng = np.random.default_rng(0)


def manual_seed(seed):
    """Reseed the generator (like torch.manual_seed)."""
    global _rng
    _rng = np.random.default_rng(seed)
    return _rng


def get_rng():
    """The generator itself: ``get_rng().uniform(...)``."""
    return _rng


def get_state():
    """A JSON-serialisable snapshot of the generator's state."""
    return _rng.bit_generator.state


def set_state(state):
    """Restore a snapshot taken with ``get_state``."""
    _rng.bit_generator.state = state
