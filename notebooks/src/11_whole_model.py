# %% [markdown]
# # Chapter 11 — The whole model, stage by stage
#
# Chapters 4–10 built the pieces: backbone and FPN, anchors, the RPN, RoIAlign, the box head and
# the mask head. `MaskRCNN.forward` (`tinymaskrcnn/models/mask_rcnn.py`) chains them in a dozen
# lines. This chapter runs one call with `intermediates={}`, which hands back every stage's
# output, draws them as a filmstrip, shows what differs between training and evaluation, and
# holds the whole model equal to torchvision's in float64.

# %%
import inspect

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

import tinymaskrcnn as tm
from tinymaskrcnn import engine, visualize
from tinymaskrcnn.chapters import exercise, reference, rejects, scratch
from tinymaskrcnn.chapters.trained import departures_markdown, trained_model
from tinymaskrcnn.data import coco as coco_data
from tinymaskrcnn.data.shapes import make_shapes_dataset
from tinymaskrcnn.core.gradcheck import rel_error
from tinymaskrcnn.models.mask_rcnn import MaskRCNN

plt.rcParams["figure.dpi"] = 72
work = scratch()  # removed when the chapter ends

# %%
print(inspect.getsource(MaskRCNN.forward))

# %% [markdown]
# ## One call, every stage
#
# The model of the main job: a ResNet-18-FPN Mask R-CNN for the shapes set's three classes
# (`num_classes=4`: **the background counts as class 0**). `trained_model()`
# (`tinymaskrcnn/chapters/trained.py`) loads the main job's run folder when there is one
# (`tinymaskrcnn train`, 10 to 12 minutes on two cores, writes `runs/<date-time>-<pid>/`;
# `TINYMASKRCNN_TRAINED_RUN` may name another), and every picture's title says what it shows. With
# random weights (quick mode, or before you have trained) only the stages driven by the ground
# truth — anchor labels, sampled RoIs, targets — look meaningful.
#
# ### Departures from the paper
#
# The main job does not build the model with the paper's or torchvision's settings: the shapes set
# (small images, 1-4 objects each, trained from scratch on a CPU) gets the `SHAPES_MODEL_DEFAULTS`
# of `tinymaskrcnn/engine/config.py`. Chapters 9 and 10 taught torchvision's values (a quarter of
# the box head's RoIs positive, a mask loss on every positive RoI); this chapter and the next two
# use these. The table is generated from the code, so it cannot drift from it:

# %%
display(Markdown(departures_markdown()))

# %%
paths = make_shapes_dataset(work / "shapes", num_train=1, num_val=4, image_size=(128, 160), seed=2)
val = coco_data.CocoDetection(*paths["val"])
image, target = max((val[i] for i in range(len(val))), key=lambda item: len(item[1]["labels"]))
trained = trained_model()
model = trained.model
print(trained.title)
assert trained.class_names == val.category_names          # the model's labels are the data's
built = {"box_detections_per_img": model.roi_heads.detections_per_img,    # the model runs with the table's settings
         "box_positive_fraction": model.roi_heads.fg_bg_sampler.positive_fraction,
         "mask_batch_size_per_image": model.roi_heads.mask_sampler.batch_size_per_image,
         "fpn_channels": model.backbone.out_channels}
assert all(built[k] == engine.SHAPES_MODEL_DEFAULTS[k] for k in built), built

model.train()
train_stages, stats = {}, {}
losses = model([image], [target], intermediates=train_stages, stats=stats)
model.eval()
eval_stages = {}
with tm.no_grad():
    detections = model([image], intermediates=eval_stages)[0]
for name, value in train_stages.items():
    shape = [tuple(v.shape) for v in value] if isinstance(value, list) and value and hasattr(value[0], "shape") \
        else getattr(value, "shape", type(value).__name__)
    print(f"{name:28s} {shape}")

# %% [markdown]
# Everything from the anchors on lives in the **resized, padded** frame of `images.tensors`
# (the transform scaled the short side to `min_size` and padded to a multiple of 32); only the
# final detections are mapped back to the original image. So the filmstrip draws the first
# panels on the transformed image (with its normalisation undone).

# %%
batch = train_stages["images"]
height, width = batch.image_sizes[0]
mean = np.array(model.transform.image_mean)[:, None, None]
std = np.array(model.transform.image_std)[:, None, None]
seen = np.clip(batch.tensors.data[0, :, :height, :width] * std + mean, 0, 1)
scale = height / image.shape[1]

fig, axes = plt.subplots(1, 5, figsize=(15, 3.4), layout="constrained")
fig.suptitle(f"one call, stage by stage: {trained.title}", fontsize=10)
visualize.draw_detections(seen, target["boxes"] * scale, target["labels"], class_names=val.category_names,
                          ax=axes[0], title=f"input, resized x{scale:.2f}")
visualize.draw_boxes(seen, train_stages["anchors"][0], train_stages["rpn_labels"][0], ax=axes[1], max_boxes=150,
                     title=f"{len(train_stages['anchors'][0])} anchors")
top = np.argsort(-tm.backend.to_numpy(train_stages["proposal_scores"][0]))[:30]
visualize.draw_boxes(seen, train_stages["proposals"][0][top], ax=axes[2],
                     title=f"top 30 of {len(train_stages['proposals'][0])} proposals")
visualize.draw_boxes(seen, train_stages["sampled_rois"][0], train_stages["roi_labels"][0], ax=axes[3],
                     title=f"{len(train_stages['sampled_rois'][0])} sampled RoIs")
shown = min(5, len(detections["scores"]))                 # the five best (random weights score low)
threshold = float(np.sort(tm.backend.to_numpy(detections["scores"]))[-shown]) if shown else 0.5
threshold = max(threshold, 0.5) if trained.trained else threshold   # a trained model: its confident ones
visualize.draw_detections(image, detections["boxes"], detections["labels"], detections["scores"],
                          detections["masks"], val.category_names, score_threshold=threshold, ax=axes[4],
                          title=f"detections ≥ {threshold:.2f} of {len(detections['boxes'])}")
plt.show()

# %% [markdown]
# The detections beside the ground truth, on every validation image; a trained model's should match
# it closely, random weights' (see the title) label triangles "circle" with scores near chance.

# %%
samples = [val[i] for i in range(len(val))]
fig, axes = plt.subplots(2, len(samples), figsize=(3.2 * len(samples), 5.4), layout="constrained", squeeze=False)
fig.suptitle(f"ground truth (top) and detections with score ≥ 0.5 (bottom): {trained.title}", fontsize=10)
with tm.no_grad():
    outputs = [model([im])[0] for im, _ in samples]
for k, ((im, tgt), out) in enumerate(zip(samples, outputs)):
    visualize.draw_ground_truth_and_prediction(im, tgt, out, val.category_names, score_threshold=0.5,
                                               ax=(axes[0, k], axes[1, k]))
plt.show()
assert all(out["masks"].shape[-2:] == im.shape[-2:] for (im, _), out in zip(samples, outputs))

# %% [markdown]
# ## Training and evaluation run different graphs
#
# | | training (`model.train()`) | evaluation (`model.eval()`) |
# |---|---|---|
# | RPN proposals kept per image | `rpn_post_nms_top_n_train` | `rpn_post_nms_top_n_test` |
# | ground-truth boxes | appended to the proposals, matched, sampled | not given |
# | box head | on sampled RoIs; returns two losses | on all proposals; softmax, per-class decode, NMS, top 100 |
# | mask head | on the positive sampled RoIs; loss on the GT class's channel | on the detections; sigmoid of the predicted class, pasted |
# | returns | five losses | boxes, labels, scores, masks in the original image |
#
# The checks below read the counts straight from the intermediates.

# %%
rpn = model.rpn
model.train()
top_train = rpn.post_nms_top_n()        # the mode decides which count applies
model.eval()
top_test = rpn.post_nms_top_n()
print("losses:", {k: round(float(v.data), 3) for k, v in losses.items()})
print("proposals kept: training", len(train_stages["proposals"][0]), "evaluation", len(eval_stages["proposals"][0]))
assert sorted(losses) == sorted(["loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"])
print("at most", top_train, "in training and", top_test, "in evaluation")
assert len(train_stages["proposals"][0]) <= top_train and len(eval_stages["proposals"][0]) <= top_test
assert "sampled_rois" not in eval_stages and "mask_targets" in train_stages
assert detections["masks"].shape[-2:] == image.shape[-2:]     # pasted at the original size

# %% [markdown]
# ## End to end, equal to torchvision
#
# The strongest check of the whole chapter series: torchvision's `maskrcnn_resnet50_fpn`, with
# random weights calibrated so activations stay of order one (`tinymaskrcnn.chapters.reference_models`), saved
# and loaded into ours without torch; both run the same image in float64; every box, score, label
# and mask agrees to rounding.

# %%
torch = reference()
if torch is not None:
    from tinymaskrcnn.chapters.reference_models import save_state_dict, torchvision_maskrcnn

    small = dict(min_size=160, max_size=224, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=60,
                 box_detections_per_img=12)
    theirs = torchvision_maskrcnn(num_classes=5, calibration_size=(160, 224), **small).double().eval()
    ours = tm.models.maskrcnn_resnet50_fpn(weights=save_state_dict(theirs, work), **small)  # read without torch
    ours.to(dtype=np.float64).eval()
    x = image.astype(np.float64)
    with torch.no_grad():
        expected = theirs([torch.from_numpy(x)])[0]
    with tm.no_grad():
        got = ours([x])[0]
    print(f"{len(got['boxes'])} detections from each")
    assert len(got["boxes"]) == len(expected["boxes"]) > 0
    assert np.array_equal(got["labels"], expected["labels"].numpy())
    for key in ("boxes", "scores", "masks"):
        err = rel_error(got[key], expected[key].numpy())
        print(f"{key:7s} relative error {err:.1e}")
        assert err <= 1e-9

# %% [markdown]
# ## Exercises
#
# ### Exercise 1 — how many anchors?
#
# Write `anchor_count(model, padded_height, padded_width)`: the number of anchors the model
# places on a padded batch of that size. Each FPN level $l$ has a stride $s_l$ (4, 8, 16, 32, 64
# for '0'…'pool'), a feature map of $\lceil H/s_l \rceil \times \lceil W/s_l \rceil$ cells, and
# `model.rpn.anchor_generator.num_anchors_per_location()[l]` anchors per cell. The check runs the
# model on random image sizes and counts.

# %%
@exercise
def check_anchor_count(anchor_count):
    r = np.random.default_rng(3)
    model.eval()
    for _ in range(3):
        h, w = int(r.integers(90, 200)), int(r.integers(90, 200))
        stages = {}
        with tm.no_grad():
            model([r.random((3, h, w)).astype(np.float32)], intermediates=stages)
        ph, pw = stages["images"].tensors.shape[-2:]
        mine = anchor_count(model, ph, pw)
        assert mine == len(stages["anchors"][0]), f"padded {ph}x{pw}: you count {mine}, the model made " \
                                                  f"{len(stages['anchors'][0])}"


def my_anchor_count(model, padded_height, padded_width):
    raise NotImplementedError   # your code


check_anchor_count(my_anchor_count)

# %% [solution]
def solution_anchor_count(model, padded_height, padded_width):
    per_cell = model.rpn.anchor_generator.num_anchors_per_location()
    strides = [4, 8, 16, 32, 64]
    return sum(a * -(-padded_height // s) * -(-padded_width // s) for a, s in zip(per_cell, strides))


def count_one_per_cell(model, padded_height, padded_width):   # forgets the sizes x ratios per cell
    return sum(-(-padded_height // s) * -(-padded_width // s) for s in [4, 8, 16, 32, 64])


assert check_anchor_count(solution_anchor_count)
assert rejects(check_anchor_count, count_one_per_cell)

# %% [markdown]
# ### Exercise 2 — back to the original image
#
# The box head's detections (`detections_before_postprocess`) are in the resized frame. Write
# `to_original(boxes, resized_size, original_size)` (sizes as (height, width)) that maps them to the
# original image, as `model.transform.postprocess` does. The check compares with the model's own
# output on images of several shapes.

# %%
@exercise
def check_to_original(to_original):
    r = np.random.default_rng(4)
    model.eval()
    model.roi_heads.score_thresh = 0.0          # keep every detection, so there are boxes to compare
    try:
        for h, w in ((100, 180), (170, 96)):
            stages = {}
            with tm.no_grad():
                out = model([r.random((3, h, w)).astype(np.float32)], intermediates=stages)[0]
            resized = stages["images"].image_sizes[0]
            raw = tm.backend.to_numpy(stages["detections_before_postprocess"][0]["boxes"])
            mine = to_original(raw, resized, (h, w))
            assert len(out["boxes"]) > 0 and np.allclose(mine, out["boxes"], rtol=1e-5, atol=1e-4), \
                f"a {h}x{w} image resized to {resized}: your boxes differ from the model's"
    finally:
        model.roi_heads.score_thresh = 0.05


def my_to_original(boxes, resized_size, original_size):
    raise NotImplementedError   # your code


check_to_original(my_to_original)

# %% [solution]
def solution_to_original(boxes, resized_size, original_size):
    ratio_h = original_size[0] / resized_size[0]
    ratio_w = original_size[1] / resized_size[1]
    return boxes * np.array([ratio_w, ratio_h, ratio_w, ratio_h], dtype=boxes.dtype)


def swapped_ratios(boxes, resized_size, original_size):   # x scaled by the height ratio: xyxy is (x, y)
    ratio_h = original_size[0] / resized_size[0]
    ratio_w = original_size[1] / resized_size[1]
    return boxes * np.array([ratio_h, ratio_w, ratio_h, ratio_w], dtype=boxes.dtype)


assert check_to_original(solution_to_original)
assert rejects(check_to_original, swapped_ratios)

# %% [markdown]
# ## Questions to answer in words
#
# Answer each in a few sentences before opening the answer.
#
# **Question 1.** Why does the model add the ground-truth boxes to the proposals in training?
#
# <details><summary>Answer</summary>
#
# Early in training the RPN's proposals are poor, and few of them overlap an object at IoU 0.5: the box and mask heads would have almost no positives to learn from. The ground-truth boxes are perfect positive RoIs, so the heads learn from the first iteration while the RPN improves.
#
# </details>
#
# **Question 2.** The shapes defaults keep 20 detections an image; COCO's is 100. When would 20 cost AP?
#
# <details><summary>Answer</summary>
#
# When an image holds more than 20 objects, or when right detections rank below the 20th (several classes competing for few objects): COCO's AP counts up to 100 detections an image, and every detection cut loses recall. On the shapes set (at most a handful of objects) it costs nothing and makes evaluation faster.
#
# </details>
