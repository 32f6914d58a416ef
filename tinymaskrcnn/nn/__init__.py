"""Modules: the torch.nn way of bundling parameters, buffers and a forward pass.

A ``Module`` is an object whose attributes are found by kind as they are assigned:

- a ``Parameter`` (a Tensor with ``requires_grad=True``) is something the optimizer trains;
- a buffer (``register_buffer``) is a plain array that belongs to the model's state but is not
  trained, such as BatchNorm's running statistics;
- a ``Module`` is a child, and its parameters and buffers become ours under ``child.name``.

That registration is all that ``parameters()``, ``state_dict()``, ``load_state_dict()``,
``train()``/``eval()`` and ``to()`` need. Names and order are torch's, so
``dict(model.state_dict())`` has exactly the keys of the torchvision model it mirrors and a
torchvision checkpoint loads by name.

The package reads in four parts:

- ``module.py``: Parameter and Module, the registration and state API;
- ``containers.py``: Sequential, ModuleList, ModuleDict;
- ``init.py`` (``nn.init``): torch.nn.init's initialisers, drawn from the project's generator
  (``tinymaskrcnn.core.random.get_rng()``), so ``tm.manual_seed`` makes a model repeatable;
- ``layers.py``: Conv2d, BatchNorm2d, Linear, ..., which only hold their parameters and call
  ``tinymaskrcnn.functional``; the forward and backward math lives in ``tinymaskrcnn/ops``.
  Their initialisation is torch's default.
"""
from . import init
from .containers import ModuleDict, ModuleList, Sequential
from .init import calculate_gain, constant_, kaiming_normal_, kaiming_uniform_, normal_, ones_, uniform_, zeros_
from .layers import BatchNorm2d, Conv2d, ConvTranspose2d, Flatten, FrozenBatchNorm2d, Identity, InstanceNorm2d, Linear, MaxPool2d, ReLU
from .module import IncompatibleKeys, Module, Parameter

__all__ = [
    "BatchNorm2d", "Conv2d", "ConvTranspose2d", "Flatten", "FrozenBatchNorm2d", "Identity", "IncompatibleKeys",
    "InstanceNorm2d", "Linear", "MaxPool2d", "Module", "ModuleDict", "ModuleList", "Parameter", "ReLU", "Sequential",
    "calculate_gain", "constant_", "init", "kaiming_normal_", "kaiming_uniform_", "normal_", "ones_", "uniform_",
    "zeros_",
]
