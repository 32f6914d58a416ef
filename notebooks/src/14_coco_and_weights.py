# %% [markdown]
# # Chapter 14 — Real data and real weights: COCO subsets, and torchvision's `.pth` without PyTorch
#
# Everything so far ran on the synthetic shapes set, with random weights or the main job's model
# trained on it. This chapter connects the model to the outside world, in the two ways
# practitioners use it:
#
# 1. **COCO-format data.** Full COCO (118k images, 80 classes) is far too much for a laptop CPU;
#    `tinymaskrcnn coco-subset` cuts a small instances file (a few hundred images, a few classes)
#    that trains in minutes. Here we cut one from the shapes set's own annotation file and
#    fine-tune the main job's model on it; give `COCO_ANN` below the path of your COCO download to
#    cut a real one.
# 2. **torchvision's weights.** A `.pth` file is a zip of pickles and raw tensor bytes. We open one
#    by hand, read it with the package's restricted unpickler (`tinymaskrcnn/weights/pth.py`), watch
#    it refuse a malicious pickle, and load a torchvision Mask R-CNN's weights into ours.

# %%
import inspect
import io
import json
import os
import pickle
import pickletools
import zipfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import tinymaskrcnn as tm
from tinymaskrcnn import engine, visualize
from tinymaskrcnn.chapters import QUICK, exercise, quick, reference, rejects, scratch
from tinymaskrcnn.chapters.trained import run_summary, shown_run
from tinymaskrcnn.data import coco as coco_data
from tinymaskrcnn.data.subset import coco_subset
from tinymaskrcnn.data.shapes import make_shapes_dataset

plt.rcParams["figure.dpi"] = 72
work = scratch()  # removed when the chapter ends
COCO_ANN = os.environ.get("COCO_ANN")        # e.g. ".../annotations/instances_val2017.json"
COCO_IMAGES = os.environ.get("COCO_IMAGES")  # e.g. ".../val2017"
AP50_BOUND = 0.5   # the fine-tuned model's mask AP50 on the val subset must pass it (0.72 measured, 30 iterations)

# %% [markdown]
# ## 1. A COCO subset
#
# A COCO instances file is one JSON object with three lists that refer to each other by id:
# `images` (file name, height, width), `categories` (id, name) and `annotations` (image id,
# category id, `[x, y, w, h]` box, polygon or RLE mask, `iscrowd`). A subset keeps some images,
# some categories and only the annotations where both survive; the image files stay where they
# are. `coco_subset` picks the images at random (seeded) among those that show a chosen category:

# %%
print(inspect.getsource(coco_subset))

# %%
shapes = make_shapes_dataset(work / "shapes", num_train=quick(24, 200), num_val=quick(8, 50), image_size=(128, 160),
                             seed=1)
if COCO_ANN and Path(COCO_ANN).is_file():
    source_ann, source_images, wanted = COCO_ANN, COCO_IMAGES, ["person", "dog"]
    print("cutting your COCO file", COCO_ANN)
else:
    source_ann, source_images, wanted = shapes["train"].ann_file, shapes["train"].image_dir, ["circle", "square"]
    print("no COCO_ANN given: cutting the shapes set's training file")

full = json.loads(Path(source_ann).read_text())
subset_ann = coco_subset(source_ann, work / "subset_train.json", num_images=quick(12, 100), categories=wanted,
                         seed=0)
subset = json.loads(Path(subset_ann).read_text())


def per_category(data):
    names = {c["id"]: c["name"] for c in data["categories"]}
    counts = {name: 0 for name in names.values()}
    for a in data["annotations"]:
        counts[names[a["category_id"]]] += 1
    return counts


print(f"{'':10s} images  annotations per category")
print(f"{'full':10s} {len(full['images']):6d}  {per_category(full)}")
print(f"{'subset':10s} {len(subset['images']):6d}  {per_category(subset)}")

# every annotation of the subset refers to a kept image and a kept category
kept_images = {im["id"] for im in subset["images"]}
assert all(a["image_id"] in kept_images for a in subset["annotations"])
assert {c["name"] for c in subset["categories"]} == set(wanted)

# %% [markdown]
# The command line does the same: `tinymaskrcnn coco-subset ANN OUT --num-images N --categories a,b`.
# The class count the model needs follows from the subset: `num_classes` = the kept categories
# **plus one for the background** (label 0), and labels are renumbered 1..C in category-id order.

# %%
train_set = coco_data.CocoDetection(subset_ann, source_images, skip_empty=True)
print("num_classes =", train_set.num_classes, "labels:", dict(enumerate(train_set.category_names)))
assert train_set.num_classes == len(wanted) + 1 and train_set.category_names[0] == "__background__"
image, target = train_set[0]
visualize.draw_detections(image, target["boxes"], target["labels"], masks=target["masks"],
                          class_names=train_set.category_names, title="a training image of the subset")
plt.show()

# %% [markdown]
# ### Training on it
#
# `engine.train` takes any COCO-format pair of files. Trained from scratch, a subset this small
# learns little in minutes; the learner's realistic path is to **fine-tune**: start from weights
# trained on related data and train a new box and mask predictor for the subset's classes.
# `TrainConfig.weights` (`train --weights`) takes a torchvision `.pth` or our own run's
# `checkpoint.npz`: every array whose name and shape fit is loaded, and the predictors, shaped
# for the main job's 3 classes + background instead of this subset's 2 + background, stay as
# built (the report says so). When the main job's run is there (chapters 11-13 show it), we
# fine-tune from it; without it (quick mode without `TINYMASKRCNN_TRAINED_RUN`, as in CI) a few
# iterations from scratch only show the losses moving. Fine-tuned, every layer but the three
# predictor layers (class scores, box deltas, mask logits) starts trained, so a short run (30
# steps in quick mode) already gives the mask AP50 printed below (asserted above 0.5); the new
# classifier, which has seen a dozen images in quick mode, still calls some squares circles.

# %%
val_ann = coco_subset(shapes["val"].ann_file, work / "subset_val.json", num_images=None,
                      categories=["circle", "square"])
main_job = shown_run()        # the main job's run folder, or None
if main_job is not None:
    # the main job's architecture (its norm, FPN width, ...), so that every array but the predictors fits
    start = {"weights": str(main_job / "checkpoint.npz"),
             "model_kwargs": json.loads((main_job / "config.json").read_text())["model_kwargs"],
             "iterations": quick(30, 200), "warmup_iters": 5, "lr": 2e-4}
    how = f"fine-tuned {start['iterations']} iterations from the main job ({run_summary(main_job)[2]})"
else:
    start = {"model_kwargs": {"fpn_channels": 64, "norm": "instance"}, "iterations": quick(6, 300),
             "warmup_iters": quick(2, 50)}
    how = f"{start['iterations']} iterations from scratch ({'quick mode' if QUICK else 'no trained run in runs/'})"
config = engine.TrainConfig(train_ann=str(subset_ann), train_images=str(source_images),
                            val_ann=str(val_ann), val_images=shapes["val"].image_dir, **start,
                            batch_size=2, processes=1, out_dir=str(work / "run"), progress=False,
                            num_predictions=0, checkpoint_period=0)
result = engine.train(config)
records = [json.loads(line) for line in Path(result["metrics_jsonl"]).read_text().splitlines()]
records = [r for r in records if "loss" in r]          # training records (evaluations are logged too)
subset_ap50 = result["metrics"]["segm"]["AP50"]
print(f"{how}: loss {records[0]['loss']:.3f} -> {records[-1]['loss']:.3f}, mask AP50 on the val subset "
      f"{subset_ap50:.3f}")
ax = visualize.plot_losses(result["metrics_jsonl"])
ax.set_title(how, fontsize=9)
plt.show()
assert len(records) == config.iterations and np.isfinite(records[-1]["loss"])
if main_job is not None and source_ann == shapes["train"].ann_file:   # your COCO classes start further away
    assert subset_ap50 > AP50_BOUND, f"fine-tuned from the main job, mask AP50 {subset_ap50:.3f} <= {AP50_BOUND}"

# %%
tuned, _ = engine.load_model(result["checkpoint"])
val_subset = coco_data.CocoDetection(val_ann, shapes["val"].image_dir)
shown = [val_subset[i] for i in range(min(3, len(val_subset)))]
fig, axes = plt.subplots(2, len(shown), figsize=(3.4 * len(shown), 5.4), layout="constrained", squeeze=False)
fig.suptitle(f"validation images: ground truth (top), detections ≥ 0.5 (bottom)\n{how}", fontsize=9)
for k, (image, target) in enumerate(shown):
    with tm.no_grad():
        prediction = tuned([image])[0]
    visualize.draw_ground_truth_and_prediction(image, target, prediction, val_subset.category_names,
                                               ax=(axes[0, k], axes[1, k]))
plt.show()

# %% [markdown]
# ### Your own data: a folder of images and masks
#
# Your data rarely comes as COCO JSON. A common layout is a folder of images and, for each object,
# a black-and-white mask image named after its image and class: `images/0001.png`,
# `masks/0001_0_nut.png`, `masks/0001_1_bolt.png`. Turning that into COCO JSON takes a page: each
# mask becomes an annotation whose `segmentation` is its run-length encoding (pycocotools' RLE),
# whose `bbox` and `area` follow from it, and whose `category_id` comes from the class in its file
# name. Here we make such a folder — 192×256 pictures of *small* objects, 6-24 px across, the case
# that needs its own settings — convert it and train on it. (The val split here is the training
# folder itself, to keep the chapter short; yours should be images the model never trains on.)

# %%
from PIL import Image
from pycocotools import mask as mask_utils

from tinymaskrcnn.data.shapes import shape_mask


def make_folder(root, count, rng, height=192, width=256):
    """A folder of noisy pictures with 2-6 small shapes each, one mask PNG per object."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for n in range(count):
        picture = np.clip(rng.normal(0.5, 0.08, (height, width, 3)), 0, 1)
        for k in range(int(rng.integers(2, 7))):
            kind = ("circle", "square", "triangle")[int(rng.integers(3))]
            mask = shape_mask(kind, rng.uniform(16, width - 16), rng.uniform(16, height - 16), rng.uniform(3, 12),
                              height, width, angle=rng.uniform(0, 2 * np.pi))
            picture[mask] = rng.uniform(0, 1, 3)
            Image.fromarray((mask * 255).astype(np.uint8)).save(root / "masks" / f"{n:04d}_{k}_{kind}.png")
        Image.fromarray((picture * 255).astype(np.uint8)).save(root / "images" / f"{n:04d}.png")


def folder_to_coco(root, out):
    """COCO instances JSON for ``root``/images/*.png and their masks ``root``/masks/<image>_<k>_<class>.png."""
    masks = sorted((root / "masks").glob("*.png"))
    names = sorted({m.stem.split("_")[-1] for m in masks})                # category ids 1..C in name order
    images, annotations = [], []
    for image_id, path in enumerate(sorted((root / "images").glob("*.png")), start=1):
        with Image.open(path) as im:
            width, height = im.size
        images.append({"id": image_id, "file_name": path.name, "height": height, "width": width})
        covered = np.zeros((height, width), dtype=bool)
        for mask_path in reversed([m for m in masks if m.stem.split("_")[0] == path.stem]):  # last drawn on top
            mask = (np.asarray(Image.open(mask_path)) > 0) & ~covered
            covered |= mask
            if not mask.any():
                continue                                                      # hidden by a later object
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0,
                                "category_id": names.index(mask_path.stem.split("_")[-1]) + 1,
                                "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()},
                                "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": k + 1, "name": name} for k, name in enumerate(names)]}
    Path(out).write_text(json.dumps(data))
    return out


own = work / "my_data"
make_folder(own, quick(6, 60), np.random.default_rng(7))
own_ann = folder_to_coco(own, work / "my_data.json")
own_set = coco_data.CocoDetection(own_ann, own / "images")
print(f"{len(own_set)} images, {len(json.loads(Path(own_ann).read_text())['annotations'])} objects; "
      f"num_classes = {own_set.num_classes} (the background is label 0): {own_set.category_names}")
assert own_set.num_classes == 3 + 1 and own_set.category_names[0] == "__background__"
image, target = own_set[0]
visualize.draw_detections(image, target["boxes"], target["labels"], masks=target["masks"],
                          class_names=own_set.category_names, title="your data, read back from the COCO JSON")
plt.show()

# %% [markdown]
# **Anchors and `min_size` for your objects.** The model resizes each image so its short side is
# `min_size` (160 for the ResNet-18 model): these 192-pixel pictures shrink by 0.83, and objects of
# 6-24 px become 5-20 px. Chapter 6 showed that an object under $16\sqrt{0.7} \approx 13$ px reaches
# IoU 0.7 with no anchor of size 16 (the smallest): the RPN then learns it only through the
# low-quality rule, if at all. Two knobs come to mind: smaller anchors (`anchor_sizes` 8…128
# instead of 16…256: these images hold nothing larger than 24 px) and a larger `min_size` (384:
# the pictures grow instead of shrinking). Each object's best anchor IoU under each, read from the
# model's own anchors — and the first knob, the obvious one, makes things *worse*: each level keeps
# its stride (4 px on P2), so halving the anchors moves the 16-px anchors to P3, whose 8-px grid
# can no longer centre one on a small object; an 8-px anchor on P2's 4-px grid misses by up to
# 2 px, a quarter of its side. Scaling the image keeps each size with the stride it was designed
# for, and it is what fits these objects.

# %%
def best_anchor_iou(model_kwargs, dataset):
    """Each object's (side in the resized image, best IoU over the model's anchors) on ``dataset``."""
    tm.random.manual_seed(0)
    model = engine.build_model("maskrcnn_resnet18_fpn", dataset.num_classes, model_kwargs).eval()
    sides, best = [], []
    for i in range(min(len(dataset), 3)):
        picture, target = dataset[i]
        batch, _ = model.transform([picture])
        height, width = batch.tensors.shape[-2:]
        grids = [(-(-height // s), -(-width // s)) for s in (4, 8, 16, 32)]
        grids.append((-(-grids[-1][0] // 2), -(-grids[-1][1] // 2)))            # P6: every other cell of P5
        anchors = model.rpn.anchor_generator(batch, [(1, 1, h, w) for h, w in grids])[0]
        boxes = target["boxes"] * (batch.image_sizes[0][0] / picture.shape[1])
        sides += list(np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
        best += list(tm.ops.box_iou(boxes, tm.backend.to_numpy(anchors)).max(axis=1))
    return np.array(sides), np.array(best)


small_model = {**engine.SHAPES_MODEL_DEFAULTS, "box_detections_per_img": 20}
settings = {"default (min_size 160, anchors 16…256)": small_model,
            "smaller anchors (8…128)": {**small_model, "anchor_sizes": (8, 16, 32, 64, 128)},
            "larger min_size (384)": {**small_model, "min_size": 384, "max_size": 512}}
fits = {name: best_anchor_iou(kwargs, own_set) for name, kwargs in settings.items()}
fig, ax = plt.subplots(figsize=(6, 3.2), layout="constrained")
for k, (name, (sides, best)) in enumerate(fits.items()):
    ax.plot(sides, best, "os^"[k], color=visualize.PALETTE[3 + k],           # not a class's colour
            label=f"{name}: {int((best < 0.7).sum())} of {len(best)} under 0.7")
ax.axhline(0.7, color="grey", linewidth=0.8)
ax.set_xlabel("object side √(wh) in the resized image (px)")
ax.set_ylabel("best anchor IoU")
ax.set_title("which objects no anchor fits", fontsize=9)
ax.legend(fontsize=7)
plt.show()
misfits = [int((best < 0.7).sum()) for _, best in fits.values()]
print(dict(zip(fits, misfits)))
assert misfits[2] < misfits[0] <= misfits[1]          # scaling the image fits them; smaller anchors do not

# %% [markdown]
# Then train on it, with those settings (a few iterations here; a few hundred when you run the
# chapter yourself). With your own folder, point `make_folder` aside and `folder_to_coco` at it;
# the command line takes the JSON too: `tinymaskrcnn train --train-ann my_data.json --train-images
# my_data/images --val-ann ... --val-images ... --min-size 384 --max-size 512`.

# %%
own_val = quick({}, {"val_ann": str(own_ann), "val_images": str(own / "images")})   # quick: no evaluation
own_config = engine.TrainConfig(train_ann=str(own_ann), train_images=str(own / "images"), **own_val,
                                iterations=quick(2, 300), warmup_iters=quick(1, 50), batch_size=quick(1, 2), processes=1, model_kwargs=settings["larger min_size (384)"],
                                out_dir=str(work / "own_run"), progress=False, num_predictions=0, checkpoint_period=0)
own_result = engine.train(own_config)
own_records = [r for r in map(json.loads, Path(own_result["metrics_jsonl"]).read_text().splitlines()) if "loss" in r]
print(f"{len(own_records)} iterations: loss {own_records[0]['loss']:.3f} -> {own_records[-1]['loss']:.3f}")
if own_result["metrics"] is not None:
    print(f"mask AP50 on the training images: {own_result['metrics']['segm']['AP50']:.3f}")
assert len(own_records) == own_config.iterations and np.isfinite(own_records[-1]["loss"])

# %% [markdown]
# ## 2. What a `.pth` file is
#
# `torch.save(state_dict, path)` writes a **zip** archive:
#
# | entry | holds |
# |---|---|
# | `<name>/data.pkl` | the pickled object: a dict from names to tensors |
# | `<name>/data/<key>` | the raw little-endian bytes of one *storage* (a flat buffer) |
# | `<name>/byteorder`, `<name>/version` | how to read them |
#
# A tensor inside `data.pkl` is not data but a *call*: "rebuild a tensor from storage `key`, at
# `offset`, with this `size` and `stride`". The storage is a *persistent id*, resolved by the
# loader. We make such a file from a small torchvision model (random weights, nothing downloaded)
# and open it by hand.

# %%
torch = reference()
if torch is not None:
    import torchvision

    torch.manual_seed(0)
    small = torchvision.models.resnet18(weights=None, num_classes=10)
    pth = work / "resnet18.pth"
    torch.save(small.state_dict(), pth)
    with zipfile.ZipFile(pth) as z:
        names = z.namelist()
        pkl = z.read(next(n for n in names if n.endswith("data.pkl")))
    print(len(names), "entries:", names[:4], "...", names[-2:])
    listing = io.StringIO()
    pickletools.dis(pkl, out=listing)
    print("\n".join(listing.getvalue().splitlines()[:28]))

# %% [markdown]
# Read the disassembly: a `GLOBAL 'collections OrderedDict'`, then for each key a
# `GLOBAL 'torch._utils _rebuild_tensor_v2'` applied (`REDUCE`) to a tuple whose first element is a
# `BINPERSID` — the storage record `('storage', FloatStorage, '0', 'cpu', numel)`.
#
# **Why not `pickle.load`?** A pickle can name *any* importable function and unpickling *calls*
# it. The package's unpickler resolves only the handful of names a state_dict needs, each to a
# harmless function that builds a NumPy view of the storage's bytes:

# %%
print(inspect.getsource(tm.weights.SafeUnpickler.find_class))

# %%
if torch is not None:
    arrays = tm.weights.read_pth(pth)
    theirs = small.state_dict()
    assert list(arrays) == list(theirs)
    for key, value in theirs.items():
        assert arrays[key].dtype == value.numpy().dtype and np.array_equal(arrays[key], value.numpy()), key
    print(f"read {len(arrays)} arrays without torch, each equal to torch's tensor, e.g.",
          "conv1.weight", arrays["conv1.weight"].shape, arrays["conv1.weight"].dtype)

# %% [markdown]
# ### A malicious `.pth`
#
# Here is a file that looks like a checkpoint but whose pickle calls `os.system` when unpickled:
# it would create a marker file (a real attack would do worse). We build it by hand — no need for
# torch — and hand it to the package's reader. **Never** open such a file with `torch.load` on an
# old PyTorch (before 2.6, `weights_only` was off by default) or with `pickle.load`.

# %%
marker = work / "you_were_hacked"


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {marker}",))


evil = work / "evil.pth"
with zipfile.ZipFile(evil, "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps({"conv1.weight": Payload()}, protocol=2))
    z.writestr("archive/byteorder", "little")
    z.writestr("archive/version", "3")

try:
    tm.weights.read_pth(evil)
    raise AssertionError("the malicious file was read")
except (pickle.UnpicklingError, ValueError) as e:
    print("refused:", e)
assert not marker.exists(), "the payload ran"

# %% [markdown]
# ## 3. torchvision's Mask R-CNN weights in our model
#
# Our parameter names are torchvision's state_dict keys, so loading is by name, with nothing to
# map. We build torchvision's `maskrcnn_resnet50_fpn` with random weights (calibrated so every
# activation stays of order one — see `tinymaskrcnn.chapters.reference_models`), save it as torchvision's
# published files are saved, load the file into ours without torch, and compare the backbone's
# features in float64.

# %%
if torch is not None:
    from tinymaskrcnn.chapters.reference_models import save_state_dict, torchvision_maskrcnn

    theirs = torchvision_maskrcnn(num_classes=91, calibration_size=(128, 160)).eval()
    path = save_state_dict(theirs, directory=work)          # float32, as the published files
    theirs.double()
    # the architecture alone (no ImageNet backbone file), with the detection's frozen batch norm
    ours = tm.models.maskrcnn_resnet50_fpn(weights_backbone=None, norm_layer=tm.nn.FrozenBatchNorm2d)
    result = tm.weights.load_torchvision(ours, path)
    ours.to(dtype=np.float64).eval()
    print(f"{Path(path).stat().st_size / 1e6:.0f} MB file; missing {len(result.missing)}, unexpected "
          f"{len(result.unexpected)}, mis-shaped {len(result.mismatched)}")
    x = np.random.default_rng(0).random((1, 3, 128, 160))
    with torch.no_grad():
        their_features = theirs.backbone(torch.from_numpy(x))
    with tm.no_grad():
        our_features = ours.backbone(tm.Tensor(x))
    for level, feature in their_features.items():
        err = np.abs(our_features[level].data - feature.numpy()).max() / np.abs(feature.numpy()).max()
        print(f"level {level}: shape {tuple(feature.shape)}, largest difference / largest value {err:.1e}")
        assert err < 1e-10
    os.remove(path)

# %% [markdown]
# ### The real COCO weights
#
# torchvision's COCO-trained file is `maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth` (170 MB). On a
# machine with internet access, `tm.weights.download("maskrcnn_resnet50_fpn_coco")`
# fetches it and checks its SHA-256 against the `bf2d0c1e` in its name; or copy it from
# `~/.cache/torch/hub/checkpoints/` if torchvision has fetched it before. Point `COCO_WEIGHTS` at it
# and this cell runs the real detector on a shapes image (it will find "clocks", "frisbees" and
# "kites": COCO has no triangles); without the file it says so and moves on.

# %%
weights_file = os.environ.get("COCO_WEIGHTS", str(Path.home() / ".cache/torch/hub/checkpoints/"
                                                 "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"))
if Path(weights_file).is_file() and not QUICK:
    coco_model = tm.models.maskrcnn_resnet50_fpn(weights=weights_file)  # weights="DEFAULT" finds it in torch's cache
    coco_model.eval()
    with tm.no_grad():
        out = coco_model([image])[0]
    visualize.draw_detections(image, out["boxes"], out["labels"], out["scores"], out["masks"], score_threshold=0.3)
    plt.show()
else:
    print(f"no COCO weights at {weights_file} (or quick mode): skipped")

# %% [markdown]
# ## Exercises
#
# ### Exercise 1 — a subset by hand
#
# Write `my_subset(data, category_names)`: from a COCO dict keep the categories named, the images
# that show at least one non-crowd annotation of them, and the annotations of kept categories on
# kept images. (`coco_subset` also samples `num_images` at random; yours keeps them all.) The check
# compares with `coco_subset(..., num_images=None)` on the shapes set, and checks every reference.

# %%
@exercise
def check_subset(my_subset):
    data = json.loads(Path(shapes["train"].ann_file).read_text())
    for names in (["circle"], ["square", "triangle"]):
        mine = my_subset(json.loads(json.dumps(data)), names)
        truth = json.loads(Path(coco_subset(shapes["train"].ann_file, work / "check.json", None, names)).read_text())
        for key in ("images", "annotations", "categories"):
            ids = sorted(e["id"] for e in mine[key])
            assert ids == sorted(e["id"] for e in truth[key]), f"{names}: your {key} differ ({len(ids)} kept)"


def my_subset(data, category_names):
    raise NotImplementedError   # your code


check_subset(my_subset)

# %% [solution]
def solution_subset(data, category_names):
    chosen = {c["id"] for c in data["categories"] if c["name"] in category_names}
    images = {a["image_id"] for a in data["annotations"] if a["category_id"] in chosen and not a.get("iscrowd", 0)}
    return {"images": [im for im in data["images"] if im["id"] in images],
            "annotations": [a for a in data["annotations"] if a["image_id"] in images and a["category_id"] in chosen],
            "categories": [c for c in data["categories"] if c["id"] in chosen]}


def subset_keeping_all_annotations(data, category_names):   # forgets to drop the other classes' objects
    out = solution_subset(data, category_names)
    kept = {im["id"] for im in out["images"]}
    out["annotations"] = [a for a in data["annotations"] if a["image_id"] in kept]
    return out


assert check_subset(solution_subset)
assert rejects(check_subset, subset_keeping_all_annotations)

# %% [markdown]
# ### Exercise 2 — a tensor from its storage
#
# Write `rebuild(raw, dtype, offset, size, stride)`: `raw` is the bytes of one storage entry of a
# `.pth` zip, the rest the arguments of `_rebuild_tensor_v2` (offset and strides count elements,
# not bytes). Return the NumPy array. The check reads every tensor of a small torch-saved file,
# transposed and sliced ones included, and compares with torch (it needs torch).

# %%
@exercise
def check_rebuild(rebuild):
    if torch is None:
        print("(needs torch to make the file; skipped)")
        return
    base = torch.arange(60, dtype=torch.float32).reshape(5, 12)
    tensors = {"plain": base, "transposed": base.t(), "slice": base[1:4, 2::3], "vector": base[2]}
    path = work / "views.pth"
    torch.save(tensors, path)
    with zipfile.ZipFile(path) as z:
        raw = {n.rsplit("/", 1)[-1]: z.read(n) for n in z.namelist() if "/data/" in n}
        records = {}

        class Recorder(pickle.Unpickler):      # records each tensor's arguments instead of building it
            def find_class(self, module, name):
                if name == "_rebuild_tensor_v2":
                    return lambda storage, offset, size, stride, *rest: (storage, offset, size, stride)
                if name == "FloatStorage":
                    return np.float32
                return super().find_class(module, name)

            def persistent_load(self, pid):
                return pid[2]                   # the storage's key

        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
        records = Recorder(io.BytesIO(pkl)).load()
    for name, (key, offset, size, stride) in records.items():
        mine = rebuild(raw[key], np.float32, offset, tuple(size), tuple(stride))
        assert np.array_equal(mine, tensors[name].numpy()), f"{name}: size {tuple(size)}, stride {tuple(stride)}"


def my_rebuild(raw, dtype, offset, size, stride):
    raise NotImplementedError   # your code: np.frombuffer, then np.lib.stride_tricks.as_strided


check_rebuild(my_rebuild)

# %% [solution]
def solution_rebuild(raw, dtype, offset, size, stride):
    flat = np.frombuffer(raw, dtype=dtype)
    itemsize = flat.itemsize
    return np.lib.stride_tricks.as_strided(flat[offset:], shape=size, strides=[s * itemsize for s in stride]).copy()


def rebuild_ignoring_strides(raw, dtype, offset, size, stride):   # right for plain tensors only
    flat = np.frombuffer(raw, dtype=dtype)
    return flat[offset:offset + int(np.prod(size))].reshape(size)


assert check_rebuild(solution_rebuild)
if torch is not None:
    assert rejects(check_rebuild, rebuild_ignoring_strides)

# %% [markdown]
# ## Questions to answer in words
#
# Answer each in a few sentences before opening the answer.
#
# **Question 1.** Your data has five classes. What `num_classes` does the model take, and what goes wrong with 5?
#
# <details><summary>Answer</summary>
#
# Six: label 0 is the background, the classes are labels 1 to 5. With 5 outputs the classifier has no output for label 5: the loss indexes past the end (an error where it is checked, a silently wrong class where it is not), and the background competes with only four classes.
#
# </details>
#
# **Question 2.** Why can `torch.load` run code, and what does the package's reader allow instead?
#
# <details><summary>Answer</summary>
#
# A `.pth` holds a pickle, and unpickling calls whatever functions the pickle names, `os.system` included. The package's restricted unpickler resolves only the few names a state_dict needs (an OrderedDict, the tensor-rebuilding function, the storage types), each mapped to a harmless function that builds a NumPy view of the stored bytes; any other name is refused.
#
# </details>
