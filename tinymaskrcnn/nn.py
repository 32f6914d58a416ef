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

The layers at the bottom (Conv2d, BatchNorm2d, Linear, ...) only hold their parameters and call
``tinymaskrcnn.functional``; the forward and backward math lives in ``tinymaskrcnn/ops``.
Initialisation is torch's default, drawn from the project's generator
(``tinymaskrcnn.random.get_rng()``), so ``tm.manual_seed`` makes a model repeatable.
"""
import math
from collections import OrderedDict, namedtuple
from types import SimpleNamespace

import numpy as np

from . import functional as F
from .autograd import Tensor, as_array
from .backend import get_array_module, get_default_dtype, is_cupy, to_device, to_numpy
from .ops.arguments import pair
from .random import get_rng


class Parameter(Tensor):
    """A Tensor that a Module registers as trainable: ``requires_grad`` is True by default.

    ``Parameter(array)`` shares the array (no copy), as ``torch.nn.Parameter`` shares storage.
    """

    def __init__(self, data, requires_grad=True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return f"Parameter containing:\n{self.data!r}"


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])
IncompatibleKeys.__doc__ = """What ``load_state_dict(strict=False)`` could not match (torch's ``_IncompatibleKeys``)."""


def _is_array(x):
    return isinstance(x, np.ndarray) or is_cupy(x)


def _shape_of(value):
    return tuple(getattr(value, "shape", np.shape(value)))


def _copy_into(dest, value):
    """Copy ``value`` (array, Tensor or anything array-like, e.g. a CPU torch tensor) into the
    array ``dest`` in place, converting to ``dest``'s dtype and device."""
    if isinstance(value, Tensor):
        value = value.data
    xp = get_array_module(dest)
    src = to_numpy(value) if xp is np else xp.asarray(value)
    dest[...] = src.astype(dest.dtype, copy=False)


def _indent(text, spaces=2):
    """Indent every line but the first: how a child's repr sits inside its parent's."""
    head, *rest = text.split("\n")
    return "\n".join([head] + [" " * spaces + line if line.strip() else "" for line in rest])


class Module:
    """Base class of every layer and model (torch.nn.Module's registration and state API).

    Subclasses call ``super().__init__()`` first, assign parameters, buffers and children as
    attributes, and define ``forward``; ``module(x)`` calls ``forward(x)``.
    """

    # state_dict keys a module accepts and drops when loading (FrozenBatchNorm2d ignores the
    # num_batches_tracked that a BatchNorm2d checkpoint carries, as torchvision's does)
    _ignored_state_keys = ()

    def __init__(self):
        # object.__setattr__: our own __setattr__ needs these dicts to exist already
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent_buffers", set())
        object.__setattr__(self, "_modules", OrderedDict())

    # ----- registration ------------------------------------------------------------------------

    def _check_initialised(self, name):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"cannot assign {name!r} before Module.__init__(): call super().__init__() "
                                 f"first in {type(self).__name__}.__init__")

    def register_parameter(self, name, param):
        """Register ``param`` (a Parameter, or None for an absent one such as ``bias=False``)."""
        self._check_initialised(name)
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot assign {type(param).__name__} as parameter {name!r}: "
                            "wrap it in nn.Parameter, or use register_buffer for untrained state")
        self._forget(name)
        self._parameters[name] = param

    def register_buffer(self, name, array, persistent=True):
        """Register an untrained array (or None) as part of the state; ``persistent=False`` keeps
        it out of ``state_dict``."""
        self._check_initialised(name)
        if isinstance(array, Tensor):
            array = array.data
        if array is not None and not _is_array(array):
            raise TypeError(f"buffer {name!r} must be an array or None, got {type(array).__name__}")
        self._forget(name)
        self._buffers[name] = array
        if not persistent:
            self._non_persistent_buffers.add(name)

    def add_module(self, name, module):
        """Register a child module (or None) under ``name``."""
        self._check_initialised(name)
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module (child {name!r})")
        if not isinstance(name, str) or "." in name or name == "":
            raise ValueError(f"module name must be a non-empty string without '.', got {name!r}")
        self._forget(name)
        self._modules[name] = module

    def _forget(self, name):
        """Drop ``name`` from every registry and the plain attributes, so it has one kind."""
        for registry in (self._parameters, self._buffers, self._modules):
            registry.pop(name, None)
        self._non_persistent_buffers.discard(name)
        self.__dict__.pop(name, None)

    def __setattr__(self, name, value):
        if isinstance(value, Parameter):
            self.register_parameter(name, value)
        elif isinstance(value, Module):
            self.add_module(name, value)
        elif "_parameters" in self.__dict__ and name in self._parameters:
            self.register_parameter(name, value)  # None is allowed, anything else raises
        elif "_modules" in self.__dict__ and name in self._modules:
            self.add_module(name, value)
        elif "_buffers" in self.__dict__ and name in self._buffers:
            value = as_array(value)
            if value is not None and not _is_array(value):
                raise TypeError(f"buffer {name!r} must be an array or None, got {type(value).__name__}")
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # only called when ordinary lookup fails: look in the registries
        d = self.__dict__
        for registry in ("_parameters", "_buffers", "_modules"):
            if registry in d and name in d[registry]:
                return d[registry][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        if any(name in r for r in (self._parameters, self._buffers, self._modules)):
            self._forget(name)
        else:
            object.__delattr__(self, name)

    # ----- traversal ---------------------------------------------------------------------------

    def named_modules(self, memo=None, prefix=""):
        """(name, module) for this module and every descendant, each module once, depth first."""
        if memo is None:
            memo = set()
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(memo, f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        seen = set()
        for name, child in self._modules.items():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def children(self):
        for _, m in self.named_children():
            yield m

    def _named_members(self, registry, prefix, recurse):
        modules = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        seen = set()
        for module_prefix, module in modules:
            for name, value in getattr(module, registry).items():
                if value is None or id(value) in seen:
                    continue
                seen.add(id(value))  # a shared parameter is listed (and stepped) once
                yield (f"{module_prefix}.{name}" if module_prefix else name), value

    def named_parameters(self, prefix="", recurse=True):
        """(dotted name, Parameter) pairs, e.g. ``("layer1.0.conv1.weight", p)``."""
        return self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True):
        """(dotted name, array) pairs of the buffers (running statistics and the like)."""
        return self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def apply(self, fn):
        """Call ``fn(module)`` on every descendant and then this module; returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # ----- state -------------------------------------------------------------------------------

    def _walk(self, prefix=""):
        """(key prefix, module) in state_dict order: this module, then each child's subtree.
        Unlike named_modules a module shared under two names is visited under both, as torch's
        state_dict lists it twice."""
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child._walk(f"{prefix}{name}.")

    def state_dict(self, prefix=""):
        """An OrderedDict of key → array: each module's parameters, then its persistent buffers,
        then its children's, in torch's order and with torch's keys.

        The arrays are the module's own (no copy), as torch's state_dict shares storage: copy
        them to keep a snapshot that later training must not change.
        """
        state = OrderedDict()
        for module_prefix, module in self._walk(prefix):
            for name, p in module._parameters.items():
                if p is not None:
                    state[module_prefix + name] = p.data
            for name, b in module._buffers.items():
                if b is not None and name not in module._non_persistent_buffers:
                    state[module_prefix + name] = b
        return state

    def load_state_dict(self, state_dict, strict=True):
        """Copy the arrays of ``state_dict`` into the parameters and buffers of the same name, in
        place, converted to each one's dtype and device.

        Values may be arrays, Tensors or CPU torch tensors. A key whose shape differs always
        raises; with ``strict=True`` so do keys the module has and the state lacks (missing)
        and keys the state has and the module lacks (unexpected). With ``strict=False`` the
        matching keys are loaded and ``(missing_keys, unexpected_keys)`` is returned.
        """
        if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
            raise TypeError(f"load_state_dict expects a mapping of name -> array, got {type(state_dict).__name__}")
        own = self.state_dict()
        ignored = {prefix + key for prefix, module in self._walk() for key in module._ignored_state_keys}
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own and k not in ignored]
        mismatched = [k for k in own if k in state_dict and _shape_of(state_dict[k]) != tuple(own[k].shape)]
        if mismatched or (strict and (missing or unexpected)):
            lines = [f"Error(s) in loading state_dict for {type(self).__name__}:"]
            if mismatched:
                lines.append("  shape mismatch (always an error): " + "; ".join(
                    f"{k!r}: state has shape {_shape_of(state_dict[k])}, module has {tuple(own[k].shape)}" for k in mismatched))
            if strict and missing:
                lines.append("  missing keys (in the module, not in the state): " + ", ".join(
                    f"{k!r} {tuple(own[k].shape)}" for k in missing))
            if strict and unexpected:
                lines.append("  unexpected keys (in the state, not in the module): " + ", ".join(
                    f"{k!r} {_shape_of(state_dict[k])}" for k in unexpected))
            lines.append("  fix: build the module with the configuration the state was saved from, or pass "
                         "strict=False to load the keys that match (shapes must still agree)")
            raise ValueError("\n".join(lines))
        for key, dest in own.items():
            if key in state_dict:
                _copy_into(dest, state_dict[key])
        return IncompatibleKeys(missing, unexpected)

    # ----- modes, dtype, device, gradients --------------------------------------------------------

    def train(self, mode=True):
        """Training mode (batch statistics in BatchNorm, sampling and losses in the detection
        heads) for this module and all descendants; returns self."""
        if not isinstance(mode, bool):
            raise ValueError(f"train(mode) expects a bool, got {mode!r}")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        """Inference mode: ``train(False)``."""
        return self.train(False)

    def to(self, dtype=None, device=None):
        """Convert parameters and floating buffers to ``dtype`` and/or move every parameter and
        buffer to ``device`` ('cpu' or 'cuda'), in place; returns self.

        The Parameter objects stay the same (only their ``.data`` changes), so an optimizer that
        holds them keeps working. Integer buffers such as num_batches_tracked keep their dtype.
        """
        if dtype is not None:
            dtype = np.dtype(dtype)
            if dtype.kind != "f":
                raise ValueError(f"Module.to(dtype=...) needs a floating dtype (float32 or float64), got {dtype}")

        def convert(a):
            if dtype is not None and a.dtype.kind == "f" and a.dtype != dtype:
                a = a.astype(dtype)
            return a if device is None else to_device(a, device)

        for m in self.modules():
            for p in m._parameters.values():
                if p is not None:
                    p.data = convert(p.data)
                    if p.grad is not None:
                        p.grad = convert(p.grad)
            for name, b in m._buffers.items():
                if b is not None:
                    m._buffers[name] = convert(b)
        return self

    def float(self):
        return self.to(dtype=np.float32)

    def double(self):
        return self.to(dtype=np.float64)

    def requires_grad_(self, requires_grad=True):
        """Switch gradient tracking of every parameter on or off (freezing); returns self."""
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
        return self

    def zero_grad(self, set_to_none=True):
        """Forget accumulated gradients (set to None, or zero them in place)."""
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad[...] = 0

    # ----- calling and printing ------------------------------------------------------------------

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward(): define it in the subclass")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def extra_repr(self):
        """The layer's settings, shown inside the parentheses of its repr."""
        return ""

    def __repr__(self):
        extra = self.extra_repr()
        lines = extra.split("\n") if extra else []
        lines += [f"({name}): {_indent(repr(m))}" for name, m in self._modules.items()]
        if not lines:
            return f"{type(self).__name__}()"
        if len(lines) == 1 and not self._modules:
            return f"{type(self).__name__}({lines[0]})"
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"


# ----- containers ----------------------------------------------------------------------------------


class Sequential(Module):
    """Children called in order, named "0", "1", ... (or by an OrderedDict's keys)."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index):
        items = list(self._modules.items())
        if isinstance(index, slice):
            return Sequential(OrderedDict(items[index]))
        return items[_check_index(index, len(items), type(self).__name__)][1]

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self

    def forward(self, x):
        for m in self:
            x = m(x)
        return x


def _check_index(index, n, owner):
    if not isinstance(index, (int, np.integer)):
        raise TypeError(f"{owner} indices must be integers or slices, got {type(index).__name__}")
    if not -n <= index < n:
        raise IndexError(f"index {index} is out of range for a {owner} of length {n}")
    return int(index) % n


class ModuleList(Module):
    """A list of children, named "0", "1", ...; it has no forward of its own."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ModuleList(list(self._modules.values())[index])
        return self._modules[str(_check_index(index, len(self), type(self).__name__))]

    def __setitem__(self, index, module):
        self.add_module(str(_check_index(index, len(self), type(self).__name__)), module)

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self


class ModuleDict(Module):
    """A dict of children under string keys (insertion order); it has no forward of its own."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, key):
        if key not in self._modules:
            raise KeyError(f"{key!r} is not in this ModuleDict (keys: {list(self._modules)})")
        return self._modules[key]

    def __setitem__(self, key, module):
        self.add_module(key, module)

    def __delitem__(self, key):
        self._forget(key)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def __contains__(self, key):
        return key in self._modules

    def keys(self):
        return self._modules.keys()

    def items(self):
        return self._modules.items()

    def values(self):
        return self._modules.values()

    def update(self, modules):
        pairs = modules.items() if hasattr(modules, "items") else modules
        for key, m in pairs:
            self.add_module(key, m)


# ----- initialisation (torch.nn.init) ------------------------------------------------------------


def _fill(tensor, values):
    """Write NumPy ``values`` into the tensor's array in place (moving them to its device)."""
    arr = as_array(tensor)
    xp = get_array_module(arr)
    arr[...] = values if xp is np else xp.asarray(values)
    return tensor


def _draw_dtype(arr):
    # NumPy's generator draws float32 and float64 natively; anything else is drawn in float64
    return arr.dtype if arr.dtype in (np.float32, np.float64) else np.float64


def calculate_gain(nonlinearity, param=None):
    """The gain that keeps activations' variance steady through ``nonlinearity`` (torch's table):
    1 for linear/conv/sigmoid, 5/3 tanh, sqrt(2) relu, sqrt(2/(1+slope^2)) leaky_relu
    (slope 0.01 unless given), 3/4 selu."""
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                        "conv_transpose3d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise ValueError(f"leaky_relu's negative slope must be a number, got {param!r}")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}: use linear, conv2d, sigmoid, tanh, relu, "
                     "leaky_relu or selu")


def _fan_in_and_fan_out(arr):
    """fan_in = shape[1] × receptive field, fan_out = shape[0] × receptive field (torch's rule;
    for a ConvTranspose2d weight (in, out/groups, kh, kw) that makes fan_in = out/groups·kh·kw)."""
    if arr.ndim < 2:
        raise ValueError(f"fan in and fan out need a tensor of at least 2 dimensions, got shape {arr.shape}")
    receptive = int(np.prod(arr.shape[2:])) if arr.ndim > 2 else 1
    return arr.shape[1] * receptive, arr.shape[0] * receptive


def _kaiming_std(arr, a, mode, nonlinearity):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _fan_in_and_fan_out(arr)
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def uniform_(tensor, a=0.0, b=1.0):
    """Fill with U(a, b) draws, in place."""
    arr = as_array(tensor)
    u = get_rng().random(arr.shape, dtype=_draw_dtype(arr))
    return _fill(tensor, a + (b - a) * u)


def normal_(tensor, mean=0.0, std=1.0):
    """Fill with N(mean, std²) draws, in place."""
    arr = as_array(tensor)
    z = get_rng().standard_normal(arr.shape, dtype=_draw_dtype(arr))
    return _fill(tensor, mean + std * z)


def constant_(tensor, val):
    """Fill with ``val``, in place."""
    as_array(tensor)[...] = val
    return tensor


def zeros_(tensor):
    return constant_(tensor, 0.0)


def ones_(tensor):
    return constant_(tensor, 1.0)


def kaiming_uniform_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    """He et al. (2015) uniform: U(-bound, bound) with bound = sqrt(3) · gain / sqrt(fan), so the
    variance is gain²/fan. With a = sqrt(5) (torch's layer default) bound = 1/sqrt(fan_in)."""
    bound = math.sqrt(3.0) * _kaiming_std(as_array(tensor), a, mode, nonlinearity)
    return uniform_(tensor, -bound, bound)


def kaiming_normal_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    """He et al. (2015) normal: N(0, std²) with std = gain / sqrt(fan); torchvision's ResNet uses
    mode='fan_out', nonlinearity='relu'."""
    return normal_(tensor, 0.0, _kaiming_std(as_array(tensor), a, mode, nonlinearity))


init = SimpleNamespace(
    calculate_gain=calculate_gain, uniform_=uniform_, normal_=normal_, constant_=constant_, zeros_=zeros_,
    ones_=ones_, kaiming_uniform_=kaiming_uniform_, kaiming_normal_=kaiming_normal_)
init.__doc__ = "torch.nn.init's in-place initialisers, drawing from tinymaskrcnn.random.get_rng()."


# ----- layers ---------------------------------------------------------------------------------------


def _float_dtype(dtype):
    dtype = np.dtype(get_default_dtype() if dtype is None else dtype)
    if dtype.kind != "f":
        raise ValueError(f"parameters need a floating dtype (float32 or float64), got {dtype}")
    return dtype


def _empty_parameter(shape, dtype):
    return Parameter(np.empty(shape, dtype=dtype))


def _reset_weight_and_bias(weight, bias):
    """torch's default for Linear and convolutions: kaiming_uniform_(a=sqrt(5)) on the weight,
    i.e. U(±1/sqrt(fan_in)), and U(±1/sqrt(fan_in)) on the bias."""
    kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in, _ = _fan_in_and_fan_out(weight.data)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        uniform_(bias, -bound, bound)


class _ConvNd(Module):
    """What Conv2d and ConvTranspose2d share: settings, parameters, init and repr."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                 padding_mode, output_padding, transposed, dtype):
        super().__init__()
        if groups <= 0 or in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must be positive and divide in_channels={in_channels} "
                             f"and out_channels={out_channels}")
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode {padding_mode!r} is not supported: only 'zeros'")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        op = type(self).__name__
        self.kernel_size = pair(kernel_size, "kernel_size", op, 1)
        self.stride = pair(stride, "stride", op, 1)
        self.padding = pair(padding, "padding", op, 0)
        self.dilation = pair(dilation, "dilation", op, 1)
        self.output_padding = pair(output_padding, "output_padding", op, 0)
        self.padding_mode = padding_mode
        dtype = _float_dtype(dtype)
        # torch's layouts: conv (out, in/groups, kh, kw); transposed conv (in, out/groups, kh, kw)
        shape = ((in_channels, out_channels // groups) if transposed else (out_channels, in_channels // groups))
        self.weight = _empty_parameter(shape + self.kernel_size, dtype)
        self.register_parameter("bias", _empty_parameter((out_channels,), dtype) if bias else None)
        self.reset_parameters()

    def reset_parameters(self):
        _reset_weight_and_bias(self.weight, self.bias)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class Conv2d(_ConvNd):
    """2-D convolution (cross-correlation), torch.nn.Conv2d's arguments, weight (out, in/groups, kh, kw)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, 0, False, dtype)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ConvTranspose2d(_ConvNd):
    """2-D transposed convolution (the input-gradient of a convolution), torch's arguments,
    weight (in, out/groups, kh, kw)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros", dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, output_padding, True, dtype)

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding,
                                  self.groups, self.dilation)


class Linear(Module):
    """y = x W^T + b with weight (out_features, in_features), torch's init."""

    def __init__(self, in_features, out_features, bias=True, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        dtype = _float_dtype(dtype)
        self.weight = _empty_parameter((out_features, in_features), dtype)
        self.register_parameter("bias", _empty_parameter((out_features,), dtype) if bias else None)
        self.reset_parameters()

    def reset_parameters(self):
        _reset_weight_and_bias(self.weight, self.bias)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _check_4d(module, x):
    if len(getattr(x, "shape", ())) != 4:
        raise ValueError(f"{type(module).__name__} expects a 4-D input (N, C, H, W), got shape {getattr(x, 'shape', None)}")


class BatchNorm2d(Module):
    """Batch normalisation over (N, H, W) per channel, torch.nn.BatchNorm2d's behaviour.

    Training: normalise with the batch statistics and update the running ones,
    running = (1 - m) running + m batch (unbiased variance), m = ``momentum``, or the
    cumulative average 1/num_batches_tracked when ``momentum`` is None. Eval: normalise with the
    running statistics. Parameters weight (1) and bias (0) when ``affine``; buffers
    running_mean (0), running_var (1), num_batches_tracked (int64 0) when ``track_running_stats``.
    ``bias=False`` (keyword) drops the shift, as in recent torch.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, dtype=None,
                 *, bias=True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        dtype = _float_dtype(dtype)
        self.register_parameter("weight", Parameter(np.ones(num_features, dtype=dtype)) if affine else None)
        self.register_parameter("bias", Parameter(np.zeros(num_features, dtype=dtype)) if affine and bias else None)
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype=dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype=dtype))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)

    def forward(self, x):
        _check_4d(self, x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1  # a 0-d array: updated in place
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        # without running statistics there is nothing to use in eval: batch statistics it is
        use_batch_stats = self.training or self.running_mean is None
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            use_batch_stats, factor, self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class InstanceNorm2d(Module):
    """torch.nn.InstanceNorm2d without running statistics: each sample's channel normalised over
    its own (H, W), in train and eval alike (see ``F.instance_norm``). Parameters weight (1) and
    bias (0) when ``affine`` (torch's default is False). For models trained from scratch with
    one or two images per batch: training and inference then normalise the same way, where
    BatchNorm2d's running statistics, gathered over batches of one image, would not match what
    the layers saw in training.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False, track_running_stats=False, dtype=None):
        super().__init__()
        if track_running_stats:
            raise ValueError("InstanceNorm2d(track_running_stats=True) is not supported: each sample is normalised "
                             "by its own statistics; use BatchNorm2d for running statistics")
        self.num_features, self.eps, self.affine = num_features, eps, affine
        dtype = _float_dtype(dtype)
        self.register_parameter("weight", Parameter(np.ones(num_features, dtype=dtype)) if affine else None)
        self.register_parameter("bias", Parameter(np.zeros(num_features, dtype=dtype)) if affine else None)

    def forward(self, x):
        _check_4d(self, x)
        return F.instance_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}"


class FrozenBatchNorm2d(Module):
    """torchvision.ops.FrozenBatchNorm2d: y = (x - running_mean) / sqrt(running_var + eps) · weight
    + bias with all four as *buffers*: nothing is trained and the statistics never change, in
    train and eval alike. The detection backbones use it, since batches of 1-2 images give
    useless batch statistics. Loading a BatchNorm2d state drops its num_batches_tracked."""

    _ignored_state_keys = ("num_batches_tracked",)

    def __init__(self, num_features, eps=1e-5, dtype=None):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        dtype = _float_dtype(dtype)
        self.register_buffer("weight", np.ones(num_features, dtype=dtype))
        self.register_buffer("bias", np.zeros(num_features, dtype=dtype))
        self.register_buffer("running_mean", np.zeros(num_features, dtype=dtype))
        self.register_buffer("running_var", np.ones(num_features, dtype=dtype))

    def forward(self, x):
        _check_4d(self, x)
        return F.frozen_batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var, self.eps)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}"


class ReLU(Module):
    """max(x, 0). ``inplace`` is accepted for torch compatibility and ignored (arrays on the tape
    must not be overwritten)."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        return F.relu(x)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class MaxPool2d(Module):
    """Max over kernel_size windows, torch.nn.MaxPool2d's arguments (stride defaults to the kernel)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__()
        if return_indices:
            raise ValueError("MaxPool2d(return_indices=True) is not supported")
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding, self.dilation, self.ceil_mode = padding, dilation, ceil_mode

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class Flatten(Module):
    """Merge dims start_dim..end_dim into one (default: everything after the batch axis)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        shape = tuple(x.shape)
        start, end = self.start_dim % len(shape), self.end_dim % len(shape)
        return x.reshape(shape[:start] + (int(np.prod(shape[start:end + 1])),) + shape[end + 1:])

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    """Returns its input: a placeholder where a layer is switched off."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x
