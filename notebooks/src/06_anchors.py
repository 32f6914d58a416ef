# %% [markdown]
# # Chapter 6 — Anchors
#
# The region proposal network (next chapter) does not search for objects at arbitrary places:
# at every cell of every feature map it looks at a few fixed boxes, the **anchors**, and for
# each one predicts "is there an object here?" and "how should this box move to fit it?". This
# chapter builds the anchors: their shapes at one cell, their grid over each level of the
# feature pyramid, which of them count as positive for a given image, and which objects no
# anchor fits. It mirrors `tinymaskrcnn/models/anchors.py`, equal to torchvision's
# `AnchorGenerator` (checked at the end).

# %%
import inspect

import matplotlib.pyplot as plt
import numpy as np

import tinymaskrcnn as tm
from tinymaskrcnn import visualize as V
from tinymaskrcnn.chapters import figures_detector as figures
from tinymaskrcnn.models.matcher import Matcher
from tinymaskrcnn.ops.boxes import box_iou
from tinymaskrcnn.chapters import exercise, quick, reference, rejects
from tinymaskrcnn.data.shapes import scene
from tinymaskrcnn.models.anchors import AnchorGenerator, generate_cell_anchors

plt.rcParams["figure.dpi"] = 72
rng = np.random.default_rng(0)
torch = reference()


image, target = scene(5, dtype=np.float64)   # a shapes image and its objects' tight boxes
gt = target["boxes"]
print(f"image {image.shape}, object sizes √(w·h): {np.sqrt(np.prod(gt[:, 2:] - gt[:, :2], axis=1)).round(1)}")

# %% [markdown]
# ## 1. The anchors of one cell
#
# Each level $l$ of the pyramid has a few sizes $s$ (the square root of the anchor's area) and
# aspect ratios $r = h / w$ (torchvision's convention: $r = 2$ is a **tall** box). Keeping the
# area $s^2$:
#
# $$h = s\sqrt{r},\qquad w = s / \sqrt{r},\qquad \text{cell anchor} = \mathrm{round}\!\left(\tfrac{1}{2}[-w, -h, w, h]\right).$$
#
# torchvision's Mask R-CNN gives P2…P6 one size each, 32, 64, 128, 256, 512, with ratios
# 0.5, 1, 2: three anchors per cell. Those sizes suit its 800–1333 px inputs; our shapes images
# are 128×192, so this chapter uses half of them, 16…256 (the project's small model starts from
# the same sizes, with three a level: section 4 shows why).

# %%
print(inspect.getsource(generate_cell_anchors))
sizes = ((16,), (32,), (64,), (128,), (256,))
gen = AnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * 5)
for level, cell in enumerate(gen.cell_anchors):
    print(f"P{level + 2} (size {sizes[level][0]:3d}): " + "  ".join(
        f"r={r}: {int(c[2] - c[0])}×{int(c[3] - c[1])}" for r, c in zip((0.5, 1.0, 2.0), cell)))

# %% [markdown]
# ## 2. The grid of each level
#
# Level $l$'s feature map has stride $2^l$ (P2: 4 px, …, P6: 64 px). The anchors of the cell at
# row $y$, column $x$ are the cell anchors shifted by $(x\cdot\text{stride}, y\cdot\text{stride})$:
# the **top-left corner** of the cell, not its centre (torchvision adds no half-cell offset, a
# classic source of half-stride disagreements between implementations). The stride is the padded
# image size divided by the feature size, per axis.

# %%
print(inspect.getsource(AnchorGenerator.grid_anchors))

# %% [markdown]
# The padded 128×192 image gives grids of 32×48, 16×24, 8×12, 4×6 and 2×3 cells. Below: the three
# anchors at the centre cell of each level (left), and every level's anchor centres (right):
# the coarser the level, the fewer and farther apart its centres, and the larger its anchors.

# %%
image_size = image.shape[1:]
grid_sizes = [(image_size[0] // 2 ** l, image_size[1] // 2 ** l) for l in range(2, 7)]
levels = gen.grid_anchors(image_size, grid_sizes, dtype=np.float64)       # each (h, w, A, 4)
print("grids:", grid_sizes, " strides:", gen.strides(image_size, grid_sizes))
fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
centre_cell = {f"P{l + 2}": a[a.shape[0] // 2, a.shape[1] // 2] for l, a in enumerate(levels)}
figures.draw_box_groups(image, centre_cell, ax=axes[0], title="the anchors of each level's centre cell")
axes[0].set_xlim(-100, 292)
axes[0].set_ylim(228, -100)   # the large anchors reach beyond the image
centres = {f"P{l + 2}": ((a[:, :, 0, :2] + a[:, :, 0, 2:]) / 2).reshape(-1, 2) for l, a in enumerate(levels)}
figures.draw_box_groups(image, {}, points=centres, ax=axes[1], markersize=[1.5, 3, 4.5, 6, 7.5],
                        title="anchor centres of each level (P2 densest)")
plt.show()
plt.close(fig)
assert np.array_equal(levels[0][0, 0], gen.cell_anchors[0])               # cell (0, 0): no offset
assert np.array_equal(levels[1][2, 3] - levels[1][0, 0], np.tile([3 * 8, 2 * 8], 2)[None].repeat(3, 0))

# %% [markdown]
# ## 3. Which anchors are positive
#
# The RPN labels its anchors with the matcher of chapter 5: IoU ≥ 0.7 with some object:
# positive; < 0.3 with every object: negative; in between: ignored; and each object's best
# anchor(s) positive in any case (low-quality matches). On this image only a handful of the
# 6138 anchors are positive: with one size a level, an object fits one or two anchors by IoU
# 0.7. That imbalance is why the loss looks at a balanced sample (chapter 5), not at all anchors.

# %%
anchors = gen(image_size, grid_sizes, dtype=np.float64)[0]               # (total, 4), levels concatenated
iou = box_iou(gt, anchors)
matches = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou)
labels = np.where(matches >= 0, 1, np.where(matches == Matcher.BELOW_LOW_THRESHOLD, 0, -1))
print(f"{len(anchors)} anchors: {np.sum(labels == 1)} positive, {np.sum(labels == 0)} negative, "
      f"{np.sum(labels == -1)} ignored")
fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
V.draw_boxes(image, anchors, labels=labels, ax=ax, max_boxes=60, linewidth=1.5,
             title="anchors: positive, negative, ignored (60 drawn)")
plt.show()
plt.close(fig)
assert np.sum(labels == 1) >= len(gt)     # every object has at least one positive anchor

# %% [markdown]
# ## 4. Each object's best anchor
#
# How well can the anchors fit an object at all? Each object's best IoU over all anchors, and
# which level and shape achieved it:

# %%
num_per_level = [a.shape[0] * a.shape[1] * a.shape[2] for a in levels]
level_of = np.repeat(np.arange(5), num_per_level)
best = iou.argmax(axis=1)
fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
figures.draw_box_groups(image, {"object": gt, "its best anchor": anchors[best]}, ax=ax,
                        title="each object and its best-fitting anchor")
plt.show()
plt.close(fig)
for k, b in enumerate(best):
    w, h = gt[k, 2:] - gt[k, :2]
    print(f"object {k}: {w:.0f}×{h:.0f} px, best anchor on P{level_of[b] + 2}, "
          f"{anchors[b, 2] - anchors[b, 0]:.0f}×{anchors[b, 3] - anchors[b, 1]:.0f}, IoU {iou[k, b]:.2f}")

# %% [markdown]
# An object between two anchor sizes fits neither well. Slide square objects of every side
# over the image and record their best IoU: with one size per level (torchvision's design) the
# best IoU dips between sizes, and objects below ~$16\sqrt{0.7} \approx 13$ px never reach 0.7
# — they are positive only through the low-quality rule, with one anchor each. Three sizes per
# octave ($s\cdot 2^{k/3}$, as RetinaNet and this project's small model) fill the dips.

# %%
sides = np.geomspace(6, 200, quick(30, 80))
configs = {"16…256, 1 size a level": sizes,
           "16…256, 3 sizes a level": tuple(tuple(s * 2 ** (k / 3) for k in range(3)) for (s,) in sizes)}
positions = rng.uniform(0, 1, (quick(8, 30), 2))
fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
for name, config in configs.items():
    config_anchors = AnchorGenerator(config)((256, 256), [(256 // 2 ** l,) * 2 for l in range(2, 7)],
                                             dtype=np.float64)[0]
    best_iou = []
    for s in sides:
        corners = positions * (256 - s)
        squares = np.concatenate([corners, corners + s], axis=1)
        best_iou.append(box_iou(squares, config_anchors).max(axis=1).mean())
    ax.semilogx(sides, best_iou, label=name)
ax.axhline(0.7, color="0.5", linestyle="--", linewidth=1)
ax.set_xlabel("side of a square object (px)")
ax.set_ylabel("best anchor IoU (mean)")
ax.legend(fontsize=8)
plt.show()
plt.close(fig)

# %% [markdown]
# ## 5. How many anchors
#
# Every stride-2 layer of the backbone rounds up, so an input of $H\times W$ gives level $l$ a
# grid of $\lceil H/2^l\rceil \times \lceil W/2^l\rceil$, and the image has
#
# $$N = A \sum_{l=2}^{6} \left\lceil \frac{H}{2^l} \right\rceil \left\lceil \frac{W}{2^l} \right\rceil$$
#
# anchors, $A$ per cell (3 here). For the padded 128×192 image: 3 · (1536 + 384 + 96 + 24 + 6) =
# 6138; for torchvision on an 800×1088 batch, 3 · 72 471 = 217 413. The anchors of one image are
# the levels concatenated, each in row-major cell order with a cell's A anchors together: the
# order in which the RPN head's outputs are flattened (next chapter).

# %%
print(len(anchors), "anchors;", gen.num_anchors_per_location(), "per cell on each level")
assert len(anchors) == 3 * sum(-(-128 // 2 ** l) * -(-192 // 2 ** l) for l in range(2, 7)) == 6138

# %% [markdown]
# **Check.** torchvision's `AnchorGenerator`, given the same padded batch and feature maps,
# produces exactly the same anchors (they are integers on an integer grid, so equality is exact),
# for our sizes and for its own defaults on an 800×1088 batch.

# %%
if torch is not None:
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
    from torchvision.models.detection.image_list import ImageList as TVImageList

    for tv_sizes, padded in ((sizes, (128, 192)), (((32,), (64,), (128,), (256,), (512,)), (800, 1088))):
        grids = [(-(-padded[0] // 2 ** l), -(-padded[1] // 2 ** l)) for l in range(2, 7)]
        batch = torch.zeros((1, 3) + padded, dtype=torch.float64)
        maps = [torch.zeros((1, 1) + g, dtype=torch.float64) for g in grids]
        theirs = TVAnchorGenerator(tv_sizes, ((0.5, 1.0, 2.0),) * 5)(TVImageList(batch, [padded]), maps)[0]
        ours = AnchorGenerator(tv_sizes, ((0.5, 1.0, 2.0),) * 5)(padded, grids, dtype=np.float64)[0]
        np.testing.assert_array_equal(ours, theirs.numpy())
        print(f"{padded}: {len(ours)} anchors, equal to torchvision's")

# %% [markdown]
# ## Exercises
#
# ### Exercise 1 — the smallest object an anchor can match
#
# A square object of side $s$ and a square anchor of side $a$ share their centre. Write
# `smallest_side(a, threshold)`: the smallest $s$ for which their IoU reaches `threshold`.
# (Hint: for $s < a$ the object lies inside the anchor.) Then use it: which of this chapter's
# sizes 16…256 can give a 10 px object a positive label at 0.7 by IoU alone? The check
# scans sides by brute force with `box_iou`.

# %%
@exercise
def check_smallest_side(smallest_side):
    for a in (16.0, 32.0, 100.0):
        for t in (0.5, 0.7):
            s = float(smallest_side(a, t))
            grid = np.linspace(1, a, 20001)
            objects = np.stack([-grid / 2, -grid / 2, grid / 2, grid / 2], axis=1)
            ious = box_iou(objects, np.array([[-a / 2, -a / 2, a / 2, a / 2]]))[:, 0]
            brute = grid[np.argmax(ious >= t)]
            assert abs(s - brute) <= (a - 1) / 20000 + 1e-9, f"anchor {a}, threshold {t}: got {s:.3f}, brute force {brute:.3f}"


def smallest_side(a, threshold):
    raise NotImplementedError   # your code


check_smallest_side(smallest_side)

# %% [solution]
def solution_smallest_side(a, threshold):
    return a * np.sqrt(threshold)       # IoU = s² / a² for a centred object inside the anchor


assert check_smallest_side(solution_smallest_side)
assert rejects(check_smallest_side, lambda a, threshold: a * threshold)
print("smallest object each size matches at 0.7:", {s: round(float(solution_smallest_side(s, 0.7)), 1) for (s,) in sizes})
print("so a 10 px object reaches no anchor at 0.7 (the smallest, 16, needs 13.4 px): only the low-quality rule helps")

# %% [markdown]
# ### Exercise 2 — count the anchors
#
# Write `num_anchors(height, width, anchors_per_cell)` for an **unpadded** input of any size and
# the five levels P2…P6. The check runs a real ResNet-18 FPN backbone on inputs of odd sizes and
# counts the anchors generated for its feature maps.

# %%
backbone = tm.models.maskrcnn_resnet18_fpn(num_classes=4, fpn_channels=8).backbone
backbone.eval()


@exercise
def check_num_anchors(num_anchors):
    for height, width in ((70, 90), (100, 150), quick((33, 47), (300, 333))):
        with tm.no_grad():
            maps = list(backbone(tm.Tensor(np.zeros((1, 3, height, width), dtype=np.float32))).values())
        for a in (3, 9):
            config = AnchorGenerator(tuple((16 * 2 ** l,) * (a // 3) for l in range(5)), ((0.5, 1.0, 2.0),) * 5)
            expected = len(config((height, width), maps)[0])
            got = num_anchors(height, width, a)
            assert got == expected, f"{height}×{width} with {a} anchors a cell: you count {got}, the model makes {expected}"


def num_anchors(height, width, anchors_per_cell):
    raise NotImplementedError   # your code


check_num_anchors(num_anchors)

# %% [solution]
def solution_num_anchors(height, width, anchors_per_cell):
    return anchors_per_cell * sum(-(-height // 2 ** l) * -(-width // 2 ** l) for l in range(2, 7))


assert check_num_anchors(solution_num_anchors)
assert rejects(check_num_anchors, lambda h, w, a: a * sum((h // 2 ** l) * (w // 2 ** l) for l in range(2, 7)))

# %% [markdown]
# ## Questions to answer in words
#
# Answer each in a few sentences before opening the answer.
#
# **Question 1.** Faster R-CNN put three anchor sizes on one feature map; the FPN puts one size on each level. Why is one enough?
#
# <details><summary>Answer</summary>
#
# The pyramid covers the scales: each level's stride is twice the previous one's, so its anchor, twice as large, keeps the same size relative to the grid. An object is matched on the level whose anchor size is near its own, and the three aspect ratios cover its shape.
#
# </details>
#
# **Question 2.** An object of 10 pixels reaches IoU 0.7 with no anchor. How does the RPN still learn it?
#
# <details><summary>Answer</summary>
#
# Through the low-quality rule of the matcher: each ground-truth box's best-overlapping anchor(s) are made positive whatever their IoU, so every object has at least one positive anchor. It is a weak signal (one anchor, a poor fit), which is why small objects are found less often; chapter 14 shows how a larger image scale fixes it for your own data.
#
# </details>
