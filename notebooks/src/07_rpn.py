# %% [markdown]
# # Chapter 7 — The region proposal network
#
# The RPN turns the feature pyramid into a few hundred candidate boxes, the **proposals**, that
# the box head will classify. At every anchor (chapter 6) a small convolutional head predicts
#
# * an **objectness** logit: is there an object at this anchor?
# * four **deltas**: how to move the anchor onto it (the box coder of chapter 5, weights 1).
#
# The decoded boxes are then filtered: the best few per level by objectness, clipped to the
# image, tiny ones dropped, NMS at 0.7 per level, the best of the image kept. In training, the
# anchors labelled by the matcher are sampled and scored with two losses. This chapter draws
# each step, checks the two losses against finite differences, and checks the proposals against
# torchvision's in float64. It mirrors `tinymaskrcnn/models/rpn.py`.

# %%
import inspect

import matplotlib.pyplot as plt
import numpy as np

import tinymaskrcnn as tm
from tinymaskrcnn import visualize as V
from tinymaskrcnn.chapters import figures_detector as figures
from tinymaskrcnn.ops.boxes import box_iou
from tinymaskrcnn.chapters import exercise, quick, reference, rejects, scratch
from tinymaskrcnn.data.shapes import scene
from tinymaskrcnn.core.gradcheck import gradcheck, rel_error
from tinymaskrcnn.models.rpn import RegionProposalNetwork, RPNHead, flatten_head_outputs
from tinymaskrcnn.functional.activation import stable_sigmoid

plt.rcParams["figure.dpi"] = 72
torch = reference()


image, target = scene(5)   # a shapes image and its objects' tight boxes
gt = target["boxes"]

# %% [markdown]
# ## 1. The head
#
# One 3×3 convolution with ReLU, shared by all levels, then two 1×1 convolutions: $A$ logits and
# $4A$ deltas per cell ($A$ anchors per cell). Because the same weights serve every level, an
# object is scored the same way whatever its size; the level's anchor size does the scaling.

# %%
print(inspect.getsource(RPNHead.forward))

# %% [markdown]
# The outputs are maps of shape (N, A·C, H, W). To line them up with the anchors — levels
# concatenated, cells in row-major order, a cell's A anchors together — each map is viewed as
# (N, A, C, H, W) and permuted to (N, H, W, A, C):

# %%
print(inspect.getsource(flatten_head_outputs))

# %% [markdown]
# ## 2. A small RPN, trained on one image
#
# The pictures need an RPN that has learnt something. This chapter takes the project's small
# model (ResNet-18 with instance normalisation, a 32-channel FPN; anchors of three sizes a level,
# $s \cdot 2^{k/3}$ for $s$ = 16…256, and three ratios: nine per cell) with **random** weights, keeps its backbone frozen, and trains only the RPN head, on this
# one image, for a few steps. That is not a detector (it has seen one image), but it is
# exactly the RPN's training step: label the anchors, sample 256 of them, two losses, backward.
#
# The loss, with $S$ the sampled anchors (at most half positive), $P \subset S$ the positives,
# $o_i$ the logits, $y_i \in \{0, 1\}$ the labels, $d_i$ the predicted and $t_i$ the target deltas:
#
# $$L_{obj} = \frac{1}{|S|}\sum_{i \in S} \mathrm{BCE}(o_i, y_i),\qquad
# L_{box} = \frac{1}{|S|}\sum_{i \in P}\sum_{k=1}^{4} \mathrm{smooth}_{L1}^{\beta}(d_{ik} - t_{ik}),\quad \beta = \tfrac{1}{9}.$$
#
# Both divide by $|S|$, not $|P|$: an image with few positives gets a smaller box loss.

# %%
print(inspect.getsource(RegionProposalNetwork.compute_loss))

# %%
tm.manual_seed(0)
model = tm.models.maskrcnn_resnet18_fpn(num_classes=4, fpn_channels=32, norm="instance", min_size=128, max_size=192)
model.eval()
rpn = model.rpn
with tm.no_grad():
    batch, _ = model.transform([image])
    maps = [tm.Tensor(f.data) for f in model.backbone(batch.tensors).values()]   # constants: frozen backbone


def rpn_outputs():
    """The RPN's intermediates on the image (eval mode: 300 boxes per level before NMS, 100 after)."""
    intermediates = {}
    with tm.no_grad():
        rpn(batch, dict(zip("01234", maps)), intermediates=intermediates)
    return intermediates


untrained = rpn_outputs()

anchors = rpn.anchor_generator(batch, maps)
labels, matched_gt = rpn.assign_targets_to_anchors(anchors, [{"boxes": gt}])
targets = [rpn.box_coder.encode(m, a) for m, a in zip(matched_gt, anchors)]
print(f"{len(anchors[0])} anchors: {int(np.sum(labels[0] == 1))} positive, {int(np.sum(labels[0] == 0))} negative")
optimizer = tm.optim.AdamW(list(rpn.head.parameters()), lr=1e-2, weight_decay=0.0)
rpn.train()
history = []
for step in range(quick(25, 150)):
    objectness, box_deltas, _ = flatten_head_outputs(*rpn.head(maps))
    loss_objectness, loss_box, _ = rpn.compute_loss(objectness, box_deltas, labels, targets)
    optimizer.zero_grad()
    (loss_objectness + loss_box).backward()
    optimizer.step()
    history.append((loss_objectness.item(), loss_box.item()))
rpn.eval()
history = np.array(history)
fig, ax = plt.subplots(figsize=(6, 2.6), layout="constrained")
ax.semilogy(history[:, 0], label="objectness (BCE)")
ax.semilogy(history[:, 1], label="box (smooth L1)")
ax.set_xlabel("step")
ax.legend(fontsize=8)
plt.show()
plt.close(fig)
assert history[-1, 0] < history[0, 0] / 5

# %% [markdown]
# ## 3. What the RPN sees: objectness per level
#
# `model(images, intermediates={})` hands back every stage's output. Below, each level's
# objectness probability, the highest of the cell's A anchors. Each object lights up the level
# whose anchor sizes fit it: P3 (anchors 32–51 px) for the ~38 px shapes, P4 (64–102 px) for the
# ~60 px ones; P2's anchors are too small for anything here and P5–P6's too large, so they stay
# dark. The bright cell is the one whose anchors are centred nearest the object's centre (an
# anchor sits on its cell's top-left corner, chapter 6). The weaker spots elsewhere are what an
# RPN that has seen one image for a few steps still gets wrong.

# %%
inter = {}
with tm.no_grad():
    model([image], intermediates=inter)
print(sorted(inter))
objectness = inter["objectness"][0]
fig, axes = plt.subplots(2, 3, figsize=(10, 4.6), layout="constrained")
figures.draw_box_groups(image, {"objects": gt}, ax=axes[0, 0], title="the image")
start = 0
for level, (count, ax) in enumerate(zip(inter["num_anchors_per_level"], axes.flat[1:])):
    h, w = inter["features"][str(level) if level < 4 else "pool"].shape[-2:]
    probs = stable_sigmoid(objectness[start:start + count]).reshape(h, w, -1).max(axis=2)
    figures.draw_matrix(probs, ax=ax, vmin=0, vmax=1, colorbar=level == 4,
                        title=f"P{level + 2}: {h}×{w} cells, max {probs.max():.2f}")
    start += count
fig.suptitle(f"objectness (max over the 3 anchors of a cell) of the RPN head trained {len(history)} steps on this image",
             fontsize=9)
plt.show()
plt.close(fig)

# %% [markdown]
# ## 4. From anchors to proposals
#
# Every anchor is decoded with its deltas; then the boxes are filtered: on each level the
# `pre_nms_top_n` best by objectness (so the many small anchors of P2 cannot crowd out the
# others), clipped to the image, boxes under 0.001 px dropped, NMS at 0.7 within each level, and
# the `post_nms_top_n` best of the image kept:

# %%
print(inspect.getsource(RegionProposalNetwork.filter_proposals))

# %% [markdown]
# The ten anchors with the highest objectness (left) crowd onto the same objects; their decoded
# boxes (middle) fit the objects better than the anchors did; NMS (right) then keeps one box per
# place, so the top ten proposals spread over the image.

# %%
with tm.no_grad():
    _, box_deltas, _ = flatten_head_outputs(*rpn.head(maps))
top = np.argsort(-objectness, kind="stable")[:10]
refined = rpn.box_coder.decode(box_deltas.data[top], inter["anchors"][0][top])[:, 0]
proposals = inter["proposals"][0]
fig, axes = plt.subplots(1, 3, figsize=(10, 2.6), layout="constrained")
V.draw_boxes(image, inter["anchors"][0][top], ax=axes[0], title="top 10 anchors", colour="#d62728", linewidth=1.2)
V.draw_boxes(image, refined, ax=axes[1], title="their decoded boxes", colour="#d62728", linewidth=1.2)
V.draw_boxes(image, proposals[:10], ax=axes[2], title="top 10 proposals after NMS", colour="#d62728", linewidth=1.2)
fig.suptitle(f"the RPN head trained {len(history)} steps on this image", fontsize=9)
plt.show()
plt.close(fig)
best_anchor_iou = box_iou(gt, inter["anchors"][0][top]).max(axis=0)
best_refined_iou = box_iou(gt, refined).max(axis=0)
print(f"mean IoU with the nearest object: anchors {best_anchor_iou.mean():.2f} → decoded {best_refined_iou.mean():.2f}")

# %% [markdown]
# **Recall against the number of proposals.** The fraction of objects that some proposal among
# the first $k$ overlaps by IoU ≥ 0.5 (or 0.7). The box head can only find objects the RPN
# proposed, so this curve bounds the detector. Untrained, the head ranks boxes almost at
# random; after its few steps it finds every object of this image within the first few
# proposals (on the image it trained on — a real RPN is judged on unseen images).

# %%
def recall_curve(proposals, objects, threshold):
    """Recall after each proposal: fraction of objects matched by one of the first k proposals."""
    best_so_far = np.maximum.accumulate(box_iou(objects, proposals), axis=1)
    return (best_so_far >= threshold).mean(axis=0)


fig, ax = plt.subplots(figsize=(6, 3), layout="constrained")
for name, outputs in (("untrained", untrained), ("trained", inter)):
    for threshold, style in ((0.5, "-"), (0.7, "--")):
        curve = recall_curve(outputs["proposals"][0], gt, threshold)
        ax.semilogx(np.arange(1, len(curve) + 1), curve, style, label=f"{name}, IoU ≥ {threshold}")
ax.set_xlabel("number of proposals k")
ax.set_ylabel("recall")
ax.set_title(f"top-k proposals' recall: RPN head untrained / trained {len(history)} steps on this image", fontsize=9)
ax.legend(fontsize=8)
plt.show()
plt.close(fig)
assert recall_curve(proposals, gt, 0.5)[-1] == 1.0

# %% [markdown]
# ## 5. The losses' gradients
#
# The loss is written with the package's differentiable ops; the tape gives its gradient with
# respect to every logit and delta. Check both losses against central differences in float64,
# with random logits and deltas on a few dozen of the image's anchors, its positives among them
# (the sampler is re-seeded at every evaluation, so it draws the same anchors each time).

# %%
rng = np.random.default_rng(0)
subset = np.concatenate([np.flatnonzero(labels[0] == 1), rng.choice(np.flatnonzero(labels[0] != 1), 36, replace=False)])
sub_labels = [labels[0][subset].astype(np.float64)]
sub_targets = [targets[0][subset].astype(np.float64)]
small = RegionProposalNetwork(rpn.anchor_generator, rpn.head, batch_size_per_image=16)   # 16 of the 40 sampled
o = tm.Tensor(rng.normal(0, 2, len(subset)), requires_grad=True)
d = tm.Tensor(rng.normal(0, 0.3, (len(subset), 4)), requires_grad=True)
for which, name in ((0, "objectness"), (1, "box regression")):
    def loss(o, d):
        tm.manual_seed(1)
        return small.compute_loss(o, d, sub_labels, sub_targets)[which]
    errors = gradcheck(loss, [o, d])
    print(f"{name} loss: relative error of d/dlogits {errors[0]:.1e}, d/ddeltas {errors[1]:.1e}")
    assert max(errors) < 1e-8

# %% [markdown]
# **Check.** The same two values from `torch.nn.functional` on the same sampled anchors.

# %%
tm.manual_seed(1)
loss_o, loss_b, (pos, neg) = small.compute_loss(o, d, sub_labels, sub_targets)
flat_labels = np.concatenate(sub_labels)          # the batch's anchors in one row, as pos and neg index them
if torch is not None:
    import torch.nn.functional as TF

    sampled = np.concatenate([pos, neg])
    expected_o = TF.binary_cross_entropy_with_logits(torch.tensor(o.data[sampled]), torch.tensor(flat_labels[sampled]))
    expected_b = TF.smooth_l1_loss(torch.tensor(d.data[pos]), torch.tensor(sub_targets[0][pos]), beta=1 / 9,
                                   reduction="sum") / len(sampled)
    assert rel_error(loss_o.data, expected_o.numpy()) < 1e-14 and rel_error(loss_b.data, expected_b.numpy()) < 1e-14
    print(f"objectness {loss_o.item():.6f}, box {loss_b.item():.6f}: = torch")

# %% [markdown]
# ## 6. The proposals equal torchvision's
#
# torchvision's Mask R-CNN with a ResNet-18 FPN and random weights, every frozen BatchNorm
# calibrated to the statistics of its input (`tinymaskrcnn.chapters.reference_models.calibrate_frozen_batchnorm`,
# so that activations stay of order one and the comparison means something), is saved with
# `torch.save` and loaded into ours by name, without torch. In float64 the RPN's proposals
# agree to rounding; so do the two training losses when both sample every anchor (no
# randomness).

# %%
if torch is not None:
    from torchvision.models.detection import MaskRCNN as TVMaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone as tv_resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d

    from tinymaskrcnn.chapters.reference_models import calibrate_frozen_batchnorm, save_state_dict

    sizes, ratios = ((16,), (32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 5
    settings = dict(num_classes=4, min_size=128, max_size=192, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
                    rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100, rpn_batch_size_per_image=10 ** 7)
    torch.manual_seed(0)
    theirs = TVMaskRCNN(tv_resnet_fpn_backbone(backbone_name="resnet18", weights=None, norm_layer=FrozenBatchNorm2d),
                        rpn_anchor_generator=TVAnchorGenerator(sizes, ratios), **settings)
    calibrate_frozen_batchnorm(theirs.backbone, torch.rand((1, 3, 128, 192), generator=torch.Generator().manual_seed(1)) * 4 - 2)
    theirs = theirs.double().eval()
    ours = tm.models.MaskRCNN(tm.models.resnet_fpn_backbone("resnet18"),
                              rpn_anchor_generator=tm.models.AnchorGenerator(sizes, ratios), **settings)
    tm.weights.load_torchvision(ours, save_state_dict(theirs, scratch()))
    ours.to(dtype=np.float64).eval()

    picture = image.astype(np.float64)
    with torch.no_grad():
        their_batch, their_targets = theirs.transform([torch.tensor(picture)], [{"boxes": torch.tensor(gt, dtype=torch.float64)}])
        their_maps = theirs.backbone(their_batch.tensors)
        their_boxes, _ = theirs.rpn(their_batch, their_maps)
    with tm.no_grad():
        our_batch, our_targets = ours.transform([picture], [{"boxes": gt.astype(np.float64)}])
        our_maps = ours.backbone(our_batch.tensors)
        inter64 = {}
        our_boxes, _ = ours.rpn(our_batch, our_maps, intermediates=inter64)
    err = rel_error(our_boxes[0], their_boxes[0].numpy())
    print(f"{len(our_boxes[0])} proposals, relative error against torchvision {err:.1e}")
    assert our_boxes[0].shape == tuple(their_boxes[0].shape) and err < 1e-9

    # training: every anchor sampled; torchvision makes anchor labels float32 even in float64,
    # so cast them back to float64 for an exact comparison (the values 0, 1, -1 are unchanged)
    assign = theirs.rpn.assign_targets_to_anchors

    def assign_float64(anchors, targets):
        labels, matched = assign(anchors, targets)
        return [l.double() for l in labels], matched

    theirs.rpn.assign_targets_to_anchors = assign_float64
    theirs.rpn.train()
    ours.rpn.train()
    with torch.no_grad():
        _, their_losses = theirs.rpn(their_batch, their_maps, their_targets)
    with tm.no_grad():
        _, our_losses = ours.rpn(our_batch, our_maps, our_targets)
    for key, value in their_losses.items():
        print(f"{key}: ours {our_losses[key].item():.12f}, torchvision {value.item():.12f}")
        assert rel_error(our_losses[key].data, value.numpy()) < 1e-9

# %% [markdown]
# ## Exercises
#
# ### Exercise 1 — line the head's outputs up with the anchors
#
# Write `my_flatten(level_map, c)`: one level's (N, A·C, H, W) map → (N, H·W·A, C) rows in anchor
# order (cell by cell in row-major order, the A anchors of a cell together). The check compares
# with torchvision's `permute_and_flatten` (or, without torch, with the package's
# `flatten_head_outputs`, which the model tests hold equal to torchvision).

# %%
@exercise
def check_flatten(my_flatten):
    r = np.random.default_rng(3)
    for n, a, c, h, w in ((2, 3, 4, 5, 7), (1, 9, 1, 4, 3)):
        level = r.standard_normal((n, a * c, h, w))
        if torch is not None:
            from torchvision.models.detection.rpn import permute_and_flatten
            expected = permute_and_flatten(torch.tensor(level), n, a, c, h, w).numpy()
        else:   # the package flattens logits (C = 1) and deltas (C = 4)
            logits = level if c == 1 else np.zeros((n, a, h, w))
            deltas = level if c == 4 else np.zeros((n, 4 * a, h, w))
            flat = flatten_head_outputs([tm.Tensor(logits)], [tm.Tensor(deltas)])[0 if c == 1 else 1]
            expected = flat.data.reshape(n, -1, c)
        mine = np.asarray(my_flatten(level, c))
        assert mine.shape == expected.shape, f"expected shape {expected.shape}, got {mine.shape}"
        assert np.array_equal(mine, expected), f"the rows are in another order (A={a}, C={c}): which axis is A, which C?"


def my_flatten(level_map, c):
    raise NotImplementedError   # your code


check_flatten(my_flatten)

# %% [solution]
def solution_flatten(level_map, c):
    n, ac, h, w = level_map.shape
    return level_map.reshape(n, ac // c, c, h, w).transpose(0, 3, 4, 1, 2).reshape(n, -1, c)


def channel_major(level_map, c):   # reads the channels as (C, A) instead of (A, C)
    n, ac, h, w = level_map.shape
    return level_map.reshape(n, c, ac // c, h, w).transpose(0, 3, 4, 2, 1).reshape(n, -1, c)


assert check_flatten(solution_flatten)
assert rejects(check_flatten, channel_major)

# %% [markdown]
# ### Exercise 2 — the objectness loss, stable
#
# Write `my_bce(logits, labels)`: the mean binary cross-entropy $-[y\log\sigma(o) + (1-y)\log(1-\sigma(o))]$
# from logits, without overflow for logits of any size ($e^{800}$ overflows float64, and
# $\sigma(40)$ is exactly 1 in it, so $\log(1 - \sigma)$ is $-\infty$). Hint: $-\log\sigma(o) = \max(-o, 0) + \log(1 + e^{-|o|})$. The check compares
# with `torch.nn.functional.binary_cross_entropy_with_logits` (or, without torch, with the
# package's, which the tests hold equal to torch's).

# %%
@exercise
def check_bce(my_bce):
    r = np.random.default_rng(4)
    logits = np.concatenate([r.normal(0, 3, 50), [800.0, -800.0, 40.0, -40.0]])
    labels = np.concatenate([r.integers(0, 2, 50), [0, 1, 1, 0]]).astype(np.float64)
    with np.errstate(all="ignore"):
        mine = float(my_bce(logits, labels))
    assert np.isfinite(mine), "the loss overflowed: a logit of ±800 must not reach exp() with a large argument"
    if torch is not None:
        import torch.nn.functional as TF
        expected = TF.binary_cross_entropy_with_logits(torch.tensor(logits), torch.tensor(labels)).item()
    else:
        expected = tm.functional.binary_cross_entropy_with_logits(tm.Tensor(logits), tm.Tensor(labels)).item()
    assert abs(mine - expected) <= 1e-12 * abs(expected), f"got {mine:.15g}, expected {expected:.15g}"


def my_bce(logits, labels):
    raise NotImplementedError   # your code


check_bce(my_bce)

# %% [solution]
def solution_bce(logits, labels):
    return np.mean(np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits))))


def naive_bce(logits, labels):   # overflows: sigmoid(800) is 1 exactly, log(1 - 1) = -inf
    p = 1 / (1 + np.exp(-logits))
    return -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))


assert check_bce(solution_bce)
assert rejects(check_bce, naive_bce)

# %% [markdown]
# ## Questions to answer in words
#
# Answer each in a few sentences before opening the answer.
#
# **Question 1.** Why does the RPN compute its objectness loss on 256 sampled anchors instead of all of them?
#
# <details><summary>Answer</summary>
#
# On an image with a few objects, all but a handful of tens of thousands of anchors are negatives: their loss would drown the positives' and the RPN would learn to say 'nothing' everywhere. Sampling at most half positives balances the two, and keeps the loss cheap.
#
# </details>
#
# **Question 2.** Why are the RPN's scores not the final detection scores?
#
# <details><summary>Answer</summary>
#
# The RPN scores class-agnostic objectness from the anchor's coarse features at one level; its proposals are candidates. The box head re-scores each proposal per class from RoIAlign features pooled on the proposal itself, which is much more precise, and refines its box.
#
# </details>
