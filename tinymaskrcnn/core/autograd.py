"""The autograd tape: Tensor, Function and backward.

A ``Tensor`` wraps an array (``.data``) and, when it was made by an operation on tensors that
require gradients, remembers the ``Function`` that made it. That chain of Functions is the
tape. ``loss.backward()`` walks it from the loss back to the leaves in reverse topological
order, calling each Function's hand-written ``backward`` with the gradient of the loss with
respect to its output and adding the gradients it returns into its inputs.

Writing an op means subclassing ``Function``::

    class Exp(Function):
        def forward(self, x):            # arrays in, array out
            self.y = xp.exp(x)           # keep what backward needs on self
            return self.y
        def backward(self, dy):          # dL/dy in, one dL/d(input) per input out
            return (dy * self.y,)

    y = Exp.apply(x_tensor)

``backward`` returns one entry per positional argument of ``forward`` (``None`` for arguments
that are not tensors or need no gradient; ``self.needs_input_grad[i]`` says which do, so work
for unneeded gradients can be skipped).

The file in reading order:

1. the idea: ``Tensor`` (its ``backward`` is the reverse walk), ``Function`` (``apply`` runs
   an op and records it), ``topological_order`` (the order of the walk) and ``no_grad``;
2. memory: ``Node``, what the tape holds instead of tensors, so that it keeps no activation
   alive by itself and lets go of each Function's saved arrays once backward has used them;
3. the elementary ops behind the Tensor's operators (``Add`` … ``Stack``), the helpers they
   share (``as_array``, ``unbroadcast``), and torch's ``cat``, ``stack`` and ``tensor``.
"""
import numbers
import weakref

import numpy as np

from .backend import get_array_module, get_default_dtype, is_cupy

_grad_enabled = True


# ----- 1. the idea: Tensor, Function, the reverse walk, no_grad ----------------------------------


class Tensor:
    """An array with an optional gradient.

    ``data`` is a NumPy (or CuPy) array, never copied on construction; ``grad`` is an array of
    the same shape once ``backward`` has reached this tensor (leaves only, unless
    ``retain_grad()`` was called). Python scalars and lists become arrays of the default
    floating dtype; arrays keep their dtype.
    """

    __array_priority__ = 1000  # so ndarray + Tensor calls Tensor.__radd__

    def __init__(self, data, requires_grad=False):
        if isinstance(data, Tensor):
            data = data.data
        if not (isinstance(data, np.ndarray) or is_cupy(data)):
            arr = np.asarray(data)
            if arr.dtype.kind == "f" and not hasattr(data, "dtype"):
                arr = arr.astype(get_default_dtype())  # Python floats: the default dtype
            data = arr
        self.data = data
        self.grad = None
        self._node = None  # the tensor's place on the tape, for tensors that require a gradient
        self._retain_grad = False
        self.requires_grad = requires_grad

    @property
    def requires_grad(self):
        return self._node is not None

    @requires_grad.setter
    def requires_grad(self, flag):
        if flag and self._node is None:
            if self.data.dtype.kind != "f":
                raise TypeError(f"only floating tensors can require gradients, got dtype {self.data.dtype}")
            self._node = Node(None, self)  # a leaf
        elif not flag:
            self._node = None

    @property
    def _fn(self):
        """The Function that made this tensor (None for leaves and constants)."""
        return self._node.fn if self._node is not None else None

    # ----- backward: the reverse walk ------------------------------------------------------
    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into every leaf that requires a gradient.

        ``grad`` is the cotangent (dL/dself); it defaults to 1 for a one-element tensor. After
        the pass the tape is freed (saved arrays released) unless ``retain_graph=True``.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (made under no_grad, or from constants)")
        if self._node.freed:
            raise RuntimeError("backward through a freed graph: pass retain_graph=True to the first backward()")
        xp = get_array_module(self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a one-element tensor, got shape {self.shape}")
            grad = xp.ones_like(self.data)
        grad = xp.asarray(as_array(grad), dtype=self.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"gradient shape {grad.shape} does not match tensor shape {self.shape}")

        order = topological_order(self._node)
        grads = {id(self._node): grad}
        for node in reversed(order):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            fn = node.fn
            owner = node.owner()
            if fn is None:  # a leaf: accumulate, never alias an array the tape may hand out again
                if not node.freed and owner is not None and owner._node is node:
                    owner.grad = g.copy() if owner.grad is None else owner.grad + g
                continue
            if owner is not None and owner._retain_grad:
                owner.grad = g if owner.grad is None else owner.grad + g
            input_grads = fn.backward(g)
            if not isinstance(input_grads, tuple):
                input_grads = (input_grads,)
            if len(input_grads) != len(fn.inputs):
                raise RuntimeError(f"{type(fn).__name__}.backward returned {len(input_grads)} gradients for {len(fn.inputs)} inputs")
            for inp, ig in zip(fn.inputs, input_grads):
                if ig is None or inp is None:
                    continue
                if ig.shape != inp.shape:
                    raise RuntimeError(f"{type(fn).__name__}.backward gave a gradient of shape {ig.shape} for an input of shape {inp.shape}")
                k = id(inp)
                grads[k] = ig if k not in grads else grads[k] + ig
            if not retain_graph:
                node.release()

    def retain_grad(self):
        """Keep ``.grad`` on this non-leaf tensor after backward (for inspecting intermediates)."""
        self._retain_grad = True
        return self

    def zero_grad(self):
        self.grad = None

    def detach(self):
        """The same data, cut off from the tape."""
        return Tensor(self.data)

    # ----- introspection -------------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    is_leaf = property(lambda self: self._fn is None and not (self._node is not None and self._node.freed))

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        fn = f", fn={type(self._fn).__name__}" if self._fn is not None else ""
        rg = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.data!r}{rg}{fn})"

    def item(self):
        return self.data.item()

    def numpy(self):
        return self.data

    def astype(self, dtype):
        return Cast.apply(self, dtype=dtype)

    # ----- arithmetic (broadcasting; backward sums over broadcast axes) --------------------
    def __add__(self, other):
        return Add.apply(self, other)

    def __radd__(self, other):
        return Add.apply(other, self)

    def __sub__(self, other):
        return Sub.apply(self, other)

    def __rsub__(self, other):
        return Sub.apply(other, self)

    def __mul__(self, other):
        return Mul.apply(self, other)

    def __rmul__(self, other):
        return Mul.apply(other, self)

    def __truediv__(self, other):
        return Div.apply(self, other)

    def __rtruediv__(self, other):
        return Div.apply(other, self)

    def __neg__(self):
        return Mul.apply(self, -1.0)

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor):
            raise TypeError("only a constant exponent is supported: tensor ** number")
        return Pow.apply(self, exponent=exponent)

    def __matmul__(self, other):
        return MatMul.apply(self, other)

    def __rmatmul__(self, other):
        return MatMul.apply(other, self)

    # comparisons give plain boolean arrays: they have no gradient
    def __lt__(self, other):
        return self.data < as_array(other)

    def __le__(self, other):
        return self.data <= as_array(other)

    def __gt__(self, other):
        return self.data > as_array(other)

    def __ge__(self, other):
        return self.data >= as_array(other)

    def exp(self):
        return Exp.apply(self)

    def log(self):
        return Log.apply(self)

    def sqrt(self):
        return Pow.apply(self, exponent=0.5)

    def abs(self):
        return Abs.apply(self)

    def clamp(self, min=None, max=None):
        for name, bound in (("min", min), ("max", max)):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, numbers.Real)):
                raise TypeError(f"clamp: {name} must be a number or None, got {type(bound).__name__} "
                                f"(bounds that are tensors or arrays are not supported)")
        if min is None and max is None:
            raise ValueError("clamp: give min, max or both")
        return Clamp.apply(self, min=min, max=max)

    # ----- reductions and shape ------------------------------------------------------------
    def sum(self, axis=None, keepdims=False):
        return Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        n = self.data.size if axis is None else int(np.prod([self.shape[a] for a in np.atleast_1d(axis)]))
        return Sum.apply(self, axis=axis, keepdims=keepdims) * (1.0 / max(n, 1))

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return Reshape.apply(self, shape=shape)

    def view(self, *shape):
        return self.reshape(*shape)

    def flatten(self, start_dim=0, end_dim=-1):
        s = self.shape
        end = end_dim % len(s) if s else 0
        new = s[:start_dim] + (int(np.prod(s[start_dim:end + 1])),) + s[end + 1:]
        return self.reshape(new)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        if not axes:
            axes = tuple(reversed(range(self.ndim)))
        return Transpose.apply(self, axes=axes)

    def permute(self, *axes):
        return self.transpose(*axes)

    @property
    def T(self):
        return self.transpose()

    def __getitem__(self, index):
        return GetItem.apply(self, index=as_array(index))



class Function:
    """One differentiable operation. Subclasses define ``forward`` and ``backward`` on arrays."""

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def backward(self, grad_output):
        raise NotImplementedError

    @classmethod
    def apply(cls, *args, **kwargs):
        """Run ``forward`` on the arrays inside ``args`` and, if needed, record it on the tape."""
        fn = cls()
        fn.needs_input_grad = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        arrays = tuple(as_array(a) for a in args)
        out = fn.forward(*arrays, **kwargs)
        if isinstance(out, (np.generic, float, int)):
            out = np.asarray(out)  # reductions hand back NumPy scalars: keep everything an array
        result = Tensor(out)
        if _grad_enabled and any(fn.needs_input_grad):
            # the tape links nodes, not tensors (see Node): the inputs' arrays stay alive only
            # if this Function saved them for its backward
            fn.inputs = tuple(a._node if isinstance(a, Tensor) else None for a in args)
            result._node = Node(fn, result)
        return result


def topological_order(root):
    """Nodes reachable from ``root`` (a Node) through the tape, every node after its inputs.

    Iterative depth-first search: a ResNet-50 tape is thousands of nodes deep, past Python's
    recursion limit.
    """
    order, seen = [], {id(root)}
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        stack.append((node, True))
        if node.fn is not None:
            for inp in node.fn.inputs:
                if inp is not None and id(inp) not in seen:
                    seen.add(id(inp))
                    stack.append((inp, False))
    return order


class no_grad:
    """Context manager (and decorator) under which no operation is recorded on the tape."""

    def __enter__(self):
        global _grad_enabled
        self._prev, _grad_enabled = _grad_enabled, False

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self._prev
        return False

    def __call__(self, fn):
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)

        wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
        return wrapper


# ----- 2. memory: the tape holds Nodes, not tensors ----------------------------------------------


class Node:
    """A tensor as the tape sees it: the Function that made it (None for a leaf), its shape,
    and how to reach the tensor to hand it a gradient.

    A Function's ``inputs`` are Nodes, which hold no array, so the tape alone keeps no
    activation alive: an intermediate's array is freed once the forward pass drops it, unless
    a Function saved it for its backward. For the same reason an intermediate's Node reaches
    its tensor through a weak reference (needed only when ``retain_grad()`` was called), while
    a leaf's Node holds the leaf, which must receive ``.grad``. ``release`` lets go of the
    arrays a Function saved as soon as backward has run it.
    """

    __slots__ = ("fn", "shape", "tensor", "freed")

    def __init__(self, fn, tensor):
        self.fn, self.shape, self.freed = fn, tensor.shape, False
        self.tensor = tensor if fn is None else weakref.ref(tensor)

    def owner(self):
        """The tensor this node stands for, or None when it has been garbage-collected."""
        return self.tensor() if isinstance(self.tensor, weakref.ref) else self.tensor

    def release(self):
        """Drop the Function, and with it the arrays it saved; the node stays on the tape as
        freed, so a second backward through it fails clearly."""
        self.fn, self.freed = None, True


# ----- 3. the elementary ops and their helpers ---------------------------------------------------


def as_array(x):
    """The array inside a Tensor (inside each item of a tuple, as in an index), or ``x`` itself:
    how every op and module turns what it was given into arrays."""
    if isinstance(x, Tensor):
        return x.data
    if isinstance(x, tuple):
        return tuple(as_array(i) for i in x)
    return x


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the backward of NumPy broadcasting.

    Broadcasting copies an input along new leading axes and along axes of size 1, so its
    gradient is the sum of the output gradient over those axes.
    """
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


def _shape(x):
    return getattr(x, "shape", ())


# ----- elementwise arithmetic --------------------------------------------------------------------


class Add(Function):
    """z = a + b.   dL/da = dL/dz, dL/db = dL/dz (each summed over its broadcast axes)."""

    def forward(self, a, b):
        self.sa, self.sb = _shape(a), _shape(b)
        return a + b

    def backward(self, g):
        return (unbroadcast(g, self.sa) if self.needs_input_grad[0] else None,
                unbroadcast(g, self.sb) if self.needs_input_grad[1] else None)


class Sub(Function):
    """z = a - b.   dL/da = dL/dz, dL/db = -dL/dz."""

    def forward(self, a, b):
        self.sa, self.sb = _shape(a), _shape(b)
        return a - b

    def backward(self, g):
        return (unbroadcast(g, self.sa) if self.needs_input_grad[0] else None,
                unbroadcast(-g, self.sb) if self.needs_input_grad[1] else None)


class Mul(Function):
    """z = a * b.   dL/da = dL/dz * b, dL/db = dL/dz * a."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, g):
        return (unbroadcast(g * self.b, _shape(self.a)) if self.needs_input_grad[0] else None,
                unbroadcast(g * self.a, _shape(self.b)) if self.needs_input_grad[1] else None)


class Div(Function):
    """z = a / b.   dL/da = dL/dz / b, dL/db = -dL/dz * a / b^2 = -dL/dz * z / b."""

    def forward(self, a, b):
        self.a, self.b = a, b
        self.z = a / b
        return self.z

    def backward(self, g):
        return (unbroadcast(g / self.b, _shape(self.a)) if self.needs_input_grad[0] else None,
                unbroadcast(-g * self.z / self.b, _shape(self.b)) if self.needs_input_grad[1] else None)


class Pow(Function):
    """z = x^p for a constant p.   dL/dx = dL/dz * p x^(p-1)."""

    def forward(self, x, exponent):
        self.x, self.p = x, exponent
        return x ** exponent

    def backward(self, g):
        return (g * self.p * self.x ** (self.p - 1),)


class Exp(Function):
    """z = e^x.   dL/dx = dL/dz * z."""

    def forward(self, x):
        self.z = get_array_module(x).exp(x)
        return self.z

    def backward(self, g):
        return (g * self.z,)


class Log(Function):
    """z = ln x.   dL/dx = dL/dz / x."""

    def forward(self, x):
        self.x = x
        return get_array_module(x).log(x)

    def backward(self, g):
        return (g / self.x,)


class Abs(Function):
    """z = |x|.   dL/dx = dL/dz * sign(x), with torch's conventions: 0 at the kink x = 0, and 0
    at NaN (where NumPy's sign would give NaN)."""

    def forward(self, x):
        self.x = x
        return abs(x)

    def backward(self, g):
        return (g * (self.x > 0) - g * (self.x < 0),)


class Clamp(Function):
    """z = min(max(x, lo), hi) for number bounds.   dL/dx = dL/dz where lo < x < hi, else 0.

    On a bound itself the gradient is 0: torch's convention for number bounds (torch 2.x), as if
    the flat part began there. NaN stays NaN with gradient 0; lo > hi gives hi everywhere, with
    gradient 0.
    """

    def forward(self, x, min=None, max=None):
        xp = get_array_module(x)
        self.mask = xp.ones(x.shape, dtype=bool)
        if min is not None:
            self.mask &= x > min
        if max is not None:
            self.mask &= x < max
        return xp.clip(x, min, max)

    def backward(self, g):
        return (g * self.mask,)


class Cast(Function):
    """z = x converted to another dtype.   dL/dx = dL/dz converted back."""

    def forward(self, x, dtype):
        self.dtype = x.dtype
        return x.astype(dtype)

    def backward(self, g):
        return (g.astype(self.dtype),)


class MatMul(Function):
    """Z = A @ B (2-D, or batched with leading axes).   dL/dA = G B^T,  dL/dB = A^T G."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a @ b

    def backward(self, g):
        sw = lambda m: m.swapaxes(-1, -2)
        da = unbroadcast(g @ sw(self.b), self.a.shape) if self.needs_input_grad[0] else None
        db = unbroadcast(sw(self.a) @ g, self.b.shape) if self.needs_input_grad[1] else None
        return da, db


# ----- reductions and shape ----------------------------------------------------------------------


class Sum(Function):
    """z = sum of x over ``axis``.   dL/dx = dL/dz broadcast back over the summed axes."""

    def forward(self, x, axis=None, keepdims=False):
        self.shape, self.axis, self.keepdims = x.shape, axis, keepdims
        return x.sum(axis=axis, keepdims=keepdims)

    def backward(self, g):
        xp = get_array_module(g)
        if self.axis is not None and not self.keepdims:
            axes = tuple(a % len(self.shape) for a in np.atleast_1d(self.axis))
            g = xp.expand_dims(g, axes)
        elif self.axis is None and not self.keepdims:
            g = g.reshape((1,) * len(self.shape))
        return (xp.broadcast_to(g, self.shape).copy(),)


class Reshape(Function):
    """z = x viewed with a new shape.   dL/dx = dL/dz reshaped back."""

    def forward(self, x, shape):
        self.shape = x.shape
        return x.reshape(shape)

    def backward(self, g):
        return (g.reshape(self.shape),)


class Transpose(Function):
    """z = x with axes permuted.   dL/dx = dL/dz with the inverse permutation."""

    def forward(self, x, axes):
        self.inverse = tuple(np.argsort(axes))
        return x.transpose(axes)

    def backward(self, g):
        return (g.transpose(self.inverse),)


class GetItem(Function):
    """z = x[index] (slices, integer arrays, boolean masks).

    dL/dx is zero except at the selected positions, where the output gradient is added.
    Advanced indexing can select the same element twice, so its backward is a scatter-add
    (``xp.add.at``), not an assignment; basic indexing (slices, integers) selects each element
    at most once, so there an assignment is the same sum, and many times faster.
    """

    def forward(self, x, index):
        self.shape, self.dtype, self.index = x.shape, x.dtype, index
        return x[index]

    def backward(self, g):
        xp = get_array_module(g)
        dx = xp.zeros(self.shape, dtype=self.dtype)
        if _is_basic_index(self.index):
            dx[self.index] = g
        else:
            xp.add.at(dx, self.index, g)
        return (dx,)


def _is_basic_index(index):
    """Whether ``index`` is made of slices, integers, None and Ellipsis only (no arrays, lists
    or booleans: NumPy's basic indexing, which never selects an element twice)."""
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (slice, type(None), type(Ellipsis))) or
               (isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_))) for i in items)


class Concatenate(Function):
    """z = concatenate(x_1..x_n, axis).   dL/dx_i = the slice of dL/dz that x_i filled."""

    def forward(self, *xs, axis=0):
        xp = get_array_module(*xs)
        self.axis = axis
        self.bounds = np.cumsum([0] + [x.shape[axis] for x in xs])
        return xp.concatenate(xs, axis=axis)

    def backward(self, g):
        out = []
        for i, needed in enumerate(self.needs_input_grad):
            if not needed:
                out.append(None)
                continue
            sl = [slice(None)] * g.ndim
            sl[self.axis] = slice(self.bounds[i], self.bounds[i + 1])
            out.append(g[tuple(sl)])
        return tuple(out)


class Stack(Function):
    """z = stack(x_1..x_n, axis): a new axis.   dL/dx_i = dL/dz taken at index i on that axis."""

    def forward(self, *xs, axis=0):
        xp = get_array_module(*xs)
        self.axis = axis
        return xp.stack(xs, axis=axis)

    def backward(self, g):
        return tuple(g.take(i, axis=self.axis) if needed else None
                     for i, needed in enumerate(self.needs_input_grad))


def _check_joinable(op, tensors, dim=None):
    """At least one tensor; the same number of axes, and the same shape except along ``dim``
    (every axis for stack, ``dim=None``). One line naming the first tensor that differs."""
    if len(tensors) == 0:
        raise ValueError(f"{op}: tensors is empty: give at least one tensor")
    shapes = [tuple(_shape(t)) for t in tensors]
    first = shapes[0]
    if dim is not None and not first:
        raise ValueError(f"{op}: tensors[0] is 0-d: there is no axis to join along")
    for i, shape in enumerate(shapes[1:], 1):
        if len(shape) != len(first):
            raise ValueError(f"{op}: tensors[{i}] has shape {shape} and tensors[0] has shape {first}: "
                             f"all need the same number of axes")
        if dim is None and shape != first:
            raise ValueError(f"{op}: tensors[{i}] has shape {shape} and tensors[0] has shape {first}: "
                             f"stacked tensors need one shape")
        if dim is not None and any(a != b for k, (a, b) in enumerate(zip(shape, first)) if k != dim % len(first)):
            raise ValueError(f"{op}: tensors[{i}] has shape {shape} and tensors[0] has shape {first}: "
                             f"they may differ only along dim {dim}")


def cat(tensors, dim=0):
    """torch.cat: join tensors along an existing axis.

    Unlike torch, a 1-D empty tensor among tensors of more axes is refused, not skipped.
    """
    _check_joinable("cat", tensors, dim)
    return Concatenate.apply(*tensors, axis=dim)


def stack(tensors, dim=0):
    """torch.stack: join tensors of one shape along a new axis."""
    _check_joinable("stack", tensors)
    return Stack.apply(*tensors, axis=dim)


def tensor(data, requires_grad=False, dtype=None):
    """A new leaf Tensor holding a copy of ``data`` (dtype as given, or the default float)."""
    xp = get_array_module(data)
    arr = xp.array(getattr(data, "data", data), dtype=dtype)
    if dtype is None and arr.dtype.kind == "f" and not hasattr(data, "dtype"):
        arr = arr.astype(get_default_dtype())
    return Tensor(arr, requires_grad=requires_grad)
