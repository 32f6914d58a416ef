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

import matplotlib.pyplot as plt
import numpy as np
import tinymaskrcnn as tm
from tinymaskrcnn.core.autograd import Function, topological_order
from tinymaskrcnn.chapters import exercise, rejects
from tinymaskrcnn.chapters.figures_foundation import draw_tape
from tinymaskrcnn.core.gradcheck import gradcheck, numerical_gradient, rel_error

plt.rcParams["figure.dpi"] = 72
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
order = topological_order(y._node)
for node in order:
    made_by = type(node.fn).__name__ if node.fn is not None else "leaf"
    print(f"{made_by:10s} shape={node.shape}")
draw_tape(order, names={id(w._node): "w", id(b._node): "b"},
          title="the tape of sum((w·x + b)²): x needs no gradient, so it has no node")
plt.show()
assert order[-1] is y._node and {id(w._node), id(b._node)} <= {id(n) for n in order}

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
# changes for a random cotangent $G$. The central difference $(f(x+h) - f(x-h))/2h$ errs in two
# ways. **Truncation**: the Taylor terms it drops leave $h^2 |f'''|/6$, about $10^{-12}$ at
# $h = 10^{-6}$ for a function whose derivatives are of order one. **Rounding**: $f(x \pm h)$ are
# each off by about $\epsilon |f|$ ($\epsilon = 2.2 \cdot 10^{-16}$ in float64), and dividing by $2h$
# turns that into about $\epsilon |f| / h \approx 2 \cdot 10^{-10}$. So at $h = 10^{-6}$ rounding
# dominates by a factor of a hundred; the two balance where $h^2 \approx \epsilon / h$, at
# $h \approx \epsilon^{1/3} \approx 6 \cdot 10^{-6}$, where both are about $\epsilon^{2/3} \approx 4 \cdot 10^{-11}$.
# In float32 ($\epsilon \approx 1.2 \cdot 10^{-7}$) the best one can do is about $2 \cdot 10^{-5}$,
# too coarse to tell a subtly wrong backward from a right one — which is why every gradient check
# in this project runs in float64. Below, both errors measured for softplus (whose $|f'''|/6$ is
# about 0.01, so its truncation is smaller than the rule of thumb), and the picture asserted.

# %%
for h in [1e-2, 1e-4, 1e-6, 1e-9, 1e-12]:
    G = rng.standard_normal((3, 5))
    numeric = numerical_gradient(lambda: Softplus.apply(tm.Tensor(z.data)).data, z.data, G, h=h)
    analytic = G / (1 + np.exp(-z.data))
    print(f"h={h:7.0e}  relative error {rel_error(numeric, analytic):.1e}")

eps = np.finfo(np.float64).eps
points = rng.standard_normal(200)
softplus = Softplus().forward
sigma = 1 / (1 + np.exp(-points))
steps = np.logspace(-1, -11, 41)
measured = np.array([np.median(np.abs((softplus(points + h) - softplus(points - h)) / (2 * h) - sigma))
                     for h in steps])
truncation = steps ** 2 / 6 * np.median(np.abs(sigma * (1 - sigma) * (1 - 2 * sigma)))   # f''' of softplus
rounding = eps * np.median(np.abs(softplus(points))) / steps
fig, ax = plt.subplots(figsize=(6, 3.2), layout="constrained")
ax.loglog(steps, measured, "o-", markersize=3, label="measured (median over 200 points)")
ax.loglog(steps, truncation, "--", label="truncation $h^2 |f'''|/6$")
ax.loglog(steps, rounding, ":", label="rounding $\\epsilon |f| / h$")
ax.axvline(eps ** (1 / 3), color="grey", linewidth=0.8)
ax.text(eps ** (1 / 3), measured.max(), " $\\epsilon^{1/3}$", fontsize=8, va="top")
ax.set_xlabel("step h")
ax.set_ylabel("|central difference − derivative|")
ax.set_title("softplus in float64: rounding (small h) against truncation (large h)", fontsize=9)
ax.legend(fontsize=7, loc="upper center")
plt.show()
at = int(np.argmin(np.abs(steps - 1e-6)))
best = steps[np.argmin(measured)]
print(f"at h=1e-6, rule of thumb: h² = 1e-12, ε/h = {eps / 1e-6:.1e}; softplus: truncation {truncation[at]:.1e}, "
      f"rounding {rounding[at]:.1e}, measured {measured[at]:.1e}; best h {best:.1e}, ε^(1/3) = {eps ** (1 / 3):.1e}")
assert measured[at] > 100 * truncation[at]                   # at 1e-6 rounding is what we measure:
assert rounding[at] / 20 < measured[at] < rounding[at]        # under its worst case (the two roundings partly cancel)
assert eps ** (1 / 3) / 10 < best < eps ** (1 / 3) * 10      # the optimum sits near ε^(1/3)

# %% [markdown]
# ## Where there is no derivative
#
# Finite differences need a smooth function around the point. ReLU at 0, `clamp` on a bound,
# smooth L1 where $|x - t|$ equals its threshold and max pooling on a tie have no derivative
# there, yet backward must hand back a number: that number is a convention, and the package
# takes torch's (each op's docstring says which). A random input never lands on such a point,
# so `tests/op_table.py` puts one there on purpose and holds every op to torch; `docs/ops.md`
# lists each op's conventions at its kinks and edges. This table is generated from it
# (`python tests/op_table.py`), computed by the ops themselves:
#
# <!-- kink table: generated by tests/op_table.py, do not edit by hand -->
#
# | op | where | x | output | gradient (cotangent 1) |
# |---|---|---|---|---|
# | `F.relu` | on the kink x = 0, and NaN | [-1, -0, 0, 2, nan] | [0, 0, 0, 2, nan] | [0, 0, 0, 1, 1] |
# | `Tensor.clamp` | on both bounds, NaN, ±inf | [-2, -0.5, 0, 0.7, 1.5, nan, inf, -inf] | [-0.5, -0.5, 0, 0.7, 0.7, nan, 0.7, -0.5] | [0, 0, 1, 0, 0, 0, 0, 0] |
# | `Tensor.clamp` | min only, on the bound | [-2, -0.5, 0, 0.7, 1.5, nan, inf, -inf] | [-0.5, -0.5, 0, 0.7, 1.5, nan, inf, -0.5] | [0, 0, 1, 1, 1, 0, 1, 0] |
# | `Tensor.clamp` | max only, on the bound | [-2, -0.5, 0, 0.7, 1.5, nan, inf, -inf] | [-2, -0.5, 0, 0.7, 0.7, nan, 0.7, -inf] | [1, 1, 1, 0, 0, 0, 0, 1] |
# | `Tensor.clamp` | min > max | [-2, -0.5, 0, 0.7, 1.5, nan, inf, -inf] | [-0.5, -0.5, -0.5, -0.5, -0.5, nan, -0.5, -0.5] | [0, 0, 0, 0, 0, 0, 0, 0] |
# | `Tensor.abs` | on the kink x = 0, and NaN | [-1, -0, 0, 2, nan] | [1, 0, 0, 2, nan] | [-1, 0, 0, 1, 0] |
# | `F.smooth_l1_loss` | x - t = ±beta and 0 (t = 0, beta 0.5) | [0.5, -0.5, 0, 0.25, 2, -3] | [0.25, 0.25, 0, 0.0625, 1.75, 2.75] | [1, -1, 0, 0.5, 1, -1] |
# | `F.smooth_l1_loss` | beta 0 (L1) at x - t = 0 (t = 0) | [0.5, -0.5, 0, 0.25, 2, -3] | [0.5, 0.5, 0, 0.25, 2, 3] | [1, -1, 0, 1, 1, -1] |
# | `F.max_pool2d` | ties in a 2 × 4 map, kernel 2 | [1, 3, 3, 0, 3, 2, 3, 3] | [3, 3] | [0, 1, 1, 0, 0, 0, 0, 0] |
#
# <!-- end of the kink table -->

# %%
x = tm.Tensor(np.array([-1.0, 0.0, 1.0]), requires_grad=True)
tm.functional.relu(x).sum().backward()
print("d relu / dx at x = -1, 0, 1:", x.grad)

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

# %% [markdown]
# ## Questions to answer in words
#
# Answer each in a few sentences before opening the answer.
#
# **Question 1.** Why does `backward` run the Functions in reverse topological order, rather than depth-first from the loss?
#
# <details><summary>Answer</summary>
#
# A tensor's gradient is complete only when every operation that consumed it has added its share. Reverse topological order runs all consumers of a tensor before the Function that made it, so each backward runs once, on the whole dL/d(output). Depth-first from the loss could reach `x` in `x * x + x` through one path and run its producer before the other path had added its part: the gradient would be wrong, or the backward would have to run twice.
#
# </details>
#
# **Question 2.** Why does every gradient check in this project run in float64?
#
# <details><summary>Answer</summary>
#
# The best a central difference can do is about ε^(2/3) relative error, where truncation (h²) and rounding (ε/h) balance. In float64 that is about 4·10⁻¹¹, far below the error of a subtly wrong backward; in float32 it is about 2·10⁻⁵, the same size as many real bugs (a missing small term, a wrong broadcast over a few elements), so a check in float32 could not tell right from wrong.
#
# </details>
