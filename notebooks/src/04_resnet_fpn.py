# %% [markdown]
# # Chapter 4 — ResNet and FPN
#
# Mask R-CNN looks at an image through a **backbone**: a ResNet that turns the image into ever
# coarser, ever more abstract feature maps, and a **Feature Pyramid Network** (FPN) that gives
# every one of those resolutions the abstract features of the coarsest. In this chapter you will
#
# * read the residual block and check its backward by finite differences;
# * follow an image through every stage and tabulate each map's shape and stride;
# * draw the five pyramid levels P2–P6 of a shapes image;
# * see that the package's parameter names are torchvision's, key for key, and that in float64
#   the whole backbone computes torchvision's numbers to rounding.
#
# The code: `tinymaskrcnn/models/resnet.py` (ResNet-18…152), `models/fpn.py` (the pyramid) and
# `models/backbone.py` (`resnet_fpn_backbone`, torchvision's function of the same name). Quick
# mode uses ResNet-18; a learner's run (`TINYMASKRCNN_QUICK=0`) uses Mask R-CNN's ResNet-50.

# %%
import inspect
import tempfile

import matplotlib.pyplot as plt
import numpy as np

import tinymaskrcnn as tm
from tinymaskrcnn import nn
from tinymaskrcnn import visualize as V
from tinymaskrcnn.chapters import exercise, quick, reference, rejects
from tinymaskrcnn.chapters.trained import trained_model
from tinymaskrcnn.data.shapes import draw_scene
from tinymaskrcnn.core.gradcheck import gradcheck, rel_error
from tinymaskrcnn.models.backbone import resnet_fpn_backbone
from tinymaskrcnn.models.fpn import FeaturePyramidNetwork
from tinymaskrcnn.models.resnet import BasicBlock, Bottleneck
from tinymaskrcnn.weights import load_torchvision

plt.rcParams["figure.dpi"] = 72
ARCH = quick("resnet18", "resnet50")
torch = reference()

# %% [markdown]
# ## The residual block
#
# He et al. (2016) found that a plain stack of 56 convolutions reaches a *higher training error*
# than a stack of 20 — not overfitting, and not vanishing gradients: every layer had batch norm,
# and they checked that the forward signals and the backward gradients kept healthy norms. They
# called it the **degradation problem**, an optimisation difficulty: the deeper stack could copy
# the shallower one and make its extra layers the identity, yet the optimizer does not find that
# solution. A residual block makes the identity the easy default; it learns a *correction*,
#
# $$y = \mathrm{relu}\big(F(x) + \mathrm{shortcut}(x)\big),$$
#
# and the shortcut hands the gradient straight back: $\partial y/\partial x$ contains the
# identity. ResNet-18/34 use the `BasicBlock` (two 3×3 convolutions); ResNet-50 and deeper the
# `Bottleneck` (1×1 reduce, 3×3, 1×1 expand to 4× the width), cheaper per channel. When a block
# halves the resolution or changes the width, the shortcut becomes a strided 1×1 convolution and
# a norm (`downsample`). torchvision puts the stride in the 3×3 convolution ("ResNet v1.5"); the
# paper put it in the first 1×1, which throws away three quarters of the positions before any 3×3
# filter has seen them.

# %%
print(inspect.getsource(BasicBlock.forward))
print(inspect.getsource(Bottleneck.forward))

# %% [markdown]
# The backward of a block is the tape's: convolution, batch norm and ReLU each bring their own,
# and the `+` sends the same gradient down both branches. A finite-difference check of a small
# block that halves the resolution, in training mode (batch statistics), float64:

# %%
tm.manual_seed(0)
downsample = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))
block = BasicBlock(4, 8, stride=2, downsample=downsample).to(dtype=np.float64)
x = tm.Tensor(np.random.default_rng(1).standard_normal((2, 4, 6, 6)), requires_grad=True)
print("block:", tuple(x.shape), "->", block(x).shape)
errors = gradcheck(lambda t: block(t), [x])
print("relative error of dL/dx: %.1e" % errors[0])
assert errors[0] < 1e-8

# %% [markdown]
# ## Every stage, its shape and its stride
#
# The **stride** of a map is how many image pixels one of its cells steps over. The stem (7×7
# convolution with stride 2, then a 3×3 max pool with stride 2) reaches stride 4; `layer1` keeps
# it; `layer2`, `layer3`, `layer4` each halve the resolution and double the channels. Mask R-CNN
# names the stage outputs C2…C5 after $\log_2$ of their strides, and the FPN outputs P2…P6.
#
# The backbone below has random weights. So that its maps have a sensible scale, its batch norms
# are *calibrated*: one forward pass in training mode with `momentum = 1` copies each layer's
# batch statistics into its running statistics, and evaluation then normalises with them (the
# same trick as `tinymaskrcnn.chapters.reference_models.calibrate_frozen_batchnorm` uses for torchvision's side).

# %%
height, width = 128, 192
scenes = [draw_scene(np.random.default_rng(seed), height, width, 4)[0] for seed in (5, 10)]
batch = np.stack(scenes).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
image = batch[:1]

tm.manual_seed(0)
backbone = resnet_fpn_backbone(ARCH, trainable_layers=5, norm_layer=nn.BatchNorm2d)
for m in backbone.modules():
    if isinstance(m, nn.BatchNorm2d):
        m.momentum = 1.0
with tm.no_grad():
    backbone(tm.Tensor(batch))          # training mode: the batch statistics become the running ones
backbone.eval()

rows, t = [], tm.Tensor(image)
names = {"layer1": "C2", "layer2": "C3", "layer3": "C4", "layer4": "C5"}
with tm.no_grad():
    for name in backbone.body.layer_names:
        module = getattr(backbone.body, name)
        t = module(t)
        count = sum(p.data.size for p in module.parameters())
        rows.append((f"body.{name}", names.get(name, ""), t.shape, height // t.shape[2], count))
    pyramid = backbone(tm.Tensor(image))
fpn = backbone.fpn
for k, (key, level) in enumerate(pyramid.items()):   # level k: its lateral 1x1 and output 3x3 conv ('pool': none)
    count = sum(p.data.size for blocks in (fpn.inner_blocks, fpn.layer_blocks) if k < len(blocks)
                for p in blocks[k].parameters())
    rows.append((f"fpn '{key}'", f"P{k + 2}", level.shape, height // level.shape[2], count))

print(f"{ARCH} + FPN on a {height}×{width} image")
print(f"{'module':16s} {'name':4s} {'output (N, C, H, W)':22s} {'stride':>6s} {'parameters':>11s}")
for module, name, shape, stride, count in rows:
    print(f"{module:16s} {name:4s} {str(shape):22s} {stride:6d} {count:11,d}")
print(f"{'total':16s} {'':4s} {'':22s} {'':6s} {sum(r[-1] for r in rows):11,d}")
strides = [r[3] for r in rows]
assert strides == [2, 2, 2, 4, 4, 8, 16, 32, 4, 8, 16, 32, 64]
assert all(r[2][2] * r[3] == height and r[2][3] * r[3] == width for r in rows)
assert sum(r[-1] for r in rows) == sum(p.data.size for p in backbone.parameters())

# %% [markdown]
# Each stage halves the resolution and doubles the channels: a 3×3 convolution then has four times
# the weights and a quarter of the positions, so every stage costs about the same arithmetic (the
# ResNet paper's design rule), while most of the *parameters* sit in `layer4`.
#
# ## The pyramid
#
# C5 knows *what* is in the image but sees it at stride 32, too coarse to place a small object;
# C2 is fine-grained but has seen little context. The FPN gives every level both: a 1×1
# convolution brings each $C_k$ to 256 channels (the *lateral*), a **top-down** pathway adds the
# coarser level, upsampled by nearest neighbour, and a 3×3 convolution smooths the seams:
#
# $$M_5 = \text{inner}_5(C_5), \qquad M_k = \text{inner}_k(C_k) + \text{up}(M_{k+1}), \qquad
#   P_k = \text{layer}_k(M_k), \qquad P_6 = \text{maxpool}_{1\times1,\,s2}(P_5).$$
#
# "up" goes to the lateral's size, not by a factor 2: a 100-pixel side becomes 25, 13, 7, 4, and
# twice 13 is not 25.

# %%
print(inspect.getsource(FeaturePyramidNetwork.forward))

# %% [markdown]
# The five levels of the shapes image, channel 0 of 256 each (scaled to its own range). The
# weights are random, so a channel is a random filter of the image: even at stride 4 it shows
# mostly texture, the shapes only faintly; at strides 32 and 64 one cell covers a whole shape and
# its surroundings (asserted below: the largest shape is smaller than one P6 cell), and what such
# a cell says about them is only learnt in training — the next picture shows a trained backbone.

# %%
fig, axes = plt.subplots(1, 6, figsize=(10, 2.2), layout="constrained")
axes[0].imshow(V.as_rgb(image[0]))
axes[0].set_axis_off()
axes[0].set_title(f"image {height}×{width}", fontsize=9)
for ax, (k, (key, level)) in zip(axes[1:], enumerate(pyramid.items())):
    V.draw_feature_map(level, channels=1, ax=ax,
                       title=f"P{k + 2} ('{key}'): {level.shape[2]}×{level.shape[3]}\nstride {height // level.shape[2]}")
plt.show()
assert list(pyramid) == ["0", "1", "2", "3", "pool"]
assert all(v.shape[1] == backbone.out_channels == 256 for v in pyramid.values())
assert np.array_equal(pyramid["pool"].data, pyramid["3"].data[:, :, ::2, ::2])   # P6: every other cell of P5
extents = [np.ptp(np.nonzero(mask), axis=1).max() + 1 for _, mask in draw_scene(np.random.default_rng(5), height, width, 4)[1]]
assert max(extents) < 64, extents          # the largest shape spans less than one P6 cell

# %% [markdown]
# ### The same pyramid, trained
#
# The main job's model (`tinymaskrcnn train`; see `tinymaskrcnn/chapters/trained.py` for where the
# chapters find it) has a ResNet-18 with a 64-channel FPN. For each level, the channel whose values
# vary most over the image, drawn on a signed scale (red above zero, blue below) with its colour
# bar: after training, the shapes and their edges stand out at the fine levels, and the coarse levels
# light up where the objects are. The title says whether the weights are trained.

# %%
trained = trained_model()
net = trained.model
mean = np.array(net.transform.image_mean, dtype=np.float32)[:, None, None]
std = np.array(net.transform.image_std, dtype=np.float32)[:, None, None]
with tm.no_grad():
    levels = net.backbone(tm.Tensor((image - mean) / std))
fig, axes = plt.subplots(1, 6, figsize=(13, 2.4), layout="constrained")
axes[0].imshow(V.as_rgb(image[0]))
axes[0].set_axis_off()
axes[0].set_title("the image", fontsize=8)
fig.suptitle(trained.title, fontsize=9)   # too long for one panel's title
for ax, (k, (key, level)) in zip(axes[1:], enumerate(levels.items())):
    maps = tm.backend.to_numpy(level.data)[0]
    channel = int(np.argmax(maps.std(axis=(1, 2))))
    limit = float(np.abs(maps[channel]).max())
    shown = ax.imshow(maps[channel], cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    fig.colorbar(shown, ax=ax, shrink=0.8)
    ax.set_axis_off()
    ax.set_title(f"P{k + 2} stride {height // maps.shape[1]}, channel {channel}", fontsize=8)
plt.show()
assert list(levels) == list(pyramid) and all(v.shape[1] == net.backbone.out_channels for v in levels.values())

# %% [markdown]
# ## The same names as torchvision
#
# Every module in the package is named as torchvision names it, so the `state_dict` keys (the
# parameter and buffer names, in order) are torchvision's, and a torchvision checkpoint loads by
# name, without torch, through `tinymaskrcnn.weights.load_torchvision`.

# %%
detection = resnet_fpn_backbone(ARCH, trainable_layers=3)        # FrozenBatchNorm2d, as Mask R-CNN
keys = list(detection.state_dict())
print(len(keys), "keys, e.g.:", *keys[:3], "...", *keys[-3:], sep="\n  ")
trainable = [name for name, p in detection.named_parameters() if p.requires_grad]
print("trainable: layer2..layer4 and the FPN ->", len(trainable), "parameter tensors; first:", trainable[0])
if torch is not None:
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone as tv_resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d

    theirs = tv_resnet_fpn_backbone(backbone_name=ARCH, weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=3)
    their_state = theirs.state_dict()
    assert keys == list(their_state)
    assert all(detection.state_dict()[k].shape == tuple(v.shape) for k, v in their_state.items())
    assert trainable == [name for name, p in theirs.named_parameters() if p.requires_grad]
    print(f"= torchvision: the same {len(keys)} keys in the same order, the same shapes, the same trainable set")

# %% [markdown]
# ## The same numbers as torchvision
#
# The strongest check: take torchvision's backbone with random weights, calibrate its frozen
# batch norms on the shapes images so that activations stay of order one through all the layers
# (a comparison of numbers that have exploded or vanished proves little; the `std` column shows
# they have not), save it with `torch.save`, read it with the package's torch-free loader, and
# run both on the shapes image in float64.

# %%
if torch is not None:
    from tinymaskrcnn.chapters.reference_models import calibrate_frozen_batchnorm, save_state_dict

    calibrate_frozen_batchnorm(theirs, torch.tensor(batch), seed=0)   # the statistics of the two shapes images
    theirs = theirs.double().eval()
    with tempfile.TemporaryDirectory() as folder:
        path = save_state_dict(theirs, folder)
        ours = resnet_fpn_backbone(ARCH, trainable_layers=3).to(dtype=np.float64)
        load_torchvision(ours, path)
    ours.eval()
    x64 = image.astype(np.float64)
    with torch.no_grad():
        ref = theirs(torch.tensor(x64))
    with tm.no_grad():
        out = ours(tm.Tensor(x64))
    print(f"{'level':6s} {'shape':18s} {'std':>6s} {'relative error':>15s}")
    for key in ref:
        err = rel_error(out[key].data, ref[key].numpy())
        print(f"{key:6s} {str(out[key].shape):18s} {float(ref[key].std()):6.2f} {err:15.1e}")
        assert err < 1e-10, key
    print("= torchvision's resnet_fpn_backbone in float64, every level")

# %% [markdown]
# ## Exercises
#
# ### Exercise 1 — the sizes of the maps
#
# Every stride-2 layer of the backbone (the 7×7 stem convolution with padding 3, the 3×3 max pool
# and 3×3 convolutions with padding 1, the 1×1 pool of P6) maps a side of length $L$ to
# $\lfloor (L + 2p - k)/2 \rfloor + 1$. Write `pyramid_sizes(h, w)` returning the list of
# `(height, width)` of P2, P3, P4, P5, P6 for an `h`×`w` image. The check runs a backbone.

# %%
small_backbone = resnet_fpn_backbone("resnet18")


@exercise
def check_pyramid_sizes(pyramid_sizes):
    for h, w in [(100, 150), (37, 53)]:
        with tm.no_grad():
            maps = small_backbone(np.zeros((1, 3, h, w), np.float32))
        truth = [tuple(v.shape[2:]) for v in maps.values()]
        mine = [tuple(int(n) for n in s) for s in pyramid_sizes(h, w)]
        assert mine == truth, f"for a {h}×{w} image the backbone gives {truth}, your answer {mine}"


def my_pyramid_sizes(h, w):
    raise NotImplementedError   # your code


check_pyramid_sizes(my_pyramid_sizes)

# %% [solution]
def solution_pyramid_sizes(h, w):
    sizes = []
    for _ in range(2):                    # the stem: conv 7×7 s2 p3, max pool 3×3 s2 p1
        h, w = (h + 1) // 2, (w + 1) // 2  # floor((L + 2p - k) / 2) + 1 = ceil(L / 2) for both
    sizes.append((h, w))
    for _ in range(4):                    # layer2..layer4 (3×3 s2 p1) and the P6 pool (1×1 s2 p0)
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes


assert check_pyramid_sizes(solution_pyramid_sizes)
assert rejects(check_pyramid_sizes, lambda h, w: [(h // 2 ** k, w // 2 ** k) for k in range(2, 7)])

# %% [markdown]
# ### Exercise 2 — the top-down pathway
#
# Write `top_down(laterals)`: given the laterals $\text{inner}_k(C_k)$ as a list of `(C, H_k, W_k)`
# arrays, finest first, return the list of $M_k$ (same order), with nearest-neighbour upsampling
# to the lateral's size (row $i$ of the upsampled map is row $\lfloor i \cdot H_{k+1} / H_k \rfloor$
# of the coarse one, and likewise for columns). The check builds an FPN whose convolutions are
# identities, so its outputs are exactly the $M_k$.

# %%
@exercise
def check_top_down(top_down):
    r = np.random.default_rng(5)
    c, sizes = 3, [(25, 38), (13, 19), (7, 10), (4, 5)]
    laterals = [r.standard_normal((c, h, w)) for h, w in sizes]
    fpn = FeaturePyramidNetwork([c] * 4, c).to(dtype=np.float64)
    for inner, layer in zip(fpn.inner_blocks, fpn.layer_blocks):
        inner[0].weight.data[...] = np.eye(c)[:, :, None, None]
        layer[0].weight.data[...] = 0
        layer[0].weight.data[:, :, 1, 1] = np.eye(c)              # a 3×3 kernel that copies its centre
    with tm.no_grad():
        truth = fpn({str(k): a[None] for k, a in enumerate(laterals)})
    mine = top_down([a.copy() for a in laterals])
    assert len(mine) == 4, f"expected 4 maps, got {len(mine)}"
    for k, (m, t) in enumerate(zip(mine, truth.values())):
        assert np.shape(m) == t.shape[1:], f"M{k + 2} has shape {np.shape(m)}, expected {t.shape[1:]}"
        assert np.allclose(m, t.data[0], rtol=1e-12, atol=1e-12), \
            f"M{k + 2} differs: does each level add the upsampled *sum* from above, not just the lateral above?"


def my_top_down(laterals):
    raise NotImplementedError   # your code


check_top_down(my_top_down)

# %% [solution]
def upsample_nearest(a, size):
    rows = np.arange(size[0]) * a.shape[1] // size[0]
    cols = np.arange(size[1]) * a.shape[2] // size[1]
    return a[:, rows][:, :, cols]


def solution_top_down(laterals):
    merged = [laterals[-1]]
    for lateral in reversed(laterals[:-1]):
        merged.insert(0, lateral + upsample_nearest(merged[0], lateral.shape[1:]))
    return merged


def only_the_lateral_above(laterals):      # forgets that M_{k+1} already holds everything coarser
    return [lat + upsample_nearest(above, lat.shape[1:]) for lat, above in zip(laterals[:-1], laterals[1:])] + \
        [laterals[-1]]


assert check_top_down(solution_top_down)
assert rejects(check_top_down, only_the_lateral_above)

# %% [markdown]
# ## Questions to answer in words
#
# Answer each in a few sentences before opening the answer.
#
# **Question 1.** Why does the FPN add the upsampled coarser map to each lateral, instead of using the laterals alone?
#
# <details><summary>Answer</summary>
#
# A lateral at stride 4 comes from an early stage: its features have seen a small window of the image and are shallow. The top-down sum gives that fine map the deep, semantic features of the coarse levels, so a small object is found at fine resolution with strong features, which is what the pyramid is for.
#
# </details>
#
# **Question 2.** If residual connections are not a cure for vanishing gradients, what do they fix?
#
# <details><summary>Answer</summary>
#
# The degradation problem: deeper plain networks reach a higher *training* error although they could copy a shallower one with identity layers. With a shortcut, the identity is the default (a block whose residual is zero), so adding blocks cannot make the easy solution harder to find, and the optimizer can fit much deeper networks.
#
# </details>
