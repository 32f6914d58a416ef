# %% [markdown]
# # Chapter 12 — Training and its diagnostics
#
# Training Mask R-CNN minimises the sum of five losses. This chapter explains what each one
# measures, what its value should be before any learning (a free bug detector), watches all five
# fall as the model overfits a single image (the first thing to try when a detector will not
# learn), tabulates every layer's weights and gradients to spot dead or exploding layers, and
# holds one optimizer step equal to torch's. The loop in `tinymaskrcnn/engine/loop.py` does the same
# at scale, with data loading, schedules, checkpoints and evaluation.

# %%
import inspect
import math
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import tinymaskrcnn as tm
import tinymaskrcnn.functional as F
from tinymaskrcnn import engine, optim, visualize
from tinymaskrcnn.chapters import exercise, quick, reference, rejects
from tinymaskrcnn.data import coco as coco_data
from tinymaskrcnn.data.shapes import make_shapes_dataset

plt.rcParams["figure.dpi"] = 72
work = Path(tempfile.mkdtemp())

# %% [markdown]
# ## The five losses
#
# | loss | stage | measures | over |
# |---|---|---|---|
# | `loss_objectness` | RPN | binary cross-entropy: is there an object in this anchor? | the 256 sampled anchors per image |
# | `loss_rpn_box_reg` | RPN | smooth L1 of the anchor→box deltas | the positive sampled anchors, divided by all sampled |
# | `loss_classifier` | box head | cross-entropy over `num_classes` (background included) | the sampled RoIs |
# | `loss_box_reg` | box head | smooth L1 of the RoI→box deltas, for the true class only | the positive RoIs, divided by all sampled |
# | `loss_mask` | mask head | per-pixel binary cross-entropy of the true class's 28×28 mask | the positive RoIs |
#
# **Before learning**, a well-initialised model predicts nothing in particular: logits near 0. A
# cross-entropy over $C$ classes with equal logits is $\log C$, and a binary cross-entropy at logit 0
# is $\log 2 \approx 0.693$. The box losses have no such value: the predicted deltas start near 0,
# so they start at the size of the regression targets themselves. A first classification or mask
# loss far from these values means a bug in the targets or the initialisation.

# %%
paths = make_shapes_dataset(work / "shapes", num_train=4, num_val=1, image_size=quick((96, 128), (128, 160)), seed=4)
# in quick mode the model sees the small image as it is (min_size 96), so a step costs a third
model_kwargs = {**engine.SHAPES_MODEL_DEFAULTS, **quick({"min_size": 96, "max_size": 128}, {})}
train_set = coco_data.CocoDetection(*paths["train"])
image, target = max((train_set[i] for i in range(len(train_set))), key=lambda item: len(item[1]["labels"]))
tm.random.manual_seed(0)
model = engine.build_model("maskrcnn_resnet18_fpn", train_set.num_classes, model_kwargs)
model.train()
first = {k: float(v.data) for k, v in model([image], [target]).items()}
expected = {"loss_classifier": math.log(train_set.num_classes), "loss_objectness": math.log(2),
            "loss_mask": math.log(2)}
for name, value in first.items():
    print(f"{name:17s} {value:.4f}" + (f"   expected about {expected[name]:.4f}" if name in expected else ""))
for name, value in expected.items():
    assert abs(first[name] - value) < 0.1 * value, name

# %% [markdown]
# ## Overfitting one image
#
# A model that cannot drive the losses on **one** image to near zero has a bug (a wrong target, a
# detached gradient, a learning rate off by orders of magnitude). This is the loop of the engine
# with nothing else: forward in training mode, sum the losses, backward, clip the gradient norm,
# AdamW step.

# %%
print(inspect.getsource(optim.AdamW.step))

# %%
tm.random.manual_seed(0)
model = engine.build_model("maskrcnn_resnet18_fpn", train_set.num_classes, model_kwargs)
model.train()
params = [p for p in model.parameters() if p.requires_grad]
optimizer = optim.AdamW(params, lr=1e-3, weight_decay=0.0)
records = []
for step in range(quick(30, 150)):
    losses = model([image], [target])
    total = sum(losses.values())
    optimizer.zero_grad()
    total.backward()
    norm = optim.clip_grad_norm_(params, 10.0)
    optimizer.step()
    records.append({"iteration": step, **{k: float(v.data) for k, v in losses.items()}, "grad_norm": float(norm)})
visualize.plot_losses(records, log_scale=True, smoothing=0.0)
plt.show()
start, end = sum(v for k, v in records[0].items() if k.startswith("loss")), \
    sum(v for k, v in records[-1].items() if k.startswith("loss"))
print(f"total loss {start:.3f} -> {end:.3f} after {len(records)} steps")
assert end < 0.5 * start

# %% [markdown]
# ## A table of every layer: dead or exploding?
#
# After a backward pass every parameter has a gradient. Two failures show up in a table long
# before they show in the loss: a **dead** layer (its gradient is exactly zero: a ReLU that never
# fires, a frozen layer you meant to train, a branch the loss never reaches) and an **exploding**
# one (an update $\lVert \mathrm{lr} \cdot g \rVert$ that is a sizeable fraction of $\lVert w \rVert$).

# %%
def layer_table(model, lr, dead=1e-12, exploding=1e-2):
    """One row per trainable parameter: norms of weight and gradient, update/weight ratio, a flag."""
    rows = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        w = float(np.linalg.norm(p.data))
        g = 0.0 if p.grad is None else float(np.linalg.norm(p.grad))
        ratio = lr * g / max(w, 1e-12)
        flag = "DEAD" if g <= dead else "EXPLODING" if ratio > exploding else ""
        rows.append((name, w, g, ratio, flag))
    return rows


losses = model([image], [target])
optimizer.zero_grad()
sum(losses.values()).backward()
rows = layer_table(model, lr=1e-3)
print(f"{'parameter':52s} {'|w|':>9s} {'|grad|':>9s} {'lr|g|/|w|':>10s}")
for name, w, g, ratio, flag in rows[:6] + rows[-8:]:
    print(f"{name:52s} {w:9.3f} {g:9.2e} {ratio:10.1e} {flag}")
print(f"... {len(rows)} parameters, flagged:", [(r[0], r[4]) for r in rows if r[4]] or "none")

fig, ax = plt.subplots(figsize=(9, 2.8))
ax.semilogy([max(r[2], 1e-16) for r in rows], ".")
ax.set_xlabel("parameter (in model order: backbone, FPN, RPN, box head, mask head)")
ax.set_ylabel("|grad|")
plt.show()
assert not any(r[4] == "DEAD" for r in rows)

# %% [markdown]
# A flag is a question, not a verdict. Here the box predictor's regression layer is flagged: it
# starts with weights of standard deviation 0.001 (so the first box deltas are near 0 and the
# first box loss is small), and a normal-sized gradient is then a large *relative* update. That is
# expected of the small-initialised output layers (box and mask predictors) for a few hundred
# steps; the same flag on a backbone layer would not be.

# %%
flagged = {r[0] for r in rows if r[4] == "EXPLODING"}
print("flagged:", sorted(flagged))
assert all(name.startswith(("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")) for name in flagged)

# %% [markdown]
# ## One optimizer step, equal to torch's
#
# AdamW keeps two running averages per parameter and decays the weight separately from the
# gradient (decoupled weight decay). The package's step must be torch's, bit for bit in float64
# up to rounding.

# %%
torch = reference()
if torch is not None:
    r = np.random.default_rng(0)
    w0, grads = r.standard_normal((5, 3)), [r.standard_normal((5, 3)) for _ in range(3)]
    ours = tm.nn.Parameter(w0.copy())
    theirs = torch.nn.Parameter(torch.tensor(w0.copy()))
    ours_opt = optim.AdamW([ours], lr=0.01, weight_decay=0.05)
    their_opt = torch.optim.AdamW([theirs], lr=0.01, weight_decay=0.05)
    for g in grads:
        ours.grad = g.copy()
        theirs.grad = torch.tensor(g.copy())
        ours_opt.step()
        their_opt.step()
    err = np.abs(ours.data - theirs.detach().numpy()).max()
    print(f"after {len(grads)} steps the weights differ by {err:.1e}")
    assert err < 1e-14

# %% [markdown]
# ## A longer run
#
# The main job (`tinymaskrcnn train`) trains this model on 256 shapes images for about 14
# minutes; its `metrics.jsonl` has a record per iteration. If you have run it, its curves are
# drawn here; otherwise this draws the overfitting run above again.

# %%
runs = sorted(Path("..").glob("runs/*/metrics.jsonl"))
if runs:
    print("drawing", runs[-1])
    visualize.plot_losses(runs[-1], log_scale=True)
else:
    print("no run under ../runs yet: `tinymaskrcnn train` makes one")
    visualize.plot_losses(records, log_scale=True)
plt.show()

# %% [markdown]
# ## Exercises
#
# ### Exercise 1 — the losses before learning
#
# Write `initial_losses(num_classes)`: the classifier, objectness and mask losses of a model whose
# every logit is 0, as a dict with the keys of the table above. The check computes them with the
# package's loss functions (tested against torch) on zero logits.

# %%
@exercise
def check_initial_losses(initial_losses):
    for c in (2, 4, 91):
        mine = initial_losses(c)
        truth = {"loss_classifier": float(F.cross_entropy(tm.Tensor(np.zeros((7, c))), np.arange(7) % c).data),
                 "loss_objectness": float(F.binary_cross_entropy_with_logits(
                     tm.Tensor(np.zeros(9)), np.array([0, 1] * 4 + [0], dtype=np.float64)).data),
                 "loss_mask": float(F.binary_cross_entropy_with_logits(
                     tm.Tensor(np.zeros((3, 28, 28))), (np.arange(3 * 28 * 28) % 3 == 0).reshape(3, 28, 28)
                     .astype(np.float64)).data)}
        for key, value in truth.items():
            assert abs(mine[key] - value) < 1e-9, f"num_classes={c}: {key} should be {value:.4f}, you say {mine[key]:.4f}"


def my_initial_losses(num_classes):
    raise NotImplementedError   # your code


check_initial_losses(my_initial_losses)

# %% [solution]
def solution_initial_losses(num_classes):
    return {"loss_classifier": math.log(num_classes), "loss_objectness": math.log(2), "loss_mask": math.log(2)}


def forgot_the_background(num_classes):    # counts only the object classes
    return {**solution_initial_losses(num_classes), "loss_classifier": math.log(num_classes - 1)}


assert check_initial_losses(solution_initial_losses)
assert rejects(check_initial_losses, forgot_the_background)

# %% [markdown]
# ### Exercise 2 — clipping the gradient norm
#
# Write `clip(grads, max_norm)`: given a list of gradient arrays, return them scaled so that their
# **joint** L2 norm (over every element of every array) is at most `max_norm`, and unchanged when
# it already is. The check compares with `torch.nn.utils.clip_grad_norm_` (or, without torch, with
# the package's `optim.clip_grad_norm_`).

# %%
@exercise
def check_clip(clip):
    r = np.random.default_rng(6)
    for max_norm in (0.5, 5.0, 1e3):
        grads = [r.standard_normal(s) for s in ((3, 4), (5,), (2, 2, 2))]
        mine = clip([g.copy() for g in grads], max_norm)
        if torch is not None:
            tensors = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
            for t, g in zip(tensors, grads):
                t.grad = torch.tensor(g.copy())
            torch.nn.utils.clip_grad_norm_(tensors, max_norm)
            truth = [t.grad.numpy() for t in tensors]
        else:
            params = [tm.nn.Parameter(np.zeros(g.shape)) for g in grads]
            for p, g in zip(params, grads):
                p.grad = g.copy()
            optim.clip_grad_norm_(params, max_norm)
            truth = [p.grad for p in params]
        for m, t in zip(mine, truth):
            assert np.allclose(m, t, rtol=1e-6, atol=1e-12), f"max_norm={max_norm}: your gradients differ"


def my_clip(grads, max_norm):
    raise NotImplementedError   # your code


check_clip(my_clip)

# %% [solution]
def solution_clip(grads, max_norm):
    total = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
    scale = min(1.0, max_norm / (total + 1e-6))
    return [g * scale for g in grads]


def clip_each_separately(grads, max_norm):   # each array clipped to max_norm on its own
    return [g * min(1.0, max_norm / (np.linalg.norm(g) + 1e-6)) for g in grads]


assert check_clip(solution_clip)
assert rejects(check_clip, clip_each_separately)
