# %% [markdown]
# # Chapter 8 — RoIAlign
#
# The RPN of chapter 7 hands over a few hundred boxes of every size. The second stage needs a
# **fixed-size** feature patch for each (7×7 for the box head, 14×14 for the mask head), cut
# from the FPN map that suits the box. This chapter builds that cut:
#
# * `tinymaskrcnn/ops/roi_align.py`: `roi_align` (torchvision.ops.roi_align), the Function with
#   its forward and backward;
# * `kernels/roi_align.py`: the Numba kernels and their readable NumPy twins;
# * `tinymaskrcnn/ops/poolers.py`: `MultiScaleRoIAlign`, which picks the FPN level of each box;
# * `docs/roi_align.md`: the derivation and torchvision's exact rules.
#
# Along the way it answers three questions learners ask: what `sampling_ratio` and the
# half-pixel offset (`aligned`) do, and which FPN level a box is pooled from, and why.

# %%
import inspect

import matplotlib.pyplot as plt
import numpy as np

import tinymaskrcnn as tm
from tinymaskrcnn import visualize as V
from tinymaskrcnn.chapters import figures_detector as figures
from tinymaskrcnn.chapters import exercise, quick, reference, rejects
from tinymaskrcnn.data.shapes import scene
from tinymaskrcnn.core.gradcheck import gradcheck, rel_error
from tinymaskrcnn.kernels import roi_align as K
from tinymaskrcnn.ops.poolers import MultiScaleRoIAlign, map_levels

plt.rcParams["figure.dpi"] = 72
rng = np.random.default_rng(0)
torch = reference()

# %% [markdown]
# ## Bilinear sampling
#
# A box rarely starts on a pixel. RoIAlign never rounds it: it cuts the box into
# $p_h \times p_w$ bins, puts a $g_h \times g_w$ grid of sample points in each bin, reads the map
# at each point by **bilinear interpolation** and averages. With pixel centres at integer
# coordinates, $y_0 = \lfloor y \rfloor$, $l_y = y - y_0$, $h_y = 1 - l_y$ (and the same in $x$):
#
# $$f(y, x) = h_y h_x\,X_{y_0,x_0} + h_y l_x\,X_{y_0,x_0+1} + l_y h_x\,X_{y_0+1,x_0} + l_y l_x\,X_{y_0+1,x_0+1},
# \qquad \mathrm{out}_{ij} = \frac{1}{g_h g_w}\sum_{s \in \mathrm{bin}(i,j)} f(y_s, x_s).$$
#
# Sample $i$ of bin $p$ sits at $\text{start} + (p + \tfrac{i + 1/2}{g})\,\tfrac{\text{extent}}{p_h}$.
# The package's NumPy twin computes exactly that (the Numba kernel does the same in loops):

# %%
print(inspect.getsource(K.sample_coordinates))
print(inspect.getsource(K.roi_align_forward_twin))

# %% [markdown]
# ## A map you can compute by hand
#
# Take $X_{yx} = 10y + x$. Bilinear interpolation of a *linear* function is exact, so every
# sample reads $10 y_s + x_s$, and a bin's mean is $10\bar y + \bar x$ at the mean sample
# position. Box $(x_1, y_1, x_2, y_2) = (1, 1, 3, 3)$, a 2×2 output, 2×2 samples a bin:
#
# * **legacy** (`aligned=False`, torchvision's Mask R-CNN): the box starts at 1, the bins are one
#   pixel wide, the samples at 1.25, 1.75 | 2.25, 2.75, the bin centres at 1.5 and 2.5:
#   $\begin{pmatrix}16.5 & 17.5\\ 26.5 & 27.5\end{pmatrix}$;
# * **aligned** (`aligned=True`, detectron2's ROIAlignV2): box coordinates are pixel *edges*
#   (pixel 1 spans [1, 2), its centre is 1.5), so the box is first shifted by −½ onto the
#   centre-at-integer grid: it starts at 0.5, the bin centres are 1 and 2:
#   $\begin{pmatrix}11 & 12\\ 21 & 22\end{pmatrix}$ — exactly pixels 1..2 of the map.
#
# Legacy mode is half a pixel off: on P2 (stride 4) two image pixels, on P5 (stride 32) sixteen.
# torchvision's Mask R-CNN keeps it because its published weights were trained that way.

# %%
X = 10.0 * np.arange(5)[:, None] + np.arange(6)[None, :]          # (5, 6): X[y, x] = 10 y + x
box = np.array([[0, 1.0, 1.0, 3.0, 3.0]])                           # [image index, x1, y1, x2, y2]
legacy = tm.ops.roi_align(X[None, None], box, 2, sampling_ratio=2, aligned=False).data[0, 0]
aligned = tm.ops.roi_align(X[None, None], box, 2, sampling_ratio=2, aligned=True).data[0, 0]
print("legacy:\n", legacy, "\naligned:\n", aligned)

fig, axes = plt.subplots(1, 2, figsize=(9, 4), layout="constrained")
figures.draw_roi_align(X, box[0, 1:], 2, sampling_ratio=2, aligned=False, ax=axes[0], values=True)
figures.draw_roi_align(X, box[0, 1:], 2, sampling_ratio=2, aligned=True, ax=axes[1], values=True)
plt.show()
plt.close(fig)

# %%
assert np.array_equal(legacy, [[16.5, 17.5], [26.5, 27.5]])   # by hand, above
assert np.array_equal(aligned, X[1:3, 1:3])

# %% [markdown]
# Legacy mode has one more rule: a box is made at least one pixel wide and high before it is
# cut, so a tiny box still reads a pixel's worth of map. Aligned mode does not clamp.

# %%
tiny = np.array([[0, 2.0, 2.0, 2.2, 2.2]])
print("legacy, 0.2-pixel box:", tm.ops.roi_align(X[None, None], tiny, 1, sampling_ratio=2).data.ravel(),
      " aligned:", tm.ops.roi_align(X[None, None], tiny, 1, sampling_ratio=2, aligned=True).data.ravel())
# legacy: samples at 2.25 and 2.75 (a one-pixel box from 2) → mean 2.5 in x and y → 27.5
assert tm.ops.roi_align(X[None, None], tiny, 1, sampling_ratio=2).data.item() == 27.5

# %% [markdown]
# ## RoIPool's quantisation
#
# Fast R-CNN's RoIPool rounds the box to whole pixels, splits it into bins of whole pixels and
# takes each bin's maximum. Two roundings move the box by up to half a pixel each way and make
# the bins unequal; for a box on P5 that is up to 16 image pixels, which a box regressor can
# live with but a 28×28 mask cannot. RoIAlign reads the map where the box is.

# %%
M = rng.integers(0, 10, (8, 8)).astype(np.float64)
fbox = (1.4, 1.6, 6.3, 5.2)
fig, axes = plt.subplots(1, 2, figsize=(9, 4), layout="constrained")
figures.draw_roi_pool(M, fbox, 2, ax=axes[0], values=True)
figures.draw_roi_align(M, fbox, 2, sampling_ratio=2, aligned=True, ax=axes[1], values=True,
                       title="RoIAlign (aligned): the box where it is")
plt.show()
plt.close(fig)

# %%
if torch is not None:
    from torchvision.ops import roi_pool
    pooled = roi_pool(torch.from_numpy(M)[None, None], torch.tensor([[0.0, *fbox]], dtype=torch.float64), 2)
    print("RoIPool (torchvision):\n", pooled[0, 0].numpy())
    # the picture's bins are torchvision's: each bin's max over the tinted pixels
    assert pooled[0, 0, 0, 0].item() == M[2:4, 1:4].max() and pooled[0, 0, 1, 1].item() == M[4:6, 4:7].max()

# %% [markdown]
# ## `sampling_ratio`: how many samples a bin
#
# `sampling_ratio = 2` (torchvision's Mask R-CNN): 2×2 samples in every bin. `sampling_ratio ≤ 0`
# (−1 and 0 mean the same): **adaptive**, $g = \lceil \text{extent} / p \rceil$, about one sample
# per pixel of map, so a large box is averaged over all its pixels instead of read at four
# points a bin. The divisor is always the number of samples $g_h g_w$.

# %%
M12 = rng.standard_normal((12, 12))
wide = (1.3, 2.1, 10.2, 7.6)
fig, axes = plt.subplots(1, 3, figsize=(10, 3.6), layout="constrained")
for ax, ratio in zip(axes, (-1, 0, 2)):
    figures.draw_roi_align(M12, wide, 2, sampling_ratio=ratio, ax=ax)
plt.show()
plt.close(fig)

# %%
out = {r: tm.ops.roi_align(M12[None, None], np.array([[0, *wide]]), 2, sampling_ratio=r).data for r in (-1, 0, 2)}
assert np.array_equal(out[-1], out[0])                   # -1 and 0 are the same rule
assert not np.allclose(out[-1], out[2])                  # 5×3 samples a bin vs 2×2
print("adaptive:", out[-1].ravel().round(4), "\nratio 2: ", out[2].ravel().round(4))

# %% [markdown]
# ## Which FPN level a box is pooled from
#
# A box of side $s = \sqrt{wh}$ goes to level (FPN paper, eq. 1)
#
# $$k = \left\lfloor 4 + \log_2 \frac{s}{224} \right\rfloor \text{ clamped to } [2, 5].$$
#
# 224 is the **canonical size**, ImageNet's input size: a box that big is read from P4 (stride
# 16), the level of C4, from which single-scale Faster R-CNN with a ResNet pooled every box; each
# halving of the side moves one level finer. So every box covers about the same number of map
# cells (14 to 28 on a side, except the smallest and largest boxes, clamped to P2 and P5): small
# objects keep their detail on P2 and large ones get P5's context.

# %%
print(inspect.getsource(map_levels))

# %% [markdown]
# The candidate proposals of a shapes image (a random-weight model's, before NMS: boxes of every
# size around the anchors, 23 to 175 pixels), coloured by the level each goes to. At the small
# model's scale (short side 160) four boxes in five are under 112 pixels and read P2, none reaches
# P4; the same boxes at torchvision's scale (short side 800, five times larger) spread over
# P3..P5. The canonical size belongs to the data's scale: with 224 kept, the small model reads
# most RoIs from P2 and never uses P4 and P5 for pooling.

# %%
image, _ = scene(14, 160, 192)
tm.random.manual_seed(0)
model = tm.models.maskrcnn_resnet18_fpn(num_classes=4).eval()
found = {}
with tm.no_grad():
    model([image], intermediates=found)
proposals = found["proposals_before_nms"][0]
side = np.sqrt((proposals[:, 2] - proposals[:, 0]) * (proposals[:, 3] - proposals[:, 1]))
levels = {1: map_levels([proposals], 2, 5) + 2, 5: map_levels([proposals * 5.0], 2, 5) + 2}

fig, axes = plt.subplots(1, 3, figsize=(10, 3), layout="constrained")
V.draw_boxes(image, proposals, ax=axes[0], max_boxes=40, title=f"{len(proposals)} proposals (40 drawn)")
for ax, factor in zip(axes[1:], (1, 5)):
    lv = levels[factor]
    ax.hist([side[lv == k] * factor for k in (2, 3, 4, 5)], bins=np.geomspace(16, 1024, 37), stacked=True,
            label=[f"P{k} ({(lv == k).sum()})" for k in (2, 3, 4, 5)])
    for edge in (112, 224, 448):
        ax.axvline(edge, color="black", linewidth=0.7, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("box side √(wh), pixels")
    ax.set_title(f"short side {160 * factor}", fontsize=9)
    ax.legend(fontsize=7)
plt.show()
plt.close(fig)

# %%
# the level boundaries are the sides 112, 224 and 448 (eps = 1e-6 lets 224 itself reach P4)
for factor, lv in levels.items():
    s = side * factor
    assert np.array_equal(lv, 2 + (s >= 112 * (1 - 1e-6)) + (s >= 224 * (1 - 1e-6)) + (s >= 448 * (1 - 1e-6)))
assert map_levels([np.array([[0.0, 0, 224, 224]])], 2, 5)[0] + 2 == 4

# %% [markdown]
# ## The same as torchvision
#
# `roi_align` in both modes and several sampling ratios, on random maps and boxes (some partly
# outside the map), and `MultiScaleRoIAlign` on four FPN-shaped maps with the proposals above,
# in float64 against torchvision.

# %%
N, C, H, W = 2, 3, 9, 11
x = rng.standard_normal((N, C, H, W))
rois = np.concatenate([rng.integers(0, N, (12, 1)), rng.uniform(-3, 4, (12, 2)), rng.uniform(4, 14, (12, 2))], 1)
if torch is not None:
    from torchvision.ops import MultiScaleRoIAlign as TorchMultiScaleRoIAlign
    from torchvision.ops import roi_align as torch_roi_align
    for aligned_ in (False, True):
        for ratio in (-1, 0, 2):
            ours = tm.ops.roi_align(x, rois, (3, 4), 0.5, ratio, aligned_).data
            theirs = torch_roi_align(torch.from_numpy(x), torch.from_numpy(rois), (3, 4), 0.5, ratio, aligned_).numpy()
            assert rel_error(ours, theirs) < 1e-13, (aligned_, ratio)
    maps = {str(i): rng.standard_normal((1, 4, 160 // s, 192 // s)) for i, s in enumerate((4, 8, 16, 32))}
    boxes64 = found["proposals"][0].astype(np.float64)
    ours = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(maps, [boxes64], [(160, 192)]).data
    theirs = TorchMultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(
        {k: torch.from_numpy(v) for k, v in maps.items()}, [torch.from_numpy(boxes64)], [(160, 192)]).numpy()
    assert rel_error(ours, theirs) < 1e-13
    print("roi_align (6 settings) and MultiScaleRoIAlign equal torchvision's in float64")

# %% [markdown]
# ## The backward: a gradient check, and why "away from integer coordinates"
#
# The output is linear in the map, $\mathrm{out} = A X$, so the gradient is $A^\top$: every tap
# hands $w/(g_h g_w)$ of its bin's gradient back to the pixel it read (a scatter-add). We check it
# by finite differences, and the adjoint identity $\langle AX, Y\rangle = \langle X, A^\top Y\rangle$.

# %%
print(inspect.getsource(K.roi_align_backward_twin))
xt = tm.Tensor(x.copy(), requires_grad=True)
err = gradcheck(lambda t: tm.ops.roi_align(t, rois, (3, 4), 0.5, 2, True), [xt])[0]
Y = rng.standard_normal((12, C, 3, 4))
AX = tm.ops.roi_align(x, rois, (3, 4), 0.5, 2, True).data
ATY = K.roi_align_backward(Y, rois, N, H, W, 0.5, 2, True)
print(f"gradcheck relative error {err:.1e};  <AX,Y> - <X,AᵀY> = {np.vdot(AX, Y) - np.vdot(x, ATY):.1e}")
assert err < 1e-8 and abs(np.vdot(AX, Y) - np.vdot(x, ATY)) < 1e-10 * abs(np.vdot(AX, Y))

# %% [markdown]
# The box coordinates are another matter. A sample moves with the box, and as it crosses an
# integer coordinate the pair of pixels it interpolates changes: the output is continuous but
# only **piecewise** linear in the box, with a kink wherever a sample sits on an integer. A
# central difference straddling a kink measures neither side's slope. That is why a gradient
# test that moves boxes must keep them away from integer coordinates — and why torchvision (and
# we) give no gradient to the boxes at all. Below: one bin's value as a box slides by $t$ pixels.

# %%
ts = np.linspace(0, 2, 161)                  # steps of 1/80: the kinks fall on grid points
row = rng.standard_normal((1, 1, 4, 10))
value = np.array([tm.ops.roi_align(row, np.array([[0, 2 + t, 1.0, 5.5 + t, 2.0]]), 1, sampling_ratio=2).data.item()
                  for t in ts])
kinks = (0.125, 0.375, 1.125, 1.375)          # samples at 2.875 + t and 4.625 + t cross integers
fig, ax = plt.subplots(figsize=(6, 2.6), layout="constrained")
ax.plot(ts, value, "-", color="#1f77b4")
for t in kinks:
    ax.axvline(t, color="grey", linewidth=0.6, linestyle=":")
ax.set_xlabel("shift t of the box (pixels)")
ax.set_ylabel("bin value")
plt.show()
plt.close(fig)

# %%
slope = np.diff(value) / np.diff(ts)         # slope[i]: between ts[i] and ts[i + 1]
for t in kinks:
    i = int(round(t * 80))
    left, right, central = slope[i - 1], slope[i], (value[i + 1] - value[i - 1]) / (ts[i + 1] - ts[i - 1])
    print(f"t = {t}: slope left {left:+.4f}, right {right:+.4f}, central difference {central:+.4f}")
    assert not np.isclose(left, right) and not np.isclose(central, left) and not np.isclose(central, right)
    assert np.isclose(slope[i - 5], left) and np.isclose(slope[i + 5], right)   # straight on either side

# %% [markdown]
# ## The Numba kernel equals its NumPy twin
#
# The model runs the Numba kernels (`roi_align_forward`, `roi_align_backward`: two small tables
# of bilinear taps per box, one per axis, then one parallel loop over (box, channel)); the twins
# are what you read. They agree to rounding, in both modes:

# %%
for aligned_ in (False, True):
    args = (0.5, -1, aligned_)
    fast = K.roi_align_forward(x, rois, 3, 4, *args)
    slow = K.roi_align_forward_twin(x, rois, 3, 4, *args)
    gfast = K.roi_align_backward(Y, rois, N, H, W, *args)
    gslow = K.roi_align_backward_twin(Y, rois, N, H, W, *args)
    print(f"aligned={aligned_}: forward {rel_error(fast, slow):.1e}, backward {rel_error(gfast, gslow):.1e}")
    assert rel_error(fast, slow) < 1e-14 and rel_error(gfast, gslow) < 1e-14

# %% [markdown]
# ## Exercises
#
# ### Exercise 1 — RoIAlign for one box
#
# Write `my_roi_align(X, box, output_size, sampling_ratio, aligned)` for one (H, W) map, a box
# `(x1, y1, x2, y2)` well inside the map (no edge rules needed) and a positive `sampling_ratio`:
# bins, sample points, bilinear reads, means. Return a `(ph, pw)` array.

# %%
@exercise
def check_roi_align(my_roi_align):
    r = np.random.default_rng(5)
    Xc = r.standard_normal((12, 14))
    for aligned_ in (False, True):
        for ratio in (1, 2, 3):
            b = (r.uniform(1.5, 4), r.uniform(1.5, 4), r.uniform(7, 11), r.uniform(7, 9.5))
            mine = np.asarray(my_roi_align(Xc, b, (2, 3), ratio, aligned_))
            truth = tm.ops.roi_align(Xc[None, None], np.array([[0, *b]]), (2, 3), 1.0, ratio, aligned_).data[0, 0]
            assert mine.shape == (2, 3), f"the output should have shape (2, 3), got {mine.shape}"
            assert np.allclose(mine, truth, rtol=1e-10, atol=1e-12), \
                f"aligned={aligned_}, sampling_ratio={ratio}: values differ (did you shift by 1/2 when aligned?)"


def my_roi_align(X, box, output_size, sampling_ratio, aligned):
    raise NotImplementedError   # your code


check_roi_align(my_roi_align)

# %% [solution]
def solution_roi_align(X, box, output_size, sampling_ratio, aligned, offset=None):
    offset = (0.5 if aligned else 0.0) if offset is None else offset
    x1, y1, x2, y2 = (v - offset for v in box)
    h, w = y2 - y1, x2 - x1
    ph, pw = output_size
    g = sampling_ratio
    ys = y1 + (np.arange(ph)[:, None] + (np.arange(g)[None, :] + 0.5) / g) * h / ph   # (ph, g)
    xs = x1 + (np.arange(pw)[:, None] + (np.arange(g)[None, :] + 0.5) / g) * w / pw   # (pw, g)
    y, x = ys[:, :, None, None], xs[None, None, :, :]
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    ly, lx = y - y0, x - x0
    f = ((1 - ly) * (1 - lx) * X[y0, x0] + (1 - ly) * lx * X[y0, x0 + 1]
         + ly * (1 - lx) * X[y0 + 1, x0] + ly * lx * X[y0 + 1, x0 + 1])          # (ph, g, pw, g)
    return f.mean(axis=(1, 3))


assert check_roi_align(solution_roi_align)
assert rejects(check_roi_align, lambda *a: solution_roi_align(*a, offset=0.0))   # forgets the half-pixel shift

# %% [markdown]
# ### Exercise 2 — the FPN level of a box
#
# Write `my_level(boxes)`: for (K, 4) boxes in image coordinates, the FPN level 2..5 each is
# pooled from (canonical size 224 at level 4, eps 1e-6 inside the floor). The check compares with
# torchvision's `LevelMapper` when torch is installed, else with the package's tested `map_levels`.

# %%
@exercise
def check_level(my_level):
    r = np.random.default_rng(6)
    xy = r.uniform(0, 400, (200, 2))
    wh = np.exp(r.uniform(np.log(4), np.log(900), (200, 2)))
    b = np.concatenate([xy, xy + wh], axis=1)
    b = np.concatenate([b, [[0, 0, 112, 112], [0, 0, 224, 224], [0, 0, 448, 448]]])   # the boundaries
    if torch is not None:
        from torchvision.ops.poolers import LevelMapper
        truth = LevelMapper(2, 5)([torch.from_numpy(b)]).numpy() + 2
    else:
        truth = map_levels([b], 2, 5) + 2
    mine = np.asarray(my_level(b))
    assert mine.shape == (len(b),), f"one level per box: expected shape ({len(b)},), got {mine.shape}"
    wrong = np.flatnonzero(mine != truth)
    assert not len(wrong), f"{len(wrong)} boxes differ, e.g. box {b[wrong[0]].round(1)}: {mine[wrong[0]]} vs {truth[wrong[0]]}"


def my_level(boxes):
    raise NotImplementedError   # your code


check_level(my_level)

# %% [solution]
def solution_level(boxes):
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    return np.clip(np.floor(4 + np.log2(side / 224) + 1e-6), 2, 5).astype(int)


assert check_level(solution_level)
# rounding instead of flooring: a 400-pixel box (log2(400/224) = 0.84) goes to P5 instead of P4
assert rejects(check_level, lambda b: np.clip(np.round(4 + np.log2(np.sqrt(
    (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])) / 224)), 2, 5).astype(int))

# %% [markdown]
# ## Questions to answer in words
#
# Answer each in a few sentences before opening the answer.
#
# **Question 1.** What does RoIPool's rounding cost, and which objects suffer most?
#
# <details><summary>Answer</summary>
#
# It snaps the box and each bin to whole feature cells, shifting them by up to half a cell: at stride 16 that is up to 8 image pixels. For a large object that is a small fraction of its size; for a small one (a few cells across) it is a large one, and for masks, which must line up pixel by pixel, it is visible. RoIAlign samples at the exact positions instead.
#
# </details>
