# %% [markdown]
# # Chapter 9 — The box head
#
# Each proposal, pooled to a 7×7 patch by chapter 8's RoIAlign, now gets a class and a better
# box. This chapter follows one shapes image through the box branch of
# `tinymaskrcnn/models/roi_heads.py`:
#
# 1. **sampling**: match the proposals to the objects, keep a balanced sample of RoIs;
# 2. **the head**: two fully connected layers (`TwoMLPHead`), then `FastRCNNPredictor`: one score
#    per class and four box deltas per class;
# 3. **the losses**: cross-entropy on every sampled RoI, smooth L1 on the positives' deltas;
# 4. **inference**: softmax, one decoded box per class, per-class NMS.
#
# It answers: where the background lives in `num_classes`, why only positive RoIs train the box
# regression, and how batched NMS keeps classes apart with one call.

# %%
import inspect

import matplotlib.pyplot as plt
import numpy as np

import tinymaskrcnn as tm
import tinymaskrcnn.functional as F
from tinymaskrcnn import visualize as V
from tinymaskrcnn.chapters import figures_detector as figures
from tinymaskrcnn.ops.boxes import box_iou
from tinymaskrcnn.chapters import exercise, quick, reference, rejects
from tinymaskrcnn.data.shapes import SHAPES, scene
from tinymaskrcnn.core.gradcheck import gradcheck
from tinymaskrcnn.models.roi_heads import FastRCNNPredictor, RoIHeads, fastrcnn_loss

plt.rcParams["figure.dpi"] = 72
torch = reference()
names = ("background",) + SHAPES

# %% [markdown]
# ## One image, one model, and proposals as a trained RPN gives them
#
# A shapes image with its ground truth, and the small model with random weights. A random RPN
# proposes nothing useful, so we stand in for a trained one: 25 jittered copies of each object's
# box and 100 random boxes. `model.roi_heads` is callable on its own (features, proposals, image
# sizes, targets), and hands back what it sampled through `intermediates`.

# %%
image, target = scene(14, 160, 192)
masks, gt_labels, gt_boxes = target["masks"], target["labels"], target["boxes"]

tm.random.manual_seed(0)
model = tm.models.maskrcnn_resnet18_fpn(num_classes=len(names)).train()
heads = model.roi_heads
batch, targets = model.transform([image], [target])   # 160 × 192: the scale stays 1
with tm.no_grad():
    features = model.backbone(batch.tensors)

r = np.random.default_rng(1)
wh = np.tile(gt_boxes[:, 2:] - gt_boxes[:, :2], 2)
jittered = np.concatenate([b + r.normal(0, 0.12, (25, 4)) * s for b, s in zip(gt_boxes, wh)])
corner = r.uniform(0, [192, 160], (100, 2))
random_boxes = np.concatenate([corner, corner + r.uniform(10, 80, (100, 2))], axis=1)
proposals = np.clip(np.concatenate([jittered, random_boxes]), 0, [192, 160, 192, 160]).astype(np.float32)

found = {}
_, losses = heads(features, [proposals], batch.image_sizes, targets, intermediates=found)
rois, labels = found["sampled_rois"][0], found["roi_labels"][0]
matched, reg_targets = found["roi_matched_idxs"][0], found["roi_regression_targets"][0]
print({k: round(float(v.data), 4) for k, v in losses.items()})

# %% [markdown]
# ## Where the background lives
#
# `num_classes` **counts the background**: class 0 is "no object", the shapes are 1..3, so
# `num_classes = 4` (torchvision's COCO model has 91: background, 80 classes and 10 unused ids).
# The predictor has one score per class and four deltas per class, background included; the
# background's deltas exist only to keep the layout simple and never get a gradient.
#
# A useful check at iteration 0: the predictor starts near zero (`init_predictors_small`), so all
# four classes are equally likely and the classification loss is $\log 4 = 1.386$.

# %%
print(inspect.getsource(FastRCNNPredictor))
print("cls_score:", heads.box_predictor.cls_score.weight.shape, " bbox_pred:", heads.box_predictor.bbox_pred.weight.shape)
assert heads.box_predictor.cls_score.weight.shape[0] == 4 and heads.box_predictor.bbox_pred.weight.shape[0] == 16
assert abs(float(losses["loss_classifier"].data) - np.log(4)) < 0.05

# %% [markdown]
# Forgetting the background (`num_classes = 3` for three shapes) gives a model with no score for
# the last class; the loss says so on the first batch:

# %%
try:
    F.cross_entropy(tm.Tensor(np.zeros((4, 3))), gt_labels)
except ValueError as e:
    print("ValueError:", e)

# %% [markdown]
# ## The sampled RoIs
#
# The ground-truth boxes join the proposals; each is matched to the object it overlaps most, a
# positive (that object's class) at IoU ≥ 0.5, background below. Then a balanced sample: at most
# 25 % positives (torchvision: 512 RoIs an image; the small model: 128), so the many easy
# background boxes do not drown the objects.

# %%
print(f"{len(rois)} sampled RoIs: " + ", ".join(f"{names[k]} {(labels == k).sum()}" for k in range(4)))
figures.draw_roi_refinement(image, rois, labels, class_names=names, title="sampled RoIs by label")
plt.show()
plt.close("all")

# %%
iou = box_iou(targets[0]["boxes"], rois).max(axis=0)
assert np.all((labels > 0) == (iou >= 0.5)) and (labels > 0).mean() <= 0.25
assert np.array_equal(labels[labels > 0], gt_labels[matched[labels > 0]])

# %% [markdown]
# ## The two losses
#
# For $N$ sampled RoIs with labels $c_i$ (0 = background), class logits $z_i$ and box deltas
# $t_i^{(k)}$ for each class $k$, and regression targets $v_i$ (the box coder with weights
# (10, 10, 5, 5), chapter 5):
#
# $$L_\text{cls} = \frac1N \sum_i -\log \operatorname{softmax}(z_i)_{c_i}, \qquad
# L_\text{box} = \frac1N \sum_{i:\,c_i > 0} \sum_{j=1}^{4} \operatorname{smooth}_{L_1}\!\big(t_{ij}^{(c_i)} - v_{ij}\big),
# \quad \beta = \tfrac19 .$$
#
# The box loss reads only the deltas of the RoI's **own class**, only for **positive** RoIs, but
# divides by all $N$.

# %%
print(inspect.getsource(fastrcnn_loss))

# %% [markdown]
# Both equal torchvision's `fastrcnn_loss` in float64, and their backward passes agree with
# finite differences:

# %%
g = np.random.default_rng(2)
logits64 = g.standard_normal((len(rois), 4))
deltas64 = g.standard_normal((len(rois), 16))
ours = [float(v.data) for v in fastrcnn_loss(tm.Tensor(logits64), tm.Tensor(deltas64), [labels], [reg_targets.astype(np.float64)])]
if torch is not None:
    from torchvision.models.detection.roi_heads import fastrcnn_loss as torch_fastrcnn_loss
    theirs = [float(v) for v in torch_fastrcnn_loss(torch.from_numpy(logits64), torch.from_numpy(deltas64),
                                                    [torch.from_numpy(labels)],
                                                    [torch.from_numpy(reg_targets.astype(np.float64))])]
    print("ours:", ours, "\ntorchvision:", theirs)
    assert np.allclose(ours, theirs, rtol=1e-13, atol=0)

keep = np.r_[np.flatnonzero(labels > 0)[:6], np.flatnonzero(labels == 0)[:10]]   # a few of each, to keep it quick
z = tm.Tensor(logits64[keep], requires_grad=True)
t = tm.Tensor(deltas64[keep], requires_grad=True)
errors = gradcheck(lambda a, b: sum(fastrcnn_loss(a, b, [labels[keep]], [reg_targets[keep].astype(np.float64)])), [z, t])
print("gradcheck relative errors (logits, deltas):", errors)
assert max(errors) < 1e-8

# %% [markdown]
# ## Why only positive RoIs train the box regression
#
# A background RoI has no object to move to: its "matched" box is merely the object it overlaps
# most (below IoU 0.5) or nothing at all, and teaching the regressor to drag empty boxes toward
# distant objects would only add noise. A positive RoI trains the deltas of its own class only:
# the other classes' regressors learn from RoIs of their own class, and at inference the class
# score picks which box to believe. The gradient of $L_\text{box}$ with respect to the deltas
# shows it: one block of four per positive row, zero elsewhere (rows sorted by label).

# %%
deltas = tm.Tensor(deltas64, requires_grad=True)
fastrcnn_loss(tm.Tensor(logits64), deltas, [labels], [reg_targets.astype(np.float64)])[1].backward()
order = np.argsort(-labels, kind="stable")
fig, ax = plt.subplots(figsize=(6, 3.2), layout="constrained")
fig.colorbar(ax.imshow(np.abs(deltas.grad[order]).T, aspect="auto", cmap="Greys", interpolation="nearest"), ax=ax)
ax.set_yticks([1.5, 5.5, 9.5, 13.5], [f"{n} deltas" for n in names], fontsize=8)
ax.set_xlabel("sampled RoIs, positives first")
ax.set_title("|∂L_box / ∂deltas|", fontsize=9)
plt.show()
plt.close(fig)

# %%
grad = deltas.grad.reshape(len(rois), 4, 4)
own = np.zeros_like(grad, dtype=bool)
own[np.flatnonzero(labels > 0), labels[labels > 0]] = True
assert np.all(grad[~own] == 0) and np.all(grad[own] != 0)      # positives' own class, nothing else
assert np.all(grad[:, 0] == 0)                                 # the background's deltas never learn

# %% [markdown]
# ## From RoIs to refined boxes
#
# To see what the regression learns, we train only the predictor on this image's fixed RoI
# features (the backbone and `TwoMLPHead` stay random) for a few hundred AdamW steps, and decode
# each positive RoI's deltas for its class. Every arrow goes from an RoI to its refined box. This
# is overfitting one image on purpose: it shows what the loss asks for, not what generalises.

# %%
with tm.no_grad():
    box_features = heads.box_head(heads.box_roi_pool(features, [rois], batch.image_sizes))
predictor = heads.box_predictor
optimizer = tm.optim.AdamW(predictor.parameters(), lr=1e-2, weight_decay=0.0)
history = []
for step in range(quick(150, 300)):
    cls_loss, box_loss = fastrcnn_loss(*predictor(box_features), [labels], [reg_targets])
    optimizer.zero_grad()
    (cls_loss + box_loss).backward()
    optimizer.step()
    history.append((float(cls_loss.data), float(box_loss.data)))
with tm.no_grad():
    class_logits, box_regression = predictor(box_features)
decoded = heads.box_coder.decode(box_regression.data, rois).reshape(len(rois), 4, 4)
refined = decoded[np.arange(len(rois)), np.maximum(labels, 0)]

pos = labels > 0
iou_with_object = np.diag(box_iou(rois, targets[0]["boxes"][matched]))
worst = [i for k in range(len(gt_boxes)) for i in np.flatnonzero(pos & (matched == k))[
    np.argsort(iou_with_object[pos & (matched == k)])[:2]]]                     # the 2 worst RoIs of each object
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained", width_ratios=(1.2, 1))
figures.draw_roi_refinement(image, rois[worst], labels[worst], refined[worst], class_names=names, ax=axes[0],
                            title="each object's 2 worst RoIs → refined boxes (dashed)")
axes[1].semilogy(np.array(history))
axes[1].legend(["loss_classifier", "loss_box_reg"], fontsize=8)
axes[1].set_xlabel("step (predictor only)")
plt.show()
plt.close(fig)

# %%
gt_of_roi = targets[0]["boxes"][matched[pos]]
before = np.diag(box_iou(rois[pos], gt_of_roi)).mean()
after = np.diag(box_iou(refined[pos], gt_of_roi)).mean()
print(f"mean IoU with the object: RoIs {before:.3f}, refined boxes {after:.3f}")
assert after > 0.95 > before

# %% [markdown]
# ## Inference, and the offset trick of batched NMS
#
# In evaluation the head scores every proposal: softmax over the classes, one decoded box per
# class (so a proposal can become a circle box *and* a square box), boxes clipped, the
# background's column dropped, scores under 0.05 and tiny boxes removed, then NMS at IoU 0.5
# **per class** — a circle must not suppress the square it overlaps — and the best 100 kept.

# %%
print(inspect.getsource(RoIHeads.postprocess_detections))

# %% [markdown]
# Per-class NMS in one call: shift every box of class $c$ by $c \cdot (\max\text{coordinate} + 1)$.
# Boxes of different classes then lie in disjoint squares and cannot overlap, so one ordinary NMS
# over all boxes suppresses only within a class. Below, two classes of overlapping boxes: solid
# ones survive, dashed ones are suppressed.

# %%
nms_boxes = np.array([[10, 10, 50, 50], [14, 12, 52, 54], [30, 28, 70, 66], [12, 8, 48, 52],
                      [32, 30, 72, 70], [60, 55, 95, 90]], dtype=np.float64)
nms_scores = np.array([0.9, 0.8, 0.7, 0.85, 0.6, 0.5])
nms_classes = np.array([0, 0, 0, 1, 1, 1])
kept = tm.ops.batched_nms(nms_boxes, nms_scores, nms_classes, 0.5)
figures.draw_batched_nms(nms_boxes, nms_scores, nms_classes, kept)
plt.show()
plt.close("all")
print("kept:", kept)

# %%
brute = [i for c in np.unique(nms_classes) for i in np.flatnonzero(nms_classes == c)[
    tm.ops.nms(nms_boxes[nms_classes == c], nms_scores[nms_classes == c], 0.5)]]
assert sorted(kept.tolist()) == sorted(brute) and list(kept) == sorted(brute, key=lambda i: -nms_scores[i])
assert 3 in kept and 0 in kept                               # box 3 overlaps box 0 but is of another class
if torch is not None:
    from torchvision.ops import batched_nms as torch_batched_nms
    assert kept.tolist() == torch_batched_nms(torch.from_numpy(nms_boxes), torch.from_numpy(nms_scores),
                                              torch.from_numpy(nms_classes), 0.5).tolist()

# %% [markdown]
# The detections of the trained-on-this-image predictor, scoring every proposal of the image:

# %%
heads.eval()
with tm.no_grad():
    all_logits, all_deltas = predictor(heads.box_head(heads.box_roi_pool(features, [proposals], batch.image_sizes)))
detections = heads.postprocess_detections(all_logits.data, all_deltas.data, [proposals], batch.image_sizes)[0]
V.draw_detections(image, detections["boxes"], detections["labels"], detections["scores"], class_names=names,
                  score_threshold=0.5, title=f"predictor trained {len(history)} steps on this image (backbone and box "
                                             f"head random): {len(proposals)} proposals → {len(detections['boxes'])} detections")
plt.show()
plt.close("all")
strong = detections["scores"] > 0.5
assert sorted(detections["labels"][strong].tolist()) == sorted(gt_labels.tolist()) and 0 not in detections["labels"]

# %% [markdown]
# ## Exercises
#
# ### Exercise 1 — the box loss
#
# Write `my_box_loss(box_regression, labels, regression_targets)` for arrays: `box_regression`
# (N, 4·num_classes), `labels` (N,) with 0 for background, `regression_targets` (N, 4). Smooth L1
# with β = 1/9, summed over the positives' own-class deltas, divided by N. The check compares with
# torchvision's `fastrcnn_loss` when torch is installed, else with the package's (tested) one.

# %%
@exercise
def check_box_loss(my_box_loss):
    r = np.random.default_rng(3)
    for n, num_classes in ((20, 4), (33, 7)):
        deltas = r.standard_normal((n, 4 * num_classes))
        lab = r.integers(0, num_classes, n)
        tgt = r.standard_normal((n, 4)) * 0.3
        if torch is not None:
            truth = float(torch_fastrcnn_loss(torch.zeros(n, num_classes, dtype=torch.float64), torch.from_numpy(deltas),
                                              [torch.from_numpy(lab)], [torch.from_numpy(tgt)])[1])
        else:
            truth = float(fastrcnn_loss(tm.Tensor(np.zeros((n, num_classes))), tm.Tensor(deltas), [lab], [tgt])[1].data)
        mine = float(my_box_loss(deltas, lab, tgt))
        assert np.isclose(mine, truth, rtol=1e-12), f"{n} RoIs, {num_classes} classes: {mine:.6f}, expected {truth:.6f}"


def my_box_loss(box_regression, labels, regression_targets):
    raise NotImplementedError   # your code


check_box_loss(my_box_loss)

# %% [solution]
def solution_box_loss(box_regression, labels, regression_targets, divide_by_positives=False):
    pos = np.flatnonzero(labels > 0)
    own = box_regression.reshape(len(labels), -1, 4)[pos, labels[pos]]          # (P, 4): own class only
    d = np.abs(own - regression_targets[pos])
    beta = 1 / 9
    total = np.where(d < beta, 0.5 * d ** 2 / beta, d - 0.5 * beta).sum()
    return total / (len(pos) if divide_by_positives else len(labels))


assert check_box_loss(solution_box_loss)
assert rejects(check_box_loss, lambda *a: solution_box_loss(*a, divide_by_positives=True))

# %% [markdown]
# ### Exercise 2 — batched NMS with one call
#
# Write `my_batched_nms(boxes, scores, classes, iou_threshold)` with the offset trick and one
# call of `tm.ops.nms`. The check compares with NMS run class by class.

# %%
@exercise
def check_batched_nms(my_batched_nms):
    r = np.random.default_rng(4)
    for n in (30, 80):
        xy = r.uniform(0, 60, (n, 2))
        b = np.concatenate([xy, xy + r.uniform(10, 40, (n, 2))], axis=1)
        s, c = r.uniform(0, 1, n), r.integers(0, 3, n)
        truth = [i for k in np.unique(c) for i in np.flatnonzero(c == k)[tm.ops.nms(b[c == k], s[c == k], 0.5)]]
        mine = np.asarray(my_batched_nms(b, s, c, 0.5))
        assert sorted(mine.tolist()) == sorted(truth), \
            f"{n} boxes: you keep {len(mine)}, per-class NMS keeps {len(truth)} (do classes still suppress each other?)"
        assert np.all(np.diff(s[mine]) <= 0), "return the kept indices by decreasing score"


def my_batched_nms(boxes, scores, classes, iou_threshold):
    raise NotImplementedError   # your code


check_batched_nms(my_batched_nms)

# %% [solution]
def solution_batched_nms(boxes, scores, classes, iou_threshold):
    offsets = classes * (boxes.max() + 1)
    return tm.ops.nms(boxes + offsets[:, None], scores, iou_threshold)


assert check_batched_nms(solution_batched_nms)
assert rejects(check_batched_nms, lambda b, s, c, t: tm.ops.nms(b, s, t))   # classes suppress each other

# %% [markdown]
# ## Questions to answer in words
#
# Answer each in a few sentences before opening the answer.
#
# **Question 1.** Why does the box predictor output four deltas for every class, when only one class is right?
#
# <details><summary>Answer</summary>
#
# Class-specific regression: each class has its own shape prior (a person's box and a car's box are corrected differently). In training only the true class's deltas enter the loss; in inference each class's box is decoded with its own deltas, then scored and suppressed per class.
#
# </details>
#
# **Question 2.** Why is the background a class of the box head's softmax, rather than a separate objectness output as in the RPN?
#
# <details><summary>Answer</summary>
#
# The box head must be able to reject a RoI, and a softmax over C + 1 classes lets 'nothing here' compete directly with every object class on the same features; the sampled negative RoIs teach it. A separate objectness would need its own threshold and would not stop a confident wrong class.
#
# </details>
