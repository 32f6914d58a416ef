"""The Module framework: Parameter, Module (registration of parameters, buffers and children;
parameters(), state_dict(), load_state_dict(), train()/eval(), to()). See tinymaskrcnn/nn/__init__.py."""
from collections import OrderedDict, namedtuple

import numpy as np

from ..core.autograd import Tensor, as_array
from ..core.backend import as_device, device_of, get_array_module, is_cupy, is_torch, to_device, to_numpy


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


def format_state_mismatch(title, missing=(), unexpected=(), mismatched=(), fix=""):
    """The one report of a state that does not fit a module, for Module.load_state_dict and
    weights.load_torchvision (and through them resuming or loading a checkpoint): ``title``,
    then a line for each non-empty list, with counts and shapes, then ``fix``. ``missing`` and
    ``unexpected`` hold (key, shape), ``mismatched`` (key, state shape, module shape)."""
    lines = [f"{title}:"]
    if missing:
        lines.append(f"  missing ({len(missing)}, in the module, not in the state): "
                     + ", ".join(f"{k} {s}" for k, s in missing))
    if unexpected:
        lines.append(f"  unexpected ({len(unexpected)}, in the state, not in the module): "
                     + ", ".join(f"{k} {s}" for k, s in unexpected))
    if mismatched:
        lines.append(f"  mis-shaped ({len(mismatched)}): "
                     + ", ".join(f"{k}: state {a}, module {b}" for k, a, b in mismatched))
    if unexpected and all(k.startswith("module.") for k, _ in unexpected):
        lines.append("  hint: the keys start with 'module.' (saved from DataParallel): strip it first")
    lines.append(f"  fix: {fix}")
    return "\n".join(lines)


def is_optional_state_key(key):
    """True for a batch norm's num_batches_tracked: a state may leave it out (one saved from
    FrozenBatchNorm2d, as torchvision's COCO detector is) and the module keeps its own counter,
    as torch's BatchNorm2d does."""
    return key.rpartition(".")[2] == "num_batches_tracked"


def _copy_into(dest, value):
    """Copy ``value`` (array, Tensor or anything array-like, e.g. a CPU torch tensor) into the
    array ``dest`` in place, converting to ``dest``'s dtype and device."""
    value = as_array(value)
    xp = get_array_module(dest)
    src = to_numpy(value) if xp is np else xp.asarray(value)
    dest[...] = src.astype(dest.dtype, copy=False)


def _as_dtype(value):
    """The NumPy dtype named by ``value`` (a NumPy dtype or type, a name, or a torch.dtype, read
    by its name: torch.float64 is 'torch.float64'), or None when it names none."""
    if is_torch(value):
        name = str(value)
        value = name[len("torch."):] if name.startswith("torch.") and type(value).__name__ == "dtype" else None
    if value is None or isinstance(value, bool):
        return None
    try:
        return np.dtype(value)
    except TypeError:
        return None


def _is_device(value):
    if is_torch(value):
        return type(value).__name__ == "device"
    return isinstance(value, str) and value.partition(":")[0] in ("cpu", "cuda")


def parse_to_arguments(*args, device=None, dtype=None, non_blocking=False):
    """(device, dtype) from the arguments of ``Module.to``, as torch reads them: a device, a
    dtype, a device then a dtype, or an array or tensor whose device and dtype are taken (our
    Tensors, NumPy and CuPy arrays, torch tensors); a last positional bool is ``non_blocking``.
    The device comes back as 'cpu', 'cuda' or None, the dtype as a NumPy dtype or None."""
    if args and isinstance(args[-1], bool):
        args = args[:-1]  # non_blocking, given by position
    if len(args) > 2:
        raise TypeError(f"to() takes at most a device and a dtype by position, got {len(args)} arguments")
    found = {}
    for i, arg in enumerate(args):
        if i == 0 and _is_device(arg):
            found["device"] = arg
        elif i == 0 and hasattr(arg, "dtype") and hasattr(arg, "shape") and not isinstance(arg, (type, np.dtype)):
            # an array or tensor: its dtype and device (a torch tensor names both its own way)
            found["dtype"], found["device"] = arg.dtype, arg.device if is_torch(arg) else device_of(arg)
        elif (i == 0 or "device" in found) and _as_dtype(arg) is not None:
            found["dtype"] = arg
        else:
            raise TypeError(f"to() argument {i + 1} is {type(arg).__name__} {arg!r:.60}: expected a device ('cpu', "
                            "'cuda', 'cuda:0', a torch.device), then a floating dtype (np.float32, 'float64', "
                            "torch.float64); or an array or tensor to match")
    for name, value in (("device", device), ("dtype", dtype)):
        if value is not None:
            if name in found:
                raise TypeError(f"to() got the {name} twice, by position and as {name}=")
            found[name] = value
    device = as_device(found["device"]) if "device" in found else None
    dtype = found.get("dtype")
    if dtype is not None:
        resolved = _as_dtype(dtype)
        if resolved is None:
            raise TypeError(f"to(dtype={dtype!r}): not a dtype NumPy knows (float32 or float64)")
        dtype = resolved
    return device, dtype


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
        and keys the state has and the module lacks (unexpected), except a batch norm's
        num_batches_tracked, which torch too lets a state leave out. With ``strict=False`` the
        matching keys are loaded and ``(missing_keys, unexpected_keys)`` is returned.
        """
        if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
            raise TypeError(f"load_state_dict expects a mapping of name -> array, got {type(state_dict).__name__}")
        own = self.state_dict()
        ignored = {prefix + key for prefix, module in self._walk() for key in module._ignored_state_keys}
        missing = [k for k in own if k not in state_dict and not is_optional_state_key(k)]
        unexpected = [k for k in state_dict if k not in own and k not in ignored]
        mismatched = [k for k in own if k in state_dict and _shape_of(state_dict[k]) != tuple(own[k].shape)]
        if mismatched or (strict and (missing or unexpected)):
            raise ValueError(format_state_mismatch(
                f"Error(s) in loading state_dict for {type(self).__name__}",
                [(k, tuple(own[k].shape)) for k in missing] if strict else (),
                [(k, _shape_of(state_dict[k])) for k in unexpected] if strict else (),
                [(k, _shape_of(state_dict[k]), tuple(own[k].shape)) for k in mismatched],
                fix="build the module with the configuration the state was saved from, or pass strict=False to "
                    "load the keys that match (shapes must still agree; a shape mismatch is always an error)"))
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

    def to(self, *args, **kwargs):
        """Move and/or convert every parameter and buffer in place, as torch's ``Module.to``;
        returns self. The forms torch takes::

            model.to("cuda")                 # a device: "cpu", "cuda", "cuda:0" or a torch.device
            model.to(np.float64)             # a floating dtype: NumPy's, a name, or a torch.dtype
            model.to("cuda", torch.float32)  # both
            model.to(device="cpu", dtype="float64", non_blocking=True)
            model.to(other)                  # the dtype and device of an array or tensor

        Floating parameters and buffers take the dtype; integer buffers (num_batches_tracked)
        keep theirs. The Parameter objects stay the same (only their ``.data`` changes), so an
        optimizer that holds them keeps working. ``non_blocking`` is accepted and has no effect
        (NumPy and CuPy copies here are synchronous).
        """
        device, dtype = parse_to_arguments(*args, **kwargs)
        if dtype is not None and dtype.kind != "f":
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
