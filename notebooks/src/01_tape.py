# %% [markdown]
# # Chapter 1 — The tape
#
# Everything that learns in tinymaskrcnn is a chain of small operations, each with a forward
# pass and a hand-written backward pass. This chapter builds intuition for the piece that ties
# them together: `tinymaskrcnn.core.autograd`, one file you can read in one sitting (its length is
# counted below, so this page cannot go out of date).
#
# * a `Tensor` holds an array in `.data` and, after `backward()`, its gradient in `.grad`;
# * every operation on tensors that require gradients is a `Function` that remembers its inputs;
# * `backward()` visits those Functions from the loss back to the leaves (reverse topological
#   order) and adds up the gradients each one hands to its inputs.

# %%
import inspect

import numpy as np
import tinymaskrcnn as tm
from tinymaskrcnn.core.autograd import Function, topological_order
from tinymaskrcnn.chapters import exercise, rejects
from tinymaskrcnn.core.gradcheck import gradcheck, numerical_gradient, rel_error

rng = np.random.default_rng(0)
print("tinymaskrcnn/core/autograd.py:", len(inspect.getsource(tm.core.autograd).splitlines()), "lines")

# %% [markdown]
# ## A first gradient
#
# $L = \sum_i (w_i x_i + b)^2$. By hand: $\partial L/\partial w_i = 2 (w_i x_i + b) x_i$ and
# $\partial L/\partial b = \sum_i 2 (w_i x_i + b)$ — `b` is broadcast over every element, so its
# gradient is a sum over the broadcast axis.

# %%
x = tm.Tensor(rng.standard_normal(4))
w = tm.Tensor(rng.standard_normal(4), requires_grad=True)
b = tm.Tensor(np.array(0.5), requires_grad=True)
L = ((w * x + b) ** 2).sum()
L.backward()
print("dL/dw from the tape:", w.grad)
print("dL/dw by hand:      ", 2 * (w.data * x.data + b.data) * x.data)
print("dL/db from the tape:", b.grad, " by hand:", (2 * (w.data * x.data + b.data)).sum())

# %% [markdown]
# ## What the tape recorded
#
# Each tensor that requires a gradient has a `Node` (`_node`): the Function that made it, its
# shape, and nothing of its data. Each Function remembers its inputs' nodes. Walking that chain gives the order in which `backward` runs them (reversed).

# %%
y = ((w * x + b) ** 2).sum()
for node in topological_order(y._node):
    made_by = type(node.fn).__name__ if node.fn is not None else "leaf"
    print(f"{made_by:10s} shape={node.shape}")

# %% [markdown]
# ## Writing an op
#
# A Function gets plain arrays in `forward`, keeps what `backward` needs on `self`, and
# `backward` turns dL/d(output) into one dL/d(input) per input. Softplus,
# $y = \log(1 + e^x)$, has $dy/dx = \sigma(x)$, so the backward multiplies the incoming gradient
# by the sigmoid.

# %%
class Softplus(Function):
    """y = log(1 + exp(x)), computed stably as max(x, 0) + log1p(exp(-|x|)).  dy/dx = sigmoid(x)."""

    def forward(self, x):
        self.x = x
        return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))

    def backward(self, grad_output):
        return (grad_output / (1 + np.exp(-self.x)),)


z = tm.Tensor(rng.standard_normal((3, 5)), requires_grad=True)
errors = gradcheck(lambda t: Softplus.apply(t) * 2.0, [z])
print("relative error against central differences:", errors[0])
assert errors[0] < 1e-8

# %% [markdown]
# The package's own `Function.apply` is the whole of the recording: it runs `forward` on arrays and,
# when an input wants a gradient (and `no_grad` is off), links the output's node to this Function.

# %%
print(inspect.getsource(Function.apply))

# %% [markdown]
# ## Finite differences, the referee
#
# `gradcheck` perturbs each input element by ±h and measures how $L = \sum f(x) \cdot G$
# changes for a random cotangent $G$. In float64 with h = 1e-6 the truncation error
# ($\propto h^2$) and the rounding error ($\propto \epsilon/h$) are both about 1e-10 — which is why
# every gradient check in this project runs in float64.

# %%
for h in [1e-2, 1e-4, 1e-6, 1e-9, 1e-12]:
    G = rng.standard_normal((3, 5))
    numeric = numerical_gradient(lambda: Softplus.apply(tm.Tensor(z.data)).data, z.data, G, h=h)
    analytic = G / (1 + np.exp(-z.data))
    print(f"h={h:7.0e}  relative error {rel_error(numeric, analytic):.1e}")

# %% [markdown]
# ## A tensor used twice
#
# When a tensor feeds several operations, each sends a gradient back and the tape adds them up:
# for $y = x \cdot x$, $dy/dx = x + x$.

# %%
x = tm.Tensor(np.array([3.0]), requires_grad=True)
(x * x).sum().backward()
print(x.grad)   # 6 = 3 + 3

# %% [markdown]
# ## Switching the tape off
#
# Inference needs no gradients, and recording them costs memory: inside `tm.no_grad()` nothing
# is recorded.

# %%
with tm.no_grad():
    y = (w * x.data[0]).sum()
print("requires_grad inside no_grad:", y.requires_grad)

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer and a `check_...` call under it. Until you write the
# answer the check says "not attempted"; a wrong answer fails with a hint. The solution is in the
# collapsed cell below (click to reveal); it also shows that the check rejects a wrong answer.
#
# ### Exercise 1 — tanh as a Function
#
# Write `forward` and `backward` for $y = \tanh x$. Hint: $dy/dx = 1 - y^2$, so keep $y$.

# %%
@exercise
def check_tanh(cls):
    x = tm.Tensor(np.random.default_rng(1).standard_normal((4, 3)), requires_grad=True)
    y = cls.apply(x)
    assert np.allclose(y.data, np.tanh(x.data), rtol=1e-12, atol=0), "the forward is not tanh"
    err = gradcheck(lambda t: cls.apply(t), [x])[0]
    assert err < 1e-8, f"the backward disagrees with finite differences (relative error {err:.1e})"


class MyTanh(Function):
    def forward(self, x):
        raise NotImplementedError   # your code: compute y, keep what backward needs on self

    def backward(self, grad_output):
        raise NotImplementedError   # your code: one gradient per input, as a tuple


check_tanh(MyTanh)

# %% [solution]
class SolutionTanh(Function):
    def forward(self, x):
        self.y = np.tanh(x)
        return self.y

    def backward(self, grad_output):
        return (grad_output * (1 - self.y ** 2),)


class WrongTanh(SolutionTanh):          # forgets the square: dy/dx = 1 - y
    def backward(self, grad_output):
        return (grad_output * (1 - self.y),)


assert check_tanh(SolutionTanh)
assert rejects(check_tanh, WrongTanh)

# %% [markdown]
# ### Exercise 2 — the gradient of a broadcast
#
# When `b` of shape `(3, 1)` is added to `x` of shape `(2, 3, 4)`, NumPy copies `b` along the new
# leading axis and along the last axis. Each copy sends back its own gradient, so `b`'s gradient is
# the incoming gradient **summed** over the axes that broadcasting added or stretched. Write
# `unbroadcast(grad, shape)` that does this; the tape does the same in `core/autograd.py`.

# %%
@exercise
def check_unbroadcast(unbroadcast):
    r = np.random.default_rng(2)
    for x_shape, b_shape in [((2, 3, 4), (3, 1)), ((5, 4), (4,)), ((2, 3), ()), ((1, 6), (4, 1))]:
        x = tm.Tensor(r.standard_normal(x_shape), requires_grad=True)
        b = tm.Tensor(r.standard_normal(b_shape), requires_grad=True)
        G = r.standard_normal(np.broadcast_shapes(x_shape, b_shape))
        ((x + b) * tm.Tensor(G)).sum().backward()
        mine = unbroadcast(G, b_shape)
        assert np.shape(mine) == b_shape, f"for b of shape {b_shape} the gradient has shape {np.shape(mine)}"
        assert np.allclose(mine, b.grad, rtol=1e-12), f"for b of shape {b_shape} the values differ from the tape's"


def my_unbroadcast(grad, shape):
    raise NotImplementedError   # your code


check_unbroadcast(my_unbroadcast)

# %% [solution]
def solution_unbroadcast(grad, shape):
    grad = grad.sum(axis=tuple(range(grad.ndim - len(shape))))            # axes broadcasting added in front
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(axis=stretched, keepdims=True).reshape(shape)         # axes stretched from length 1


assert check_unbroadcast(solution_unbroadcast)
assert rejects(check_unbroadcast, lambda grad, shape: np.broadcast_to(grad.mean(), shape))
