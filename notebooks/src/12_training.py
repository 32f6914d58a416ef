# %% [markdown]
# # Chapter 12 — Training and its diagnostics
#
# Training Mask R-CNN minimises the sum of five losses. This chapter explains what each one
# measures, what its value should be before any learning (a free bug detector), watches their
# total fall as the model overfits a single image (the first thing to try when a detector will not
# learn), tabulates every layer's weights, gradients and the update the optimizer really made to
# spot dead or runaway layers, holds one optimizer step equal to torch's, and draws the five
# losses of the main job's real run. The loop in `tinymaskrcnn/engine/loop.py` does the same
# at scale, with data loading, schedules, checkpoints and evaluation.

# %%
import inspect
import json
import math

import matplotlib.pyplot as plt
import numpy as np

import tinymaskrcnn as tm
import tinymaskrcnn.functional as F
from tinymaskrcnn import engine, optim, visualize
from tinymaskrcnn.chapters import exercise, quick, reference, rejects, scratch
from tinymaskrcnn.chapters.trained import MAIN_JOB, run_summary, shown_run
from tinymaskrcnn.data import coco as coco_data
from tinymaskrcnn.data.shapes import make_shapes_dataset

plt.rcParams["figure.dpi"] = 72
work = scratch()  # removed when the chapter ends

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
# A model that cannot bring the total loss on **one** image well down has a bug (a wrong target, a
# detached gradient, a learning rate off by orders of magnitude). This is the loop of the engine
# with nothing else: forward in training mode, sum the losses, backward, clip the gradient norm,
# AdamW step. Do not expect every loss to fall from the first step, nor to reach zero in a few
# dozen: the objectness loss falls fastest, while `loss_box_reg` often *rises* first — as the RPN
# learns, its proposals change, and so do the RoIs the box head is asked to regress (the stored
# quick run: total 3.2 → 0.85 in 30 steps, its box loss 0.36 → 1.3 before falling back). The cell
# prints which losses rose above their start and asserts the total at least halved.

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
ax = visualize.plot_losses(records, log_scale=True, smoothing=0.0)
ax.set_title(f"a model from random weights overfitting one image: {len(records)} AdamW steps", fontsize=9)
plt.show()
start, end = sum(v for k, v in records[0].items() if k.startswith("loss")), \
    sum(v for k, v in records[-1].items() if k.startswith("loss"))
print(f"total loss {start:.3f} -> {end:.3f} after {len(records)} steps")
for name in first:
    values = [r[name] for r in records]
    print(f"{name:17s} {values[0]:.3f} -> {values[-1]:.3f}" +
          (f"   rose to {max(values):.3f} first" if max(values) > values[0] else ""))
assert end < 0.5 * start

# %% [markdown]
# ## A table of every layer: dead or running away?
#
# After a backward pass every parameter has a gradient. Two failures show up in a table long
# before they show in the loss: a **dead** layer (its gradient is exactly zero: a ReLU that never
# fires, a frozen layer you meant to train, a branch the loss never reaches) and a **runaway**
# one, whose every step changes a sizeable fraction of its weights ($\lVert \Delta w \rVert / \lVert w \rVert$
# of $10^{-1}$ and more; around $10^{-3}$ is the usual healthy figure).
#
# Which $\Delta w$? Under plain SGD it is $\mathrm{lr} \cdot g$, and $\mathrm{lr}\,\lVert g \rVert / \lVert w \rVert$
# is the ratio. **AdamW is not SGD**: it divides each element's running mean gradient by its running
# RMS, $\Delta w_i = \mathrm{lr} \cdot \hat m_i / (\sqrt{\hat v_i} + \epsilon)$, so every element moves by *at most
# about* lr whatever the size of its gradient, and $\mathrm{lr}\,\lVert g \rVert / \lVert w \rVert$ says little about
# the step it makes. So the table takes one real step and measures $\Delta w$.

# %%
def layer_table(model, optimizer, lr, dead=1e-12, runaway=1e-1):
    """One row per trainable parameter after one real optimizer step: |w|, |grad|, SGD's ratio
    lr·|g|/|w|, the measured |Δw|/|w|, the RMS of Δw per element in units of lr, and a flag."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    before = {name: p.data.copy() for name, p in named}
    grads = {name: None if p.grad is None else p.grad.copy() for name, p in named}
    optimizer.step()
    rows = []
    for name, p in named:
        w = float(np.linalg.norm(before[name]))
        g = 0.0 if grads[name] is None else float(np.linalg.norm(grads[name]))
        step = p.data - before[name]
        measured = float(np.linalg.norm(step)) / max(w, 1e-12)
        per_element = float(np.sqrt(np.mean(step ** 2))) / lr
        flag = "DEAD" if g <= dead else "RUNAWAY" if measured > runaway else ""
        rows.append((name, w, g, lr * g / max(w, 1e-12), measured, per_element, flag))
    return rows


losses = model([image], [target])
optimizer.zero_grad()
sum(losses.values()).backward()
rows = layer_table(model, optimizer, lr=1e-3)
print(f"{'parameter':50s} {'|w|':>8s} {'|grad|':>8s} {'lr|g|/|w|':>9s} {'|Δw|/|w|':>9s} {'rms Δw/lr':>9s}")
for name, w, g, sgd, measured, per_element, flag in rows[:6] + rows[-8:]:
    print(f"{name:50s} {w:8.3f} {g:8.1e} {sgd:9.1e} {measured:9.1e} {per_element:9.2f} {flag}")
print(f"... {len(rows)} parameters, flagged:", [(r[0], r[6]) for r in rows if r[6]] or "none")

sgd_ratio, measured_ratio = np.array([r[3] for r in rows]), np.array([r[4] for r in rows])
fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), layout="constrained")
axes[0].semilogy([max(r[2], 1e-16) for r in rows], ".")
axes[0].set_xlabel("parameter (in model order: backbone, FPN, RPN, box head, mask head)")
axes[0].set_ylabel("|grad|")
axes[0].set_title("gradient norms span many orders of magnitude", fontsize=9)
is_bias = np.array([r[0].endswith("bias") for r in rows])
for chosen, label, colour in ((~is_bias, "weights", 3), (is_bias, "biases", 4)):   # not the classes' colours
    axes[1].loglog(np.maximum(sgd_ratio[chosen], 1e-12), measured_ratio[chosen], ".", color=visualize.PALETTE[colour],
                   label=label)
axes[1].plot([1e-8, 1], [1e-8, 1], color="grey", linewidth=0.8, label="equal")
axes[1].set_xlabel("SGD's ratio lr·|g|/|w|")
axes[1].set_ylabel("AdamW's measured |Δw|/|w|")
axes[1].set_title("one AdamW step: what it did vs what lr·g suggests", fontsize=9)
axes[1].legend(fontsize=7)
plt.show()

per_element = np.array([r[5] for r in rows])
sizes = [p.data.size for p in model.parameters() if p.requires_grad]
grad_rms = np.array([r[2] / np.sqrt(n) for r, n in zip(rows, sizes)])
print(f"per-element |g| RMS spans {grad_rms.min():.1e} .. {grad_rms.max():.1e}; the step's RMS spans "
      f"{per_element.min():.2f} .. {per_element.max():.2f} lr")
assert not any(r[6] == "DEAD" for r in rows)
assert per_element.max() <= 1.5 and grad_rms.max() / grad_rms.min() > 1e3 * per_element.max() / per_element.min()
assert (measured_ratio > 100 * sgd_ratio).any()   # where SGD's ratio would have misread the step by 100x

# %% [markdown]
# Read the measured column, not SGD's. Every element moved by at most about lr (the assert above:
# the step's RMS per element stays under 1.5 lr while the gradients' spans many orders of magnitude),
# so $\lVert \Delta w \rVert / \lVert w \rVert \approx \mathrm{lr} / \mathrm{rms}(w)$: it is largest where the weights are small —
# the zero-initialised biases and the small-initialised predictors (class scores, box deltas and
# mask logits drawn with standard deviations 0.01, 0.001, 0.001, so that they start near 0) — and those lead the table, a few percent a step
# at this lr of 1e-3 (the main job peaks at 5e-4). SGD's ratio would call the mask head's biases
# frozen (about 1e-5) when AdamW moves them by several percent. A flag is a question, not a verdict:
# the same leaders in a backbone's wide convolutions would be.

# %%
leaders = [r[0] for r in sorted(rows, key=lambda r: -r[4])[:5]]
print("largest |Δw|/|w|:", leaders)
assert all(name.endswith("bias") or "predictor" in name for name in leaders)

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
# The main job (`tinymaskrcnn train`) trains this model on 256 shapes images, 1900 iterations,
# 10 to 12 minutes on two cores; its `metrics.jsonl` has a record per iteration. When its run folder
# is there (`tinymaskrcnn/chapters/trained.py` says where the chapters look), its five losses are
# drawn here: unlike the single image above, the losses of a real run are noisy from batch to batch
# and level off above zero (new images every step); the printout compares each loss over the first
# 20 iterations with the last 100, and the cell asserts the total fell. In quick mode, or before
# you have run it, there is nothing to draw.

# %%
run = shown_run()
if run is not None:
    real = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    real = [r for r in real if "loss" in r]
    title = run_summary(run)[2]
    ax = visualize.plot_losses(real, log_scale=True)
    ax.set_title(f"the main job's five losses ({title})", fontsize=9)
    plt.show()
    for name in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"):
        head, tail = np.mean([r[name] for r in real[:20]]), np.mean([r[name] for r in real[-100:]])
        print(f"{name:17s} first 20 iterations {head:.3f}, last 100 {tail:.3f}")
    assert np.mean([r["loss"] for r in real[-100:]]) < np.mean([r["loss"] for r in real[:20]])
else:
    print(f"no trained run to draw (quick mode, or none under runs/): `{MAIN_JOB}` makes one")

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

# %% [markdown]
# ## Questions to answer in words
#
# Answer each in a few sentences before opening the answer.
#
# **Question 1.** On a real data set the total loss levels off (the main job's above at about 0.4) and stays there. A bug?
#
# <details><summary>Answer</summary>
#
# Not by itself: with new images at every step the losses keep a floor (ambiguous boxes, hard masks, noise), unlike the single image overfitted above. The test for a bug is that overfit: if the model cannot bring one image's loss well down, something is wrong; if it can, look at AP on validation data, not at the loss, to decide whether to train longer (chapter 13 sets it beside AP on training images).
#
# </details>
#
# **Question 2.** Why warm the learning rate up instead of starting at its peak?
#
# <details><summary>Answer</summary>
#
# At the start the randomly initialised heads give large gradients and Adam's running second moments rest on a few samples, so the first full-size steps can throw the weights far from where they should go (or make the loss non-finite). A linear ramp over the first iterations lets the statistics settle before the steps reach full size.
#
# </details>
