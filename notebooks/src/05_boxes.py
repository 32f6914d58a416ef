# %% [markdown]
# # Chapter 5 — Boxes
#
# A detector never predicts a box from nothing: it starts from reference boxes (anchors, then
# proposals), scores how well each one overlaps an object, and learns small corrections to it.
# This chapter builds the five tools that does it with, in the order a detector uses them:
#
# 1. **IoU** scores every (object, reference box) pair;
# 2. the **matcher** turns those scores into one label per reference box: which object, or
#    background, or "ignore";
# 3. the **sampler** picks the few hundred labelled boxes the loss looks at;
# 4. the **box coder** turns a matched pair into the regression target the network learns, and
#    a predicted correction back into a box;
# 5. **non-maximum suppression** (NMS) removes the duplicates among the predicted boxes.
#
# IoU and NMS are ops of the detector, in `tinymaskrcnn/ops/boxes.py` (NMS's kernel in
# `kernels/nms.py`); the matcher and the sampler are in `tinymaskrcnn/models/matcher.py`, the box
# coder in `tinymaskrcnn/models/box_coder.py`. They equal torchvision's `torchvision.ops` and
# `torchvision.models.detection._utils`: every section ends by checking that.
#
# Boxes are rows $(x_1, y_1, x_2, y_2)$ in pixels with no "+1": a box from $x = 2$ to $x = 5$
# is 3 wide. None of this is differentiated: targets and selections are constants of the loss.

# %%
import inspect

import matplotlib.pyplot as plt
import numpy as np

import tinymaskrcnn as tm
from tinymaskrcnn import visualize as V
from tinymaskrcnn.chapters import figures_detector as figures
from tinymaskrcnn.models.matcher import BalancedPositiveNegativeSampler, Matcher
from tinymaskrcnn.models.box_coder import BoxCoder
from tinymaskrcnn.ops.boxes import box_iou
from tinymaskrcnn.chapters import exercise, reference, rejects
from tinymaskrcnn.data.shapes import scene
from tinymaskrcnn.kernels import nms as nms_kernels
from tinymaskrcnn.ops import nms

plt.rcParams["figure.dpi"] = 72
rng = np.random.default_rng(0)
torch = reference()


def jitter(boxes, n, scale, rng):
    """``n`` noisy copies of each box: every corner moved by N(0, scale · the box's size)."""
    boxes = np.repeat(boxes, n, axis=0)
    wh = np.tile(boxes[:, 2:] - boxes[:, :2], 2)
    return boxes + rng.normal(0, scale, boxes.shape) * wh


image, target = scene(5, dtype=np.float64)   # a shapes image and its objects' tight boxes
gt = target["boxes"]
print(f"image {image.shape}, {len(gt)} objects:\n{gt}")

# %% [markdown]
# ## 1. Intersection over union
#
# The intersection of two boxes is the box from the larger top-left corner to the smaller
# bottom-right corner, empty when that has a negative side:
#
# $$\mathrm{inter} = \max(0, \min(x_2, x_2') - \max(x_1, x_1'))\cdot\max(0, \min(y_2, y_2') - \max(y_1, y_1')),
# \qquad \mathrm{IoU} = \frac{\mathrm{inter}}{\mathrm{area} + \mathrm{area}' - \mathrm{inter}}.$$
#
# IoU is 1 for identical boxes, 0 for disjoint ones, and does not care how big the boxes are:
# two boxes overlap "as much" at 10 px as at 1000 px. `box_iou` computes it for every pair of
# two lists at once, by broadcasting an (N, 1) column against a (1, M) row:

# %%
print(inspect.getsource(tm.ops.box_iou))

# %% [markdown]
# IoU 0.5 is less overlap than it sounds. Two 60×30 boxes, one shifted right by a third of
# its width, share 40×30 = 1200 px² out of a union of 2·1800 − 1200 = 2400 px²:

# %%
a = np.array([[10.0, 10.0, 70.0, 40.0]])
b = a + [20.0, 0.0, 20.0, 0.0]
inter = np.concatenate([np.maximum(a[:, :2], b[:, :2]), np.minimum(a[:, 2:], b[:, 2:])], axis=1)
iou_ab = box_iou(a, b)[0, 0]
inside = np.array([[15.0, 12.0, 15.0 + 60 / np.sqrt(2), 12.0 + 30 / np.sqrt(2)]])   # half the area, inside a
fig, axes = plt.subplots(1, 2, figsize=(9, 2.6), layout="constrained")
figures.draw_box_groups(figures.blank_image(50, 100), {"a": a, "b": b, "a ∩ b": inter}, filled=["a ∩ b"],
                        ax=axes[0], title=f"shifted by a third: IoU = {iou_ab:.3f}")
figures.draw_box_groups(figures.blank_image(50, 100), {"a": a, "c (inside a)": inside}, ax=axes[1],
                        title=f"half the area, inside: IoU = {box_iou(a, inside)[0, 0]:.3f}")
plt.show()
plt.close(fig)
assert iou_ab == 0.5 and abs(box_iou(a, inside)[0, 0] - 0.5) < 1e-12

# %% [markdown]
# Every object of the shapes image against a set of candidate boxes (noisy copies of the
# objects and random boxes) gives the IoU **matrix** the matcher reads, one row per object. Each
# row is bright only near its own object: most candidates overlap no object at all.

# %%
candidates = np.concatenate([jitter(gt, 4, 0.15, rng), tm.ops.clip_boxes_to_image(
    np.sort(rng.uniform(0, 192, (8, 2, 2)), axis=1).transpose(0, 2, 1).reshape(8, 4), (128, 192))])
iou = box_iou(gt, candidates)
fig, ax = plt.subplots(figsize=(10, 2.8), layout="constrained")
figures.draw_matrix(iou, ax=ax, vmin=0, vmax=1, annotate=True, xlabel="candidate box", ylabel="object",
                    title="IoU of every (object, candidate) pair")
plt.show()
plt.close(fig)
assert iou.shape == (len(gt), len(candidates)) and ((iou >= 0) & (iou <= 1)).all()

# %% [markdown]
# **Check.** The same matrix as `torchvision.ops.box_iou`, in float64, on random boxes, and the
# IoU of a box with itself is 1.

# %%
boxes1 = np.concatenate([(xy := rng.uniform(0, 100, (30, 2))), xy + rng.uniform(1, 40, (30, 2))], axis=1)
boxes2 = np.concatenate([(xy := rng.uniform(0, 100, (40, 2))), xy + rng.uniform(1, 40, (40, 2))], axis=1)
np.testing.assert_allclose(np.diag(box_iou(boxes1, boxes1)), 1.0, rtol=1e-15)
if torch is not None:
    import torchvision

    expected = torchvision.ops.box_iou(torch.tensor(boxes1), torch.tensor(boxes2)).numpy()
    np.testing.assert_allclose(box_iou(boxes1, boxes2), expected, rtol=1e-14, atol=0)
    print("box_iou = torchvision.ops.box_iou (float64, 30 × 40 pairs)")

# %% [markdown]
# ## 2. The matcher: thresholds and low-quality matches
#
# For each candidate (column), the matcher takes the object with the highest IoU, $q$, and labels it
#
# $$\text{object index if } q \ge t_{high},\qquad \text{ignored } (-2) \text{ if } t_{low} \le q < t_{high},
# \qquad \text{background } (-1) \text{ if } q < t_{low}.$$
#
# The RPN uses $t_{high} = 0.7,\ t_{low} = 0.3$: boxes in between are neither good enough to learn
# "object" from nor clearly background, so they are left out of the loss. The box head uses
# 0.5 / 0.5 (nothing ignored).
#
# A fixed threshold can leave an object with **no** positive candidate at all, when none of the
# few fixed anchors near it reaches 0.7 (objects between two anchor sizes, or oddly shaped). With
# `allow_low_quality_matches` (the RPN) every object also claims the candidates of its own
# highest IoU, however low, so that every object teaches the network something.

# %%
print(inspect.getsource(Matcher.__call__))

# %%
candidates = np.concatenate([jitter(gt, 10, 0.12, rng), jitter(gt, 10, 0.4, rng)])
candidates = tm.ops.clip_boxes_to_image(candidates, image.shape[1:])
iou = box_iou(gt, candidates)
strict = Matcher(0.7, 0.3, allow_low_quality_matches=False)(iou)
with_low = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou)
for k in range(len(gt)):
    print(f"object {k}: best IoU {iou[k].max():.2f}; positives {np.sum(strict == k):3d} at 0.7, "
          f"{np.sum(with_low == k):3d} with low-quality matches")


def to_labels(matches):
    """Matcher output → sampler labels: 1 object, 0 background, -1 ignored."""
    return np.where(matches >= 0, 1, np.where(matches == Matcher.BELOW_LOW_THRESHOLD, 0, -1))


fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
V.draw_boxes(image, candidates, labels=to_labels(with_low), ax=ax, max_boxes=None,
             title="candidates labelled by the matcher (0.7 / 0.3, low-quality matches)")
plt.show()
plt.close(fig)

# %% [markdown]
# Here every object already has candidates above 0.7, so the rule changes nothing. To see it at
# work, take fewer, noisier candidates, so that one object's best IoU is below 0.7: without the rule that object has no positive; with it, its best candidate (and any
# candidate tied with it) becomes positive.

# %%
few = jitter(gt, 3, 0.25, np.random.default_rng(7))
q = box_iou(gt, few)
weakest = int(np.argmin(q.max(axis=1)))
strict, with_low = Matcher(0.7, 0.3)(q), Matcher(0.7, 0.3, allow_low_quality_matches=True)(q)
print(f"object {weakest}: best IoU {q[weakest].max():.2f}, positives without the rule: "
      f"{np.sum(strict == weakest)}, with it: {np.sum(with_low == weakest)}")
assert q[weakest].max() < 0.7 and np.sum(strict == weakest) == 0 < np.sum(with_low == weakest)

# %% [markdown]
# **Check.** torchvision's `Matcher` on the same IoU matrices, both settings, gives the same labels.

# %%
if torch is not None:
    from torchvision.models.detection import _utils as det_utils

    for matrix in (iou, q):
        for low_quality in (False, True):
            theirs = det_utils.Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)(torch.tensor(matrix))
            ours = Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)(matrix)
            np.testing.assert_array_equal(ours, theirs.numpy())
    print("Matcher = torchvision's det_utils.Matcher")

# %% [markdown]
# ## 3. The balanced sampler
#
# An image has tens of thousands of anchors and a handful of objects: almost every labelled box
# is background. Scoring them all would teach the network to say "background" everywhere. The
# sampler draws at most `batch_size_per_image · positive_fraction` positives at random (256 ·
# 0.5 = 128 in the RPN, 512 · 0.25 = 128 in the box head) and fills the rest of the batch with
# random negatives; ignored boxes are never drawn.

# %%
print(inspect.getsource(BalancedPositiveNegativeSampler.__call__))

# %%
corners = rng.uniform([0, 0], [192, 128], (3000, 2))
random_boxes = np.concatenate([corners, corners + rng.uniform(8, 60, (3000, 2))], axis=1)
many = tm.ops.clip_boxes_to_image(np.concatenate([jitter(gt, 60, 0.2, rng), random_boxes]), image.shape[1:])
many = many[tm.ops.remove_small_boxes(many, 2.0)]
labels = to_labels(Matcher(0.7, 0.3, allow_low_quality_matches=True)(box_iou(gt, many)))
tm.manual_seed(0)
sampler = BalancedPositiveNegativeSampler(256, 0.5)
(pos,), (neg,) = sampler([labels])
print(f"labelled: {np.sum(labels == 1)} positive, {np.sum(labels == 0)} negative, {np.sum(labels == -1)} ignored")
print(f"sampled:  {pos.sum()} positive, {neg.sum()} negative")
sampled = np.flatnonzero(pos | neg)
fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
V.draw_boxes(image, many[sampled], labels=labels[sampled], ax=ax, max_boxes=None,
             title="the 256 boxes the loss sees")
plt.show()
plt.close(fig)
assert pos.sum() == min(np.sum(labels == 1), 128) and neg.sum() == 256 - pos.sum()
assert (labels[pos] == 1).all() and (labels[neg] == 0).all()

# %% [markdown]
# **Check.** The draws are random, so compare what is not: torchvision's sampler takes as many
# positives and negatives from the same labels, here and when positives are scarce.

# %%
if torch is not None:
    scarce = np.where(labels == 1, -1, labels)
    scarce[np.flatnonzero(labels == 1)[:5]] = 1
    for lab in (labels, scarce):
        tpos, tneg = det_utils.BalancedPositiveNegativeSampler(256, 0.5)([torch.tensor(lab)])
        (opos,), (oneg,) = sampler([lab])
        assert (int(tpos[0].sum()), int(tneg[0].sum())) == (int(opos.sum()), int(oneg.sum()))
        print(f"{int(opos.sum())} positives + {int(oneg.sum())} negatives, as torchvision")

# %% [markdown]
# ## 4. The box coder
#
# The network does not predict corners: it predicts how to move and stretch a reference box
# $(x_a, y_a, w_a, h_a)$ (centre and size) onto the object $(x, y, w, h)$:
#
# $$d_x = w_x\,\frac{x - x_a}{w_a},\quad d_y = w_y\,\frac{y - y_a}{h_a},\quad
# d_w = w_w \log\frac{w}{w_a},\quad d_h = w_h \log\frac{h}{h_a}.$$
#
# Dividing by the reference size makes a target independent of scale (a 10 px miss on a 20 px
# box is as bad as 100 px on a 200 px box); the log makes stretching by 2 and shrinking by 2
# symmetric. Decoding inverts it, $x = x_a + w_a d_x / w_x$, $w = w_a e^{d_w / w_w}$, with
# $d_w, d_h$ first clamped at $\log(1000/16)$ so one wild prediction cannot overflow `exp`.

# %%
print(inspect.getsource(BoxCoder.encode))

# %% [markdown]
# **Why weights (10, 10, 5, 5) in the box head and (1, 1, 1, 1) in the RPN?** The box head
# refines proposals that already overlap their object by IoU ≥ 0.5, so its raw targets are
# small. The regression loss is smooth L1 with $\beta = 1/9$,
# $\ell(x) = x^2 / (2\beta)$ for $|x| < \beta$ and $|x| - \beta/2$ above: in the quadratic zone its
# gradient $x/\beta$ shrinks with the error, above it is ±1. Raw targets mostly fall in the
# quadratic zone, where the loss barely pushes. Fast R-CNN's code divided its targets by their
# standard deviations, (0.1, 0.1, 0.2, 0.2); the weights (10, 10, 5, 5) are those inverses, built
# into the coder: the targets get about unit spread and land in the linear zone, on the scale of
# the classification loss. The RPN's targets were never normalised in the original code, and
# torchvision keeps both choices. Below: targets of proposals matched at IoU ≥ 0.5, with both
# weightings; the grey band is $|d| < \beta$.

# %%
objects = np.concatenate([(xy := rng.uniform(0, 300, (4000, 2))), xy + rng.uniform(16, 200, (4000, 2))], axis=1)
proposals = jitter(objects, 1, 0.12, rng)
matched = np.diag(box_iou(objects, proposals)) >= 0.5        # the box head's positives
objects, proposals = objects[matched], proposals[matched]
raw = BoxCoder((1, 1, 1, 1)).encode(objects, proposals)
scaled = BoxCoder((10, 10, 5, 5)).encode(objects, proposals)
beta = 1 / 9
fig, axes = plt.subplots(1, 4, figsize=(10, 2.6), layout="constrained")
for k, (ax, name) in enumerate(zip(axes, ["dx", "dy", "dw", "dh"])):
    ax.axvspan(-beta, beta, color="0.85")
    ax.hist(raw[:, k], bins=60, range=(-3, 3), alpha=0.7, label="weights 1")
    ax.hist(scaled[:, k], bins=60, range=(-3, 3), alpha=0.7, label="(10,10,5,5)")
    ax.set_title(f"{name}: std {raw[:, k].std():.2f} → {scaled[:, k].std():.2f}", fontsize=9)
axes[0].legend(fontsize=7)
plt.show()
plt.close(fig)
for name, d in (("weights (1, 1, 1, 1)", raw), ("weights (10, 10, 5, 5)", scaled)):
    print(f"{name}: {np.mean(np.abs(d) < beta):.0%} of target values in the quadratic zone |d| < 1/9")
assert np.mean(np.abs(raw) < beta) > 2 * np.mean(np.abs(scaled) < beta)

# %% [markdown]
# **Checks.** Decoding an encoding gives the box back (to rounding), for both weightings; and
# both directions equal torchvision's `BoxCoder` in float64. The clamp holds a wild $d_w$ at a
# 62.5-fold stretch.

# %%
for weights in ((1, 1, 1, 1), (10, 10, 5, 5)):
    coder = BoxCoder(weights)
    back = coder.decode(coder.encode(objects, proposals), proposals)[:, 0]
    err = np.abs(back - objects).max() / np.abs(objects).max()
    print(f"weights {weights}: decode(encode(b)) = b to a relative {err:.1e}")
    assert err < 1e-13
wild = BoxCoder((1, 1, 1, 1)).decode(np.array([[0.0, 0.0, 50.0, 0.0]]), np.array([[0.0, 0.0, 10.0, 10.0]]))
assert np.isclose(wild[0, 0, 2] - wild[0, 0, 0], 10 * 1000 / 16)
if torch is not None:
    for weights in ((1, 1, 1, 1), (10, 10, 5, 5)):
        theirs = det_utils.BoxCoder(weights)
        t_codes = theirs.encode([torch.tensor(objects)], [torch.tensor(proposals)])[0].numpy()
        deltas = rng.normal(0, 1, (len(proposals), 8))                      # two "classes" per box
        t_boxes = theirs.decode(torch.tensor(deltas), [torch.tensor(proposals)]).numpy()
        np.testing.assert_allclose(BoxCoder(weights).encode(objects, proposals), t_codes, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(BoxCoder(weights).decode(deltas, proposals), t_boxes, rtol=1e-12, atol=1e-9)
    print("BoxCoder.encode / decode = torchvision's det_utils.BoxCoder")

# %% [markdown]
# ## 5. Non-maximum suppression
#
# A trained detector fires many times on one object. Greedy NMS keeps the highest-scoring box,
# drops every remaining box that overlaps it by IoU > threshold, and repeats with the next box
# still standing. Here is the readable twin of the Numba kernel (`kernels/nms.py`):

# %%
print(inspect.getsource(nms_kernels.nms_twin))

# %%
noisy = tm.ops.clip_boxes_to_image(jitter(gt, 15, 0.1, rng), image.shape[1:])
scores = box_iou(gt, noisy).max(axis=0) + rng.normal(0, 0.05, len(noisy))   # better boxes score higher
keep = nms(noisy, scores, 0.5)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
V.draw_boxes(image, noisy, ax=axes[0], title=f"before NMS: {len(noisy)} boxes")
V.draw_boxes(image, noisy[keep], ax=axes[1], title=f"after NMS at IoU 0.5: {len(keep)} boxes")
plt.show()
plt.close(fig)
kept_iou = box_iou(noisy[keep], noisy[keep])
assert (kept_iou[~np.eye(len(keep), dtype=bool)] <= 0.5).all()     # no two survivors overlap by more
assert np.all(np.diff(scores[keep]) <= 0)                          # highest score first

# %% [markdown]
# **Check.** The same indices, in the same order, as `torchvision.ops.nms` and `batched_nms`
# (where boxes of different categories never suppress each other).

# %%
if torch is not None:
    for threshold in (0.3, 0.5, 0.7):
        expected = torchvision.ops.nms(torch.tensor(noisy), torch.tensor(scores), threshold).numpy()
        np.testing.assert_array_equal(nms(noisy, scores, threshold), expected)
    classes = rng.integers(0, 3, len(noisy))
    expected = torchvision.ops.batched_nms(torch.tensor(noisy), torch.tensor(scores), torch.tensor(classes), 0.5)
    np.testing.assert_array_equal(tm.ops.batched_nms(noisy, scores, classes, 0.5), expected.numpy())
    print("nms, batched_nms = torchvision.ops")

# %% [markdown]
# ## Exercises
#
# ### Exercise 1 — IoU by hand
#
# Write `my_box_iou(boxes1, boxes2)` returning the (N, M) IoU matrix, without loops. The check
# compares it with IoUs counted pixel by pixel on integer boxes (each box painted on a grid), an
# answer that shares no code with yours. Mind boxes that do not overlap at all.

# %%
@exercise
def check_box_iou(my_box_iou):
    r = np.random.default_rng(11)
    corners = r.integers(0, 30, (12, 2, 2))
    boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1) + 1], axis=1).astype(np.float64)
    ys, xs = np.mgrid[0:31, 0:31] + 0.5                                 # pixel centres
    painted = np.array([(xs > x1) & (xs < x2) & (ys > y1) & (ys < y2) for x1, y1, x2, y2 in boxes])
    inter = np.einsum("ihw,jhw->ij", painted.astype(float), painted.astype(float))
    union = painted.sum(axis=(1, 2))[:, None] + painted.sum(axis=(1, 2))[None, :] - inter
    mine = np.asarray(my_box_iou(boxes[:5], boxes))
    assert mine.shape == (5, 12), f"expected shape (5, 12), one row per box of boxes1, got {mine.shape}"
    wrong = ~np.isclose(mine, (inter / union)[:5], rtol=1e-12, atol=1e-12)
    assert not wrong.any(), (f"{wrong.sum()} pairs differ from the pixel count, e.g. boxes {boxes[np.argwhere(wrong)[0][0]]} "
                             f"and {boxes[np.argwhere(wrong)[0][1]]}: is an empty intersection counted as 0?")


def my_box_iou(boxes1, boxes2):
    raise NotImplementedError   # your code


check_box_iou(my_box_iou)

# %% [solution]
def solution_box_iou(boxes1, boxes2):
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    wh = np.maximum(np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
                    - np.maximum(boxes1[:, None, :2], boxes2[None, :, :2]), 0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter)


def unclamped_box_iou(boxes1, boxes2):   # forgets max(0, ·): two negative sides multiply to a positive "overlap"
    wh = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:]) - np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    inter = wh[..., 0] * wh[..., 1]
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    return inter / (area1[:, None] + area2[None, :] - inter)


assert check_box_iou(solution_box_iou)
assert rejects(check_box_iou, unclamped_box_iou)

# %% [markdown]
# ### Exercise 2 — decode
#
# Write `my_decode(deltas, boxes, weights)`: deltas (N, 4) relative to boxes (N, 4) → boxes
# (N, 4), inverting the formulas of section 4 (clamp $d_w, d_h$ at $\log(1000/16)$ after
# dividing by the weights). The check decodes the package's encoding back to the original boxes,
# for both weightings, and compares wild deltas with the package's tested `decode`.

# %%
@exercise
def check_decode(my_decode):
    r = np.random.default_rng(12)
    targets = np.concatenate([(xy := r.uniform(0, 100, (50, 2))), xy + r.uniform(5, 60, (50, 2))], axis=1)
    refs = jitter(targets, 1, 0.2, r)
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        back = np.asarray(my_decode(BoxCoder(weights).encode(targets, refs), refs, weights))
        assert back.shape == targets.shape, f"expected shape {targets.shape}, got {back.shape}"
        assert np.allclose(back, targets, rtol=1e-12, atol=1e-9), f"decode(encode(b)) != b with weights {weights}"
        wild = r.normal(0, 8, (50, 4))
        assert np.allclose(my_decode(wild, refs, weights), BoxCoder(weights).decode(wild, refs)[:, 0], rtol=1e-12), \
            f"large deltas decode differently from the package (weights {weights}): is dw/dh clamped after dividing?"


def my_decode(deltas, boxes, weights):
    raise NotImplementedError   # your code


check_decode(my_decode)

# %% [solution]
def solution_decode(deltas, boxes, weights, clip=np.log(1000 / 16)):
    wx, wy, ww, wh = weights
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h
    px, py = cx + deltas[:, 0] / wx * w, cy + deltas[:, 1] / wy * h
    pw = w * np.exp(np.minimum(deltas[:, 2] / ww, clip))
    ph = h * np.exp(np.minimum(deltas[:, 3] / wh, clip))
    return np.stack([px - pw / 2, py - ph / 2, px + pw / 2, py + ph / 2], axis=1)


assert check_decode(solution_decode)
assert rejects(check_decode, lambda deltas, boxes, weights: solution_decode(deltas, boxes, (1, 1, 1, 1)))

# %% [markdown]
# ### Exercise 3 — greedy NMS
#
# Write `my_nms(boxes, scores, threshold)` returning the kept indices, highest score first. A
# box is suppressed only by a box that was **kept**: a box removed earlier cannot remove
# others. The check compares with `torchvision.ops.nms` (or, without torch, the package's
# `nms`, which the tests hold equal to it) on clusters of overlapping boxes.

# %%
@exercise
def check_nms(my_nms):
    r = np.random.default_rng(13)
    centres = r.uniform(20, 80, (6, 2))
    boxes = np.concatenate([centres - 10, centres + 10], axis=1)
    boxes = jitter(boxes, 12, 0.2, r)
    scores = r.uniform(0, 1, len(boxes))
    for threshold in (0.3, 0.5, 0.7):
        if torch is not None:
            expected = torchvision.ops.nms(torch.tensor(boxes), torch.tensor(scores), threshold).numpy()
        else:
            expected = nms(boxes, scores, threshold)
        mine = np.asarray(my_nms(boxes, scores, threshold))
        assert mine.tolist() == expected.tolist(), (f"threshold {threshold}: kept {len(mine)} boxes, expected "
                                                    f"{len(expected)} (first difference at position "
                                                    f"{next((i for i, (u, v) in enumerate(zip(mine, expected)) if u != v), min(len(mine), len(expected)))})")


def my_nms(boxes, scores, threshold):
    raise NotImplementedError   # your code


check_nms(my_nms)

# %% [solution]
def solution_nms(boxes, scores, threshold):
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= solution_box_iou(boxes[i:i + 1], boxes)[0] > threshold
    return np.array(keep, dtype=np.int64)


def every_higher_box_suppresses(boxes, scores, threshold):   # also lets removed boxes remove others
    order = np.argsort(-scores, kind="stable")
    iou = solution_box_iou(boxes[order], boxes[order])
    dropped = (np.triu(iou, k=1) > threshold).any(axis=0)
    return order[~dropped]


assert check_nms(solution_nms)
assert rejects(check_nms, every_higher_box_suppresses)

# %% [markdown]
# ## Questions to answer in words
#
# Answer each in a few sentences before opening the answer.
#
# **Question 1.** Why are boxes regressed as (dx, dy, log dw, log dh) relative to the anchor or proposal, rather than as raw coordinates?
#
# <details><summary>Answer</summary>
#
# Relative offsets make the target independent of the box's size and position: a box 10% too wide needs the same delta whether it is 20 or 400 pixels wide, so one regressor serves all scales. The log makes the width ratio symmetric (twice as wide and half as wide are ±log 2) and keeps the decoded width positive; the weights (10, 10, 5, 5) scale the deltas to about unit variance.
#
# </details>
