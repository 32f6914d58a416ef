# %% [markdown]
# # Chapter 3 — Normalisation, activations, pooling
#
# Between its convolutions a ResNet runs three kinds of cheap layers: a **normalisation** that
# rescales each channel, an **activation** (ReLU) and, once, a **max pool**. They have few or no
# parameters, but each has a backward pass with a twist, and normalisation hides the pitfall that
# cost this project most of its accuracy once. In this chapter you will
#
# * compute batch normalisation in training and in evaluation, and see why the running variance
#   uses $m-1$ while the normalisation uses $m$;
# * fold the frozen batch norm of detection backbones into one multiply-add;
# * normalise each image by itself (instance norm), and see on shapes images why that matters
#   when a batch holds one image;
# * route max pooling's gradient to the winners of overlapping windows.
#
# The code is the package's: `tinymaskrcnn/functional/norm.py`, `functional/activation.py`, `functional/pool.py`,
# and the modules `BatchNorm2d`, `FrozenBatchNorm2d`, `InstanceNorm2d` in `tinymaskrcnn/nn/layers.py`.
# Every result is checked against finite differences and, where torch is installed, against
# torch.

# %%
import inspect

import matplotlib.pyplot as plt
import numpy as np

import tinymaskrcnn as tm
import tinymaskrcnn.functional as F
from tinymaskrcnn import nn
from tinymaskrcnn import visualize as V
from tinymaskrcnn.chapters import figures_foundation as figures
from tinymaskrcnn.chapters import exercise, quick, reference, rejects
from tinymaskrcnn.data.shapes import draw_scene
from tinymaskrcnn.core.gradcheck import gradcheck, numerical_gradient, rel_error
from tinymaskrcnn.functional.activation import ReLU, stable_sigmoid
from tinymaskrcnn.functional.norm import BatchNorm, FrozenBatchNorm, instance_norm
from tinymaskrcnn.functional.pool import MaxPool2d

plt.rcParams["figure.dpi"] = 72
rng = np.random.default_rng(3)  # not 0: gradcheck draws its cotangent from seed 0
torch = reference()

# %% [markdown]
# ## Batch normalisation in training
#
# For an input of shape $(N, C, H, W)$, channel $c$ is normalised with the mean and variance
# of its $m = N H W$ values in the batch, then scaled and shifted by learnt $\gamma_c, \beta_c$:
#
# $$\mu = \frac1m \sum x, \qquad \sigma^2 = \frac1m \sum (x-\mu)^2, \qquad
#   \hat x = \frac{x-\mu}{\sqrt{\sigma^2+\epsilon}}, \qquad y = \gamma \hat x + \beta .$$
#
# Whatever scale and offset the previous layer produced, $\hat x$ has mean 0 and variance
# (almost) 1 per channel, which keeps deep stacks trainable. The forward pass of the package:

# %%
print(inspect.getsource(BatchNorm.forward))

# %% [markdown]
# A batch of 4 maps with 3 channels, each channel with its own offset and scale. The picture
# puts one dot per channel at its (mean, standard deviation) over the batch: before the layer
# they are scattered, after it (with $\gamma = 1, \beta = 0$) all sit on the cross.

# %%
x = rng.standard_normal((4, 3, 5, 5)) * np.array([0.5, 2.0, 4.0])[:, None, None] + np.array([-3.0, 1.0, 5.0])[:, None, None]
running_mean, running_var = np.zeros(3), np.ones(3)
y = F.batch_norm(tm.Tensor(x), running_mean, running_var, np.ones(3), np.zeros(3), training=True, momentum=0.1)
figures.draw_channel_statistics({"input x": x, "batch norm (training)": y.data}, per_image=False,
                                title="one dot per channel, statistics over the batch")
plt.show()
assert np.allclose(y.data.mean(axis=(0, 2, 3)), 0, atol=1e-12)
var = x.var(axis=(0, 2, 3))
assert np.allclose(y.data.var(axis=(0, 2, 3)), var / (var + 1e-5), rtol=1e-12)   # 1, but for eps

# %% [markdown]
# ### The backward pass
#
# $\mu$ and $\sigma^2$ depend on every $x$ of the channel, so a change in one $x$ moves every
# output. With $s = 1/\sqrt{\sigma^2+\epsilon}$ and $g = \partial L / \partial y$, the chain rule
# through the three paths ($x$ directly, through $\mu$, through $\sigma^2$) collapses to
#
# $$\frac{\partial L}{\partial x} = s\,\Big(\gamma g - \operatorname{mean}(\gamma g)
#   - \hat x\,\operatorname{mean}(\gamma g\,\hat x)\Big), \qquad
#   \frac{\partial L}{\partial \gamma} = \sum g \hat x, \qquad \frac{\partial L}{\partial \beta} = \sum g .$$
#
# The two means remove what the normalisation cannot see: shifting or stretching a whole channel
# leaves $\hat x$ unchanged, so the gradient has no component along those two directions.

# %%
print(inspect.getsource(BatchNorm.backward))

# %%
xt = tm.Tensor(x.copy(), requires_grad=True)
gamma = tm.Tensor(rng.uniform(0.5, 1.5, 3), requires_grad=True)
beta = tm.Tensor(rng.standard_normal(3), requires_grad=True)
errors = gradcheck(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), [xt, gamma, beta])
print("relative errors (x, gamma, beta):", ["%.1e" % e for e in errors])
assert max(errors) < 1e-8

# %% [markdown]
# ## Biased variance to normalise, unbiased to remember
#
# In training the layer also keeps **running statistics**, moving averages that evaluation will
# use instead of a batch's. Normalising uses the batch's own spread, $\frac1m\sum(x-\mu)^2$, which
# is exactly what makes $\hat x$ unit-variance. But the running variance estimates the variance of
# the whole data set from samples, and $\frac1m\sum(x-\mu)^2$ underestimates that by the factor
# $\frac{m-1}{m}$ (the sample mean sits closer to the samples than the true mean does). So torch
# stores the unbiased estimate:
#
# $$\text{running\_var} \leftarrow (1-\text{momentum})\,\text{running\_var} + \text{momentum}\cdot
#   \frac{m}{m-1}\,\sigma^2 .$$
#
# With a 5×5 map and 4 images, $m = 100$ and the factor is 1.0101; with one 1×1 value per image
# and 2 images it is 2. The update ran in the cell above (momentum 0.1, starting from 0 and 1):

# %%
m = x.shape[0] * x.shape[2] * x.shape[3]
biased, unbiased = x.var(axis=(0, 2, 3)), x.var(axis=(0, 2, 3), ddof=1)
print("m =", m, "  running_var:", running_var)
print("with the unbiased variance:", 0.9 * 1 + 0.1 * unbiased)
print("with the biased variance:  ", 0.9 * 1 + 0.1 * biased)
assert np.allclose(running_var, 0.9 + 0.1 * unbiased, rtol=1e-14)
assert np.allclose(running_mean, 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-14)

if torch is not None:
    tx = torch.tensor(x, requires_grad=True)
    tw, tb = torch.tensor(gamma.data, requires_grad=True), torch.tensor(beta.data, requires_grad=True)
    t_mean, t_var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    ty = torch.nn.functional.batch_norm(tx, t_mean, t_var, tw, tb, training=True, momentum=0.1)
    G = rng.standard_normal(x.shape)
    ty.backward(torch.tensor(G))
    xt.grad = gamma.grad = beta.grad = None
    ours = F.batch_norm(xt, np.zeros(3), np.ones(3), gamma, beta, training=True, momentum=0.1)
    ours.backward(G)
    assert rel_error(ours.data, ty.detach().numpy()) < 1e-14
    assert np.allclose(t_var.numpy(), running_var, rtol=1e-14) and np.allclose(t_mean.numpy(), running_mean, rtol=1e-14)
    for name, a, b in [("x", xt.grad, tx.grad), ("gamma", gamma.grad, tw.grad), ("beta", beta.grad, tb.grad)]:
        assert rel_error(a, b.numpy()) < 1e-12, name
    print("= torch: output, running statistics and the three gradients")

# %% [markdown]
# ## Evaluation: the running statistics are constants
#
# In evaluation the layer uses `running_mean` and `running_var` instead of the batch's, so each
# output depends on its own input only and the backward is a plain scaling,
# $\partial L/\partial x = g\,\gamma\,s$ with $s = 1/\sqrt{\text{running\_var}+\epsilon}$.
# `BatchNorm2d.eval()` switches to it; it is also why one image gives the same answer alone or in
# any batch — in evaluation.

# %%
bn = nn.BatchNorm2d(3, dtype=np.float64)
bn.running_mean[...], bn.running_var[...] = running_mean, running_var
bn.eval()
xe = tm.Tensor(x[:1].copy(), requires_grad=True)
errors = gradcheck(lambda t: bn(t), [xe])
print("eval mode, relative error of dL/dx:", "%.1e" % errors[0])
assert errors[0] < 1e-8
alone, in_batch = bn(tm.Tensor(x[:1])).data, bn(tm.Tensor(x)).data[:1]
assert np.array_equal(alone, in_batch)
if torch is not None:
    tbn = torch.nn.BatchNorm2d(3).double().eval()
    tbn.running_mean.copy_(torch.tensor(running_mean))
    tbn.running_var.copy_(torch.tensor(running_var))
    assert rel_error(bn(tm.Tensor(x)).data, tbn(torch.tensor(x)).detach().numpy()) < 1e-14
    print("= torch.nn.BatchNorm2d in eval mode")

# %% [markdown]
# ## Frozen batch norm: one multiply-add
#
# Detection trains on one or two large images per batch, whose batch statistics are too noisy to
# learn from; torchvision's detection backbones therefore freeze all four per-channel vectors
# (the ImageNet ones, or whatever was loaded) as **buffers**. Then the layer is an affine map per
# channel, folded once:
#
# $$\text{scale} = \frac{\gamma}{\sqrt{\text{running\_var}+\epsilon}}, \qquad
#   \text{shift} = \beta - \text{running\_mean}\cdot\text{scale}, \qquad
#   y = x\cdot\text{scale} + \text{shift}, \qquad \frac{\partial L}{\partial x} = g\cdot\text{scale}.$$

# %%
print(inspect.getsource(FrozenBatchNorm))

# %%
frozen = nn.FrozenBatchNorm2d(3, dtype=np.float64)
frozen.weight[...], frozen.bias[...] = gamma.data, beta.data
frozen.running_mean[...], frozen.running_var[...] = running_mean, running_var
print("parameters:", dict(frozen.named_parameters()), "  buffers:", [k for k, _ in frozen.named_buffers()])
xf = tm.Tensor(x.copy(), requires_grad=True)
assert gradcheck(lambda t: frozen(t), [xf])[0] < 1e-8
# the same numbers as batch norm in evaluation with the same four vectors
same = F.batch_norm(tm.Tensor(x), running_mean, running_var, gamma.data, beta.data, training=False)
assert rel_error(frozen(tm.Tensor(x)).data, same.data) < 1e-14
if torch is not None:
    from torchvision.ops.misc import FrozenBatchNorm2d as TorchFrozen

    tf = TorchFrozen(3).double()
    for k in ("weight", "bias", "running_mean", "running_var"):
        getattr(tf, k).copy_(torch.tensor(getattr(frozen, k)))
    assert rel_error(frozen(tm.Tensor(x)).data, tf(torch.tensor(x)).numpy()) < 1e-14
    print("= torchvision.ops.misc.FrozenBatchNorm2d")

# %% [markdown]
# ## Instance norm: each image by itself
#
# Instance normalisation takes the statistics over one image's channel, $H W$ values, instead
# of over the batch. That is batch norm of a batch of *one* image with $N\cdot C$ channels, and
# the package computes it exactly so, on a reshaped view, reusing batch norm's forward and
# backward; the affine $\gamma, \beta$ (one per channel) follow on the tape.

# %%
print(inspect.getsource(instance_norm))

# %%
xi = tm.Tensor(x.copy(), requires_grad=True)
wi = tm.Tensor(rng.uniform(0.5, 1.5, 3), requires_grad=True)
bi = tm.Tensor(rng.standard_normal(3), requires_grad=True)
errors = gradcheck(lambda a, w, b: F.instance_norm(a, w, b), [xi, wi, bi])
print("relative errors (x, weight, bias):", ["%.1e" % e for e in errors])
assert max(errors) < 1e-8
if torch is not None:
    ref = torch.nn.functional.instance_norm(torch.tensor(x), weight=torch.tensor(wi.data), bias=torch.tensor(bi.data))
    assert rel_error(F.instance_norm(tm.Tensor(x), wi, bi).data, ref.numpy()) < 1e-14
    print("= torch.nn.functional.instance_norm")

# %% [markdown]
# ## The pitfall: batch norm with one image per batch
#
# Run a batch norm in training mode on batches of **one** image: every step normalises the
# image by its own statistics, so the next layer always sees mean 0, variance 1. The running
# statistics, though, average over all the images. In evaluation each image is normalised by
# that average, which fits no image in particular when images differ — and shapes images differ
# in background colour more than in anything else.
#
# Below, a fixed 3×3 convolution (8 channels) feeds a `BatchNorm2d` with `momentum=None` (a
# plain average of the batch statistics), run in training mode on one shapes image at a time.
# The picture shows what the next layer sees, one dot per (image, channel): in training every
# dot is on the cross; in evaluation they scatter; instance norm puts them back on the cross in
# both modes. In this project's training run this difference alone moved mask AP50 from 0.86
# to 0.28 (docs/pitfalls.md).

# %%
count = quick(12, 32)
images = np.stack([draw_scene(np.random.default_rng(100 + i), 48, 64, 3)[0] for i in range(count)])
images = images.transpose(0, 3, 1, 2).astype(np.float64) / 255.0
conv = nn.Conv2d(3, 8, 3, padding=1, dtype=np.float64)
conv.weight.data[...] = np.random.default_rng(1).standard_normal(conv.weight.shape) * 0.3
batch_norm_layer = nn.BatchNorm2d(8, momentum=None, dtype=np.float64)
instance_norm_layer = nn.InstanceNorm2d(8, dtype=np.float64)

with tm.no_grad():
    features = [conv(tm.Tensor(img[None])) for img in images]
    trained = np.concatenate([batch_norm_layer(f).data for f in features])   # training, one image a batch
    batch_norm_layer.eval()
    evaluated = np.concatenate([batch_norm_layer(f).data for f in features])
    instance = np.concatenate([instance_norm_layer(f).data for f in features])

fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained", gridspec_kw={"width_ratios": [1, 1.1]})
rgb = [V.as_rgb(img) for img in images[:6]]
axes[0].imshow(np.concatenate([np.concatenate(rgb[:3], axis=1), np.concatenate(rgb[3:], axis=1)], axis=0))
axes[0].set_axis_off()
axes[0].set_title("six of the training images: each a batch of one", fontsize=9)
figures.draw_channel_statistics({"batch norm, training": trained, "batch norm, evaluation": evaluated,
                                 "instance norm": instance}, ax=axes[1], title="what the next layer sees")
plt.show()

per_image_mean = evaluated.mean(axis=(2, 3))
print("evaluation: per-image channel means range over [%.2f, %.2f]" % (per_image_mean.min(), per_image_mean.max()))
assert np.allclose(trained.mean(axis=(2, 3)), 0, atol=1e-12) and np.allclose(instance.mean(axis=(2, 3)), 0, atol=1e-12)
assert np.abs(per_image_mean).max() > 0.5   # far from what training showed the next layer
assert np.allclose(batch_norm_layer.running_mean, np.mean([f.data.mean(axis=(0, 2, 3)) for f in features], axis=0))

# %% [markdown]
# The fixes: freeze the statistics (FrozenBatchNorm, with statistics from a large data set —
# what torchvision does with ImageNet weights), normalise per image (InstanceNorm or GroupNorm —
# what this project's from-scratch training does), or make the batches large.
#
# ## Activations: ReLU and sigmoid
#
# $\mathrm{relu}(x) = \max(x, 0)$ passes the gradient where the output is positive and blocks
# it elsewhere (at the kink $x = 0$ the package and torch both take slope 0).
# $\sigma(x) = 1/(1+e^{-x})$ has $\sigma' = \sigma(1-\sigma)$, so the backward needs only the
# saved output. Written naively, $e^{-x}$ overflows for $x < -709$ in float64; the package forms
# only $e^{-|x|} \le 1$.

# %%
print(inspect.getsource(ReLU))
print(inspect.getsource(stable_sigmoid))

# %%
xa = tm.Tensor(rng.standard_normal((3, 7)), requires_grad=True)
assert gradcheck(lambda t: F.relu(t), [xa])[0] < 1e-8
assert gradcheck(lambda t: F.sigmoid(t), [xa])[0] < 1e-8
extreme = np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0])
with np.errstate(over="raise"):
    print("sigmoid of", extreme, "=", F.sigmoid(tm.Tensor(extreme)).data)
if torch is not None:
    assert rel_error(F.sigmoid(tm.Tensor(extreme)).data, torch.sigmoid(torch.tensor(extreme)).numpy()) < 1e-15
    zero = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    torch.relu(zero).backward()
    ours = tm.Tensor(np.zeros(1), requires_grad=True)
    F.relu(ours).sum().backward()
    assert ours.grad[0] == zero.grad.item() == 0.0
    print("= torch, including the slope 0 at the kink")

# %% [markdown]
# ## Max pooling: the gradient goes to the winner
#
# $y_{ij} = \max_{(a,b)\in\text{window}(i,j)} x_{ab}$. Locally $y$ equals one of the $x$ — the
# window's maximum — so $\partial y_{ij}/\partial x_{ab}$ is 1 for that winner and 0 for the rest.
# When windows overlap (stride smaller than the kernel, as the ResNet stem's 3×3 pool with
# stride 2) one input can win several windows and then receives the **sum** of their gradients:
#
# $$\frac{\partial L}{\partial x_{ab}} = \sum_{(i,j):\ \text{winner}(i,j) = (a,b)} \frac{\partial L}{\partial y_{ij}} .$$
#
# The forward remembers each window's winner; the backward is a scatter-add (`bincount` with
# weights):

# %%
print(inspect.getsource(MaxPool2d.backward))

# %%
plane = np.random.default_rng(3).permutation(49).reshape(7, 7) / 10.0   # distinct values: no ties
plane[2, 2] = 9.9                                                        # wins all four windows around it
xpool = tm.Tensor(plane[None, None].copy(), requires_grad=True)
pooled = F.max_pool2d(xpool, kernel_size=3, stride=2)
g = np.arange(1.0, 1.0 + pooled.data.size).reshape(pooled.shape)
pooled.backward(g)
figures.draw_max_pool_routing(plane, g[0, 0], xpool.grad[0, 0], kernel_size=3, stride=2)
plt.show()
assert xpool.grad[0, 0, 2, 2] == g[0, 0, 0, 0] + g[0, 0, 0, 1] + g[0, 0, 1, 0] + g[0, 0, 1, 1]
assert np.count_nonzero(xpool.grad) <= g.size and np.isclose(xpool.grad.sum(), g.sum())

# %%
xm = tm.Tensor(rng.standard_normal((2, 3, 9, 8)), requires_grad=True)
for kernel, stride, padding in [(3, 2, 1), (2, 2, 0), (1, 2, 0)]:   # the stem's pool, plain 2x2, the FPN's 'pool'
    err = gradcheck(lambda t: F.max_pool2d(t, kernel, stride, padding), [xm])[0]
    print(f"kernel {kernel}, stride {stride}, padding {padding}: relative error {err:.1e}")
    assert err < 1e-8
if torch is not None:
    ties = np.zeros((1, 1, 4, 4))                      # every window a tie: the first position wins
    for a in (xm.data, ties):
        ta = torch.tensor(a, requires_grad=True)
        tp = torch.nn.functional.max_pool2d(ta, 3, 2, 1)
        ga = rng.standard_normal(tuple(tp.shape))
        tp.backward(torch.tensor(ga))
        ours = tm.Tensor(a.copy(), requires_grad=True)
        out = F.max_pool2d(ours, 3, 2, 1)
        out.backward(ga)
        assert np.array_equal(out.data, tp.detach().numpy()) and np.allclose(ours.grad, ta.grad.numpy(), rtol=1e-15)
    print("= torch, forward and backward, also where every window is a tie")

# %% [markdown]
# ## Exercises
#
# ### Exercise 1 — batch norm's backward
#
# Write `bn_backward(g, x, gamma, eps)` returning $\partial L/\partial x$ for batch norm in
# training (batch statistics), with `x` and `g` of shape $(N, C, H, W)$ and `gamma` of shape
# $(C,)$. Use the formula above; the check compares with finite differences of a batch norm it
# computes itself.

# %%
@exercise
def check_bn_backward(bn_backward):
    r = np.random.default_rng(7)
    x = r.standard_normal((3, 2, 4, 5)) * 2 + 1
    gamma, g, eps = r.uniform(0.5, 1.5, 2), r.standard_normal((3, 2, 4, 5)), 1e-5

    def forward():
        mu, var = x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * gamma[None, :, None, None]

    numeric = numerical_gradient(forward, x, g)
    mine = np.asarray(bn_backward(g, x.copy(), gamma, eps))
    assert mine.shape == x.shape, f"dL/dx has shape {mine.shape}, expected {x.shape}"
    err = rel_error(mine, numeric)
    assert err < 1e-8, (f"relative error {err:.1e} against finite differences: did you keep the two paths "
                        "through the batch mean and variance?")


def my_bn_backward(g, x, gamma, eps):
    raise NotImplementedError   # your code


check_bn_backward(my_bn_backward)

# %% [solution]
def solution_bn_backward(g, x, gamma, eps):
    axes = (0, 2, 3)
    s = 1 / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    xhat = (x - x.mean(axis=axes, keepdims=True)) * s
    dxhat = g * gamma[None, :, None, None]
    return s * (dxhat - dxhat.mean(axis=axes, keepdims=True) - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True))


def eval_mode_backward(g, x, gamma, eps):       # treats the batch statistics as constants
    return g * gamma[None, :, None, None] / np.sqrt(x.var(axis=(0, 2, 3), keepdims=True) + eps)


assert check_bn_backward(solution_bn_backward)
assert rejects(check_bn_backward, eval_mode_backward)

# %% [markdown]
# ### Exercise 2 — max pooling's backward
#
# Write `max_pool_backward(x, g, k, s)` for one plane `x` of shape $(H, W)$, a $k\times k$
# window, stride `s`, no padding, and the upstream gradient `g` of shape $(H_o, W_o)$: return
# $\partial L/\partial x$. Mind overlapping windows.

# %%
@exercise
def check_max_pool_backward(max_pool_backward):
    r = np.random.default_rng(8)
    for k, s in [(3, 2), (2, 2), (3, 1)]:
        x = r.permutation(81).reshape(9, 9) / 10.0       # distinct values, so the gradient is defined
        x[4, 4] = 9.0                                     # a maximum several windows share
        out = (9 - k) // s + 1
        g = r.standard_normal((out, out))

        def forward():
            return np.array([[x[i * s:i * s + k, j * s:j * s + k].max() for j in range(out)] for i in range(out)])

        mine = np.asarray(max_pool_backward(x.copy(), g, k, s))
        assert mine.shape == x.shape, f"dL/dx has shape {mine.shape}, expected {x.shape}"
        err = rel_error(mine, numerical_gradient(forward, x, g))
        assert err < 1e-8, f"kernel {k}, stride {s}: relative error {err:.1e} against finite differences"


def my_max_pool_backward(x, g, k, s):
    raise NotImplementedError   # your code


check_max_pool_backward(my_max_pool_backward)

# %% [solution]
def solution_max_pool_backward(x, g, k, s):
    dx = np.zeros_like(x)
    for i, j in np.ndindex(g.shape):
        a, b = np.unravel_index(np.argmax(x[i * s:i * s + k, j * s:j * s + k]), (k, k))
        dx[i * s + a, j * s + b] += g[i, j]
    return dx


def overwriting_max_pool_backward(x, g, k, s):   # '=' instead of '+=': a shared winner keeps one window's gradient
    dx = np.zeros_like(x)
    for i, j in np.ndindex(g.shape):
        a, b = np.unravel_index(np.argmax(x[i * s:i * s + k, j * s:j * s + k]), (k, k))
        dx[i * s + a, j * s + b] = g[i, j]
    return dx


assert check_max_pool_backward(solution_max_pool_backward)
assert rejects(check_max_pool_backward, overwriting_max_pool_backward)

# %% [markdown]
# ### Exercise 3 — the running variance
#
# A fresh `nn.BatchNorm2d(C, momentum=0.1)` sees one training batch `x`. Write
# `running_after_one_step(x)` returning `(running_mean, running_var)` afterwards, without
# calling the layer. Start values are 0 and 1.

# %%
@exercise
def check_running_stats(running_after_one_step):
    x = np.random.default_rng(9).standard_normal((2, 4, 3, 1)) * 3 + 2     # m = 6 per channel
    layer = nn.BatchNorm2d(4, momentum=0.1, dtype=np.float64)
    layer(tm.Tensor(x))                                                      # tested against torch above
    mean, var = running_after_one_step(x.copy())
    assert np.allclose(mean, layer.running_mean, rtol=1e-12), "running_mean differs"
    assert np.allclose(var, layer.running_var, rtol=1e-12), \
        "running_var differs: which variance, biased or unbiased, does the running average take?"


def my_running_after_one_step(x):
    raise NotImplementedError   # your code


check_running_stats(my_running_after_one_step)

# %% [solution]
def solution_running_after_one_step(x):
    axes = (0, 2, 3)
    return 0.1 * x.mean(axis=axes), 0.9 * 1.0 + 0.1 * x.var(axis=axes, ddof=1)


assert check_running_stats(solution_running_after_one_step)
assert rejects(check_running_stats, lambda x: (0.1 * x.mean(axis=(0, 2, 3)), 0.9 + 0.1 * x.var(axis=(0, 2, 3))))

# %% [markdown]
# ## Questions to answer in words
#
# Answer each in a few sentences before opening the answer.
#
# **Question 1.** Why does a BatchNorm model trained with one image per batch do badly in evaluation, and what do detectors use instead?
#
# <details><summary>Answer</summary>
#
# In training each layer normalises by the statistics of that one image, which vary from image to image; the running averages then mix them, and in evaluation every image is normalised by an average that matches none of them, so the features shift. Detectors fine-tuned from ImageNet freeze batch norm (FrozenBatchNorm2d, ImageNet's statistics); others use GroupNorm or batch norm synchronised across GPUs; the shapes model here uses InstanceNorm, which uses each image's own statistics in both modes.
#
# </details>
