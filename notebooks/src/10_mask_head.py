# %% [markdown]
# # Chapter 10 — The mask head
#
# The last branch predicts, for each positive RoI, which of its pixels belong to the object. It
# lives in `tinymaskrcnn/models/roi_heads.py` (`MaskRCNNHeads`, `MaskRCNNPredictor`, the targets
# and the loss) and `tinymaskrcnn/ops/paste_masks.py` with its kernel `kernels/paste_masks.py`
# (putting a mask back into the image). The path of one RoI:
#
# 1. RoIAlign cuts a 14×14 patch of the FPN map (chapter 8);
# 2. four 3×3 convs with ReLU, a 2×2 stride-2 transposed conv (14 → 28) and a 1×1 conv give
#    **one 28×28 logit map per class**;
# 3. training: the map of the RoI's own class is compared, pixel by pixel, with the object's
#    mask cut to the RoI at 28×28;
# 4. inference: its sigmoid is **pasted** into the image, resized to the box.
#
# It answers: are the targets resized to the prediction or the reverse, why only positive RoIs,
# and why masks are 28×28 and look blocky before pasting.

# %%
import inspect

import matplotlib.pyplot as plt
import numpy as np

import tinymaskrcnn as tm
from tinymaskrcnn import visualize as V
from tinymaskrcnn.chapters import figures_detector as figures
from tinymaskrcnn.chapters import exercise, quick, reference, rejects
from tinymaskrcnn.data.shapes import SHAPES, scene, shape_mask, tight_box
from tinymaskrcnn.core.gradcheck import gradcheck, rel_error
from tinymaskrcnn.kernels import paste_masks as PK
from tinymaskrcnn.models.roi_heads import maskrcnn_inference, maskrcnn_loss, mask_targets, project_masks_on_boxes
from tinymaskrcnn.functional.activation import stable_sigmoid

plt.rcParams["figure.dpi"] = 72
torch = reference()
names = ("background",) + SHAPES

# %% [markdown]
# ## One image, and positive RoIs
#
# As in chapter 9: a shapes image, the small model with random weights, and proposals as a
# trained RPN would give them (jittered copies of each object's box), passed through
# `model.roi_heads` in training mode, which returns the three RoI losses and, through
# `intermediates`, the sampled RoIs and the mask targets.

# %%
image, target = scene(14, 160, 192)
masks, gt_labels, gt_boxes = target["masks"], target["labels"], target["boxes"]

tm.random.manual_seed(0)
model = tm.models.maskrcnn_resnet18_fpn(num_classes=len(names)).train()
heads = model.roi_heads
batch, targets = model.transform([image], [target])
with tm.no_grad():
    features = model.backbone(batch.tensors)
r = np.random.default_rng(1)
wh = np.tile(gt_boxes[:, 2:] - gt_boxes[:, :2], 2)
proposals = np.concatenate([b + r.normal(0, 0.12, (25, 4)) * s for b, s in zip(gt_boxes, wh)])
proposals = np.clip(proposals, 0, [192, 160, 192, 160]).astype(np.float32)

found = {}
_, losses = heads(features, [proposals], batch.image_sizes, targets, intermediates=found)
rois, labels, matched = found["sampled_rois"][0], found["roi_labels"][0], found["roi_matched_idxs"][0]
positive = np.flatnonzero(labels > 0)
print(f"{len(rois)} sampled RoIs, {len(positive)} positive; mask targets {found['mask_targets'].shape}; "
      f"loss_mask {float(losses['loss_mask'].data):.4f} (log 2 = {np.log(2):.4f})")

# %% [markdown]
# ## Only positive RoIs
#
# A background RoI has no object, so it has no mask to learn: the mask branch runs on the
# positives only (its cost is then proportional to the objects, not to the 128–512 sampled
# RoIs). And of a positive's `num_classes` maps only its own class's enters the loss, so classes
# do not compete for pixels (a sigmoid per class, not a softmax over classes): deciding *which*
# object is the box head's job, the mask head only says *where*.

# %%
assert len(found["mask_targets"]) == len(positive) == (labels > 0).sum()
assert np.array_equal(found["mask_labels"], labels[positive])
print(inspect.getsource(maskrcnn_loss))

# %% [markdown]
# ## The targets: the ground truth is resized to the prediction
#
# In training nothing is ever resized *up*: each positive's ground-truth mask (0/1, image size)
# is cut to the RoI and resampled to the prediction's 28×28 grid by RoIAlign (scale 1, adaptive
# sampling, legacy alignment, as torchvision). Averaging over each cell's samples makes the
# targets **soft** at the object's edge: a cell half inside the object gets 0.5. The loss is then
# the mean binary cross-entropy over the 28×28 cells,
#
# $$L_\text{mask} = \frac{1}{P\,M^2} \sum_{i=1}^{P} \sum_{u,v} \Big[\log\big(1 + e^{z^{(c_i)}_{iuv}}\big) - t_{iuv}\, z^{(c_i)}_{iuv}\Big],$$
#
# with $z^{(c_i)}$ the logits of RoI $i$'s class and $t$ its soft target. At inference the
# reverse happens: the 28×28 probabilities are resized to the box and pasted into the image.

# %%
print(inspect.getsource(project_masks_on_boxes))
gt_masks = targets[0]["masks"]
again = project_masks_on_boxes(gt_masks, rois[positive], matched[positive], 28)
assert np.array_equal(again, found["mask_targets"])
soft = found["mask_targets"]
print(f"target values: {np.mean(soft == 0):.0%} exactly 0, {np.mean(soft == 1):.0%} exactly 1, "
      f"{np.mean((soft > 0) & (soft < 1)):.0%} in between (the edges)")
if torch is not None:
    from torchvision.models.detection.roi_heads import project_masks_on_boxes as torch_project
    theirs = torch_project(torch.from_numpy(gt_masks), torch.from_numpy(rois[positive].astype(np.float64)),
                           torch.from_numpy(matched[positive]), 28).numpy()
    mine = project_masks_on_boxes(gt_masks, rois[positive].astype(np.float64), matched[positive], 28)
    assert rel_error(mine, theirs) < 1e-14
    print("targets = torchvision's project_masks_on_boxes (float64)")

# %% [markdown]
# ## Training the head on this image
#
# With random weights every prediction is about 0.5 (loss ≈ log 2). To see what the loss asks
# for, we train the predictor (the transposed conv and the 1×1 conv) on one RoI of each object,
# the four 3×3 convs and the backbone frozen and random. A few dozen steps: overfitting on
# purpose, to show the target being learnt, not a model that generalises.

# %%
one_each = np.array([positive[matched[positive] == k][0] for k in range(len(gt_boxes))])
chosen = np.searchsorted(positive, one_each)                 # their rows among the positives
train_targets, train_labels = soft[chosen], labels[one_each]
with tm.no_grad():
    head_features = heads.mask_head(heads.mask_roi_pool(features, [rois[one_each]], batch.image_sizes))
optimizer = tm.optim.AdamW(heads.mask_predictor.parameters(), lr=2e-2, weight_decay=0.0)
history = []
for step in range(quick(40, 200)):
    loss = maskrcnn_loss(heads.mask_predictor(head_features), train_labels, train_targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    history.append(float(loss.data))
with tm.no_grad():
    mask_logits = heads.mask_predictor(head_features).data
probabilities = maskrcnn_inference(mask_logits, [train_labels])[0]     # (K, 1, 28, 28): sigmoid of the own class
print(f"loss {history[0]:.3f} → {history[-1]:.3f}")
assert history[-1] < 0.5 * history[0]

# %% [markdown]
# ## Pasting: the prediction resized to the box
#
# `paste_masks_in_image` pads the 28×28 mask by one zero cell on each side (so it fades out at
# the border instead of being cut off), grows the box by 30/28 to match, rounds it to whole
# pixels, resizes the padded mask to the box by bilinear interpolation and writes it into an
# empty image. The NumPy twin reads as that recipe:

# %%
print(inspect.getsource(PK.paste_masks_twin))
pasted = tm.ops.paste_masks_in_image(probabilities, rois[one_each], (160, 192))
print("pasted:", pasted.shape)

# %% [markdown]
# The whole path in one picture, a row per RoI: the RoI on the image, its soft 28×28 target, the
# prediction, and the prediction pasted back (tinted, its 0.5 contour drawn).

# %%
figures.draw_mask_rows(image, rois[one_each], train_targets, probabilities[:, 0], pasted, labels=train_labels,
                       class_names=names)
plt.show()
plt.close("all")

# %%
# pasting = torchvision's, in float64, and the Numba kernel = its NumPy twin
probs64, boxes64 = probabilities.astype(np.float64), rois[one_each].astype(np.float64)
ours = tm.ops.paste_masks_in_image(probs64, boxes64, (160, 192))
if torch is not None:
    from torchvision.models.detection.roi_heads import paste_masks_in_image as torch_paste
    theirs = torch_paste(torch.from_numpy(probs64), torch.from_numpy(boxes64), (160, 192), padding=1).numpy()
    print(f"paste_masks_in_image vs torchvision: max difference {np.abs(ours - theirs).max():.1e}")
    assert np.allclose(ours, theirs, rtol=0, atol=1e-12)
scale = np.float64(30 / 28)
assert rel_error(PK.paste_masks(probs64[:, 0], boxes64, 160, 192, 1, scale),
                 PK.paste_masks_twin(probs64[:, 0], boxes64, 160, 192, 1, scale)) < 1e-14

# %% [markdown]
# ## The mask loss: torchvision's, its gradient, and where the gradient goes
#
# The loss equals torchvision's `maskrcnn_loss` (which builds its own targets from the ground
# truth) in float64, and its backward agrees with finite differences. The gradient reaches only
# each RoI's own-class map: $\partial L / \partial z^{(c_i)}_{iuv} = (\sigma(z) - t)/(P M^2)$,
# zero for every other class.

# %%
g = np.random.default_rng(2)
P = len(positive)
logits64 = g.standard_normal((P, len(names), 28, 28))
mask_labels, projected = mask_targets([rois[positive].astype(np.float64)], [gt_masks], [gt_labels], [matched[positive]], 28)
ours = float(maskrcnn_loss(tm.Tensor(logits64), mask_labels, projected).data)
if torch is not None:
    from torchvision.models.detection.roi_heads import maskrcnn_loss as torch_maskrcnn_loss
    theirs = float(torch_maskrcnn_loss(torch.from_numpy(logits64), [torch.from_numpy(rois[positive].astype(np.float64))],
                                       [torch.from_numpy(gt_masks)], [torch.from_numpy(gt_labels)],
                                       [torch.from_numpy(matched[positive])]))
    print(f"loss_mask: ours {ours!r}, torchvision {theirs!r}")
    assert abs(ours - theirs) <= 1e-14 * abs(theirs)

# the gradient check on a small case: 3 RoIs, 4 classes, 8×8 masks (the same code as 28×28). The
# loss is a mean over 192 cells, so each derivative is small (about 1/192) while the loss is about
# 1: the rounding error of the difference quotient, ε·L/h, weighs more than usual. h = 1e-4 (its
# truncation error, h² times a third derivative of order 1/192, stays near 1e-12) balances the two
# (measured: 2e-8 at the default h = 1e-6, 4e-10 at 1e-4).
small_labels, small_targets = mask_targets([rois[one_each[:3]].astype(np.float64)], [gt_masks], [gt_labels],
                                           [matched[one_each[:3]]], 8)
z = tm.Tensor(g.standard_normal((3, len(names), 8, 8)), requires_grad=True)
err = gradcheck(lambda t: maskrcnn_loss(t, small_labels, small_targets), [z], h=1e-4)[0]
print(f"gradcheck relative error {err:.1e}")
assert err < 1e-8
z.grad = None                                                       # gradcheck left its own cotangent's
maskrcnn_loss(z, small_labels, small_targets).backward()
own = np.zeros(z.shape, dtype=bool)
own[np.arange(3), small_labels] = True
expected = (stable_sigmoid(z.data[own].reshape(3, 8, 8)) - small_targets) / small_targets.size
assert np.all(z.grad[~own] == 0) and np.allclose(z.grad[own].reshape(3, 8, 8), expected, rtol=1e-12)

# %% [markdown]
# ## Why 28×28, and why masks look blocky before pasting
#
# 28 is what the head's shape gives: a 14×14 RoIAlign patch, doubled once by the transposed
# conv. Every cell costs memory and compute for every positive RoI (four 3×3 convs at 14×14, the
# last layers at 28×28) and the logits for every class, so the resolution is a budget; the paper's
# FPN head spends it on 28×28. The price: a 28×28 grid stretched over a 100-pixel box has cells of 3.6 pixels, so
# the prediction looks blocky before it is pasted; bilinear pasting smooths the steps, but
# detail finer than a cell is gone.
#
# How much does the resolution cost? Project each object's *own* ground truth to M×M exactly as
# a target is made, paste it back and threshold at 0.5: the IoU with the original is what a
# perfect M×M head would score on that object. Coarse grids lose the shape; from M ≈ 14 on the
# grid is no longer what limits, but the round trip's whole-pixel rounding of the pasted box and,
# in legacy mode, the half-pixel offset of the targets (chapter 8): the dashed curve makes the
# targets with `aligned=True`, detectron2's rule.

# %%
def ceiling_iou(mask, box, m, aligned=False):
    """IoU between ``mask`` and itself cut to m×m on ``box`` (as project_masks_on_boxes, with a
    choice of alignment) and pasted back, thresholded at 0.5."""
    box = box.astype(np.float64)
    t = tm.ops.roi_align(mask[None, None].astype(np.float64), np.r_[0.0, box][None], m, 1.0, -1, aligned).data
    back = tm.ops.paste_masks_in_image(t, box[None], mask.shape)[0, 0] >= 0.5
    return (back & (mask > 0)).sum() / (back | (mask > 0)).sum()


sizes = (4, 7, 14, 28, 56)
ceilings = {a: np.array([[ceiling_iou(gt_masks[k], gt_boxes[k], m, a) for m in sizes] for k in range(len(gt_boxes))])
            for a in (False, True)}
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), layout="constrained")
for k in range(len(gt_boxes)):
    axes[0].plot(sizes, ceilings[False][k], "o-", color=V.PALETTE[k], label=f"{names[gt_labels[k]]} {k}")
axes[0].plot(sizes, ceilings[True].mean(axis=0), "k--", label="mean, aligned targets")
axes[0].set_xscale("log", base=2)
axes[0].set_xticks(sizes, [str(m) for m in sizes])
axes[0].set_xlabel("mask resolution M")
axes[0].set_ylabel("best possible mask IoU")
axes[0].legend(fontsize=7)
big = int(np.argmax((gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])))
t28 = project_masks_on_boxes(gt_masks[big][None], gt_boxes[big][None].astype(np.float64), np.zeros(1, dtype=np.int64), 28)
fig.colorbar(axes[1].imshow(t28[0], cmap="viridis", vmin=0, vmax=1, interpolation="nearest"), ax=axes[1], shrink=0.8)
axes[1].set_title(f"the {names[gt_labels[big]]}'s own mask at 28×28: "
                  f"{(gt_boxes[big, 2] - gt_boxes[big, 0]) / 28:.1f} pixels a cell", fontsize=9)
axes[1].set_axis_off()
plt.show()
plt.close(fig)
mean = {a: c.mean(axis=0).round(3) for a, c in ceilings.items()}
print("mean ceiling IoU by M", sizes, "\n  legacy targets:", mean[False], "\n  aligned targets:", mean[True])

# %%
legacy = ceilings[False]
assert mean[False][0] < mean[False][1] < mean[False][3]              # M = 4 < 7 < 28
assert np.all(legacy[:, sizes.index(28)] > 0.9) and legacy[:, sizes.index(4)].min() < 0.7
assert mean[True][sizes.index(28)] > mean[False][sizes.index(28)]    # on this image, the half-pixel offset costs

# %% [markdown]
# ## Mini-masks: what matterport stores, against the 28×28 targets
#
# Full-image masks cost memory: an object of a 1024×1024 COCO image is a megabyte of booleans.
# matterport's Mask R-CNN therefore stores each object's **mini-mask**: the mask cut to its box and
# resized to 56×56, rounded to 0/1 (`USE_MINI_MASK`, `MINI_MASK_SHAPE`). Its training targets are then
# cut from the mini-mask, not from the full mask: the RoI, in the box's coordinates, is
# crop-and-resized to 28×28 and rounded again. torchvision (and this package) keep the full masks and
# cut each soft 28×28 target straight from them with RoIAlign (above).
#
# What each loses, measured as the IoU of the full mask with what it becomes when pasted back into the
# box (for the RoI that is the object's own box): the image's objects, one large circle, and a
# 5-pixel-wide diagonal bar, the case where resizing twice hurts most.

# %%
def resized(mask, box, m, aligned=True):
    """The box's region of ``mask`` resized to m×m by bilinear sampling (RoIAlign, one image, one box)."""
    return tm.ops.roi_align(mask[None, None].astype(np.float64), np.r_[0.0, box][None], m, 1.0, -1, aligned).data[0, 0]


def pasted_back(grid, box, shape):
    return tm.ops.paste_masks_in_image(grid[None, None].astype(np.float64), box[None], shape)[0, 0] >= 0.5


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


yy, xx = np.mgrid[:256, :256] - 128.0
bar = (np.abs(0.8 * yy - 0.6 * xx) < 2.5) & (np.abs(0.6 * yy + 0.8 * xx) < 110)
objects = [(f"{names[l]} {k}", m > 0) for k, (l, m) in enumerate(zip(gt_labels, gt_masks))] + \
          [("large circle", shape_mask("circle", 128, 128, 100, 256, 256)), ("thin bar", bar)]
rows = []
for name, mask in objects:
    box = np.asarray(tight_box(mask), dtype=np.float64)
    mini = resized(mask, box, 56) >= 0.5                                  # matterport stores this
    from_mini = resized(mini, np.array([0.0, 0.0, 56.0, 56.0]), 28) >= 0.5   # and trains on this
    target28 = resized(mask, box, 28, aligned=False)                        # torchvision's soft target
    rows.append((name, mask, box, mini, from_mini, target28,
                 iou(pasted_back(mini, box, mask.shape), mask), iou(pasted_back(target28, box, mask.shape), mask),
                 iou(pasted_back(from_mini, box, mask.shape), mask)))
print(f"{'object':14s} {'pixels':>7s} {'mini 56x56':>11s} {'RoIAlign 28':>12s} {'28 from mini':>13s}   (IoU with the full mask)")
for name, mask, _, _, _, _, a, b, c in rows:
    print(f"{name:14s} {int(mask.sum()):7d} {a:11.3f} {b:12.3f} {c:13.3f}")

shown = [rows[-2], rows[-1]]
fig, axes = plt.subplots(len(shown), 4, figsize=(10, 5), layout="constrained")
for row, (name, mask, box, mini, from_mini, target28, a, b, c) in zip(axes, shown):
    x1, y1, x2, y2 = box.astype(int)
    row[0].imshow(mask[y1:y2, x1:x2], cmap="gray", interpolation="nearest")
    row[0].set_title(f"{name}: full mask, {x2 - x1}×{y2 - y1} box", fontsize=8)
    row[1].imshow(mini, cmap="gray", interpolation="nearest")
    row[1].set_title(f"mini-mask 56×56 (pasted back: IoU {a:.2f})", fontsize=8)
    row[2].imshow(from_mini, cmap="gray", interpolation="nearest")
    row[2].set_title(f"matterport's 28×28 target (IoU {c:.2f})", fontsize=8)
    shown_target = row[3].imshow(target28, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(shown_target, ax=row[3], shrink=0.8)
    row[3].set_title(f"RoIAlign's soft 28×28 target (IoU {b:.2f})", fontsize=8)
    for ax in row:
        ax.set_axis_off()
plt.show()
plt.close(fig)
bar_row = rows[-1]
print(f"a 1024×1024 mask is {1024 * 1024 // 56 ** 2}× the bytes of a 56×56 mini-mask")
assert all(r[6] < 1 and r[7] < 1 and r[8] < 1 for r in rows)                # every representation loses something
assert bar_row[8] < min(bar_row[6], bar_row[7]) and bar_row[8] < 0.7         # rounding twice loses the thin bar most
assert np.mean([r[8] for r in rows]) < np.mean([r[6] for r in rows])        # and on average costs what the mini-mask kept

# %% [markdown]
# The mini-mask itself is a fair summary (56 cells across, twice the target's), but matterport's
# targets pass through *two* resizes and *two* roundings: to 56×56 when stored, to 28×28 when cut,
# and a thin structure that straddles cell boundaries is lost at the second rounding. The RoIAlign
# target keeps the fraction of each cell the object covers (its soft values, colour bar), so the
# loss still sees the thin bar where a rounded target has dropped it. matterport's choice buys memory
# (printed above), which mattered on 2017's GPUs; it also fixes each mask to its ground-truth box,
# so a RoI larger than the box sees zeros past the box's edge, as it should, but at the mini-mask's
# resolution.

# %% [markdown]
# ## Exercises
#
# ### Exercise 1 — the mask loss
#
# Write `my_mask_loss(mask_logits, labels, targets)` for arrays: logits (P, num_classes, M, M),
# labels (P,) the class of each positive RoI, soft targets (P, M, M). The mean binary
# cross-entropy with logits over the own-class maps (compute it stably: $\log(1 + e^{z})$ for
# large $z$ overflows; use `np.logaddexp(0, z)`). The check compares with torch's
# `binary_cross_entropy_with_logits` when torch is installed, else with the package's loss.

# %%
@exercise
def check_mask_loss(my_mask_loss):
    r = np.random.default_rng(3)
    for p, c, m in ((5, 4, 28), (2, 7, 6)):
        z = r.standard_normal((p, c, m, m)) * 4
        lab = r.integers(1, c, p)
        t = r.uniform(0, 1, (p, m, m))
        if torch is not None:
            truth = float(torch.nn.functional.binary_cross_entropy_with_logits(
                torch.from_numpy(z[np.arange(p), lab]), torch.from_numpy(t)))
        else:
            truth = float(maskrcnn_loss(tm.Tensor(z), lab, t).data)
        mine = float(my_mask_loss(z, lab, t))
        assert np.isclose(mine, truth, rtol=1e-12), f"{p} RoIs, {c} classes, {m}×{m}: {mine:.6f}, expected {truth:.6f}"


def my_mask_loss(mask_logits, labels, targets):
    raise NotImplementedError   # your code


check_mask_loss(my_mask_loss)

# %% [solution]
def solution_mask_loss(mask_logits, labels, targets):
    z = mask_logits[np.arange(len(labels)), labels]              # (P, M, M): each RoI's own class
    return np.mean(np.logaddexp(0, z) - targets * z)


def every_class_loss(mask_logits, labels, targets):              # wrong: every class's map against the target
    return np.mean(np.logaddexp(0, mask_logits) - targets[:, None] * mask_logits)


assert check_mask_loss(solution_mask_loss)
assert rejects(check_mask_loss, every_class_loss)

# %% [markdown]
# ### Exercise 2 — a mask target
#
# Write `my_mask_target(gt_mask, box, m)`: the (m, m) soft target of one RoI `box`
# `(x1, y1, x2, y2)` from its object's (H, W) 0/1 mask, as Mask R-CNN makes it, using
# `tm.ops.roi_align` (mind its defaults and its `aligned` flag). The check compares with
# torchvision's `project_masks_on_boxes` when torch is installed, else with the package's.

# %%
@exercise
def check_mask_target(my_mask_target):
    for k in range(len(gt_boxes)):
        for m in (28, 9):
            box = rois[one_each[k]].astype(np.float64)
            if torch is not None:
                truth = torch_project(torch.from_numpy(gt_masks[k][None]), torch.from_numpy(box[None]),
                                      torch.zeros(1, dtype=torch.int64), m).numpy()[0]
            else:
                truth = project_masks_on_boxes(gt_masks[k][None], box[None], np.zeros(1, dtype=np.int64), m)[0]
            mine = np.asarray(my_mask_target(gt_masks[k], box, m))
            assert mine.shape == (m, m), f"the target should be ({m}, {m}), got {mine.shape}"
            assert np.allclose(mine, truth, rtol=0, atol=1e-12), \
                f"object {k}, m = {m}: values differ by up to {np.abs(mine - truth).max():.3f}"


def my_mask_target(gt_mask, box, m):
    raise NotImplementedError   # your code


check_mask_target(my_mask_target)

# %% [solution]
def solution_mask_target(gt_mask, box, m, aligned=False):
    mask = gt_mask[None, None].astype(np.float64)                  # (1, 1, H, W)
    roi = np.concatenate([[0.0], box])[None]                       # [image index, x1, y1, x2, y2]
    return tm.ops.roi_align(mask, roi, m, spatial_scale=1.0, sampling_ratio=-1, aligned=aligned).data[0, 0]


assert check_mask_target(solution_mask_target)
assert rejects(check_mask_target, lambda *a: solution_mask_target(*a, aligned=True))   # detectron2's rule, not torchvision's

# %% [markdown]
# ## Questions to answer in words
#
# Answer each in a few sentences before opening the answer.
#
# **Question 1.** Why is the mask loss a per-pixel sigmoid on the true class's channel only, rather than a softmax over the classes?
#
# <details><summary>Answer</summary>
#
# It decouples segmentation from classification: the box head picks the class, and the mask head only has to say 'inside or outside' for that class, without classes competing for a pixel. The Mask R-CNN paper measured this choice (about 5 mask AP better than a per-pixel softmax).
#
# </details>
#
# **Question 2.** Why are some mask targets between 0 and 1?
#
# <details><summary>Answer</summary>
#
# RoIAlign resizes the 0/1 ground truth to 28×28 by averaging bilinear samples: a target cell that straddles the object's edge gets the fraction it covers. Binary cross-entropy takes such soft targets as they are, and they keep information that a rounded target (matterport's, the mini-mask section) throws away.
#
# </details>
