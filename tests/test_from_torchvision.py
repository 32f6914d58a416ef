"""A torchvision user's code runs with its imports changed (issue 26, docs/from-torchvision.md).

1. The model takes what torchvision's takes: torch tensors and tv_tensors, anything with
   ``__array__`` or ``__dlpack__``, converted once at its boundary; torch is not imported for
   NumPy inputs.
2. The builders take torchvision's arguments with torchvision's meaning: weights by name from
   torch's cache folder, the norm layer and the trainable stages decided by the weights, each
   held against torchvision's own builder; a from-scratch ResNet-50 trains.
3. ``Module.to`` takes torch's forms.
4. The DataLoader takes torchvision-style transforms.
5. The fine-tuning tutorial ported (examples/) runs on a tiny set, and differs from its torchvision
   twin only in the library's names and one conversion for the drawing functions.
(The schedules are tests/test_lr_scheduler.py.)
"""
import difflib
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import tinymaskrcnn as tm
from tinymaskrcnn import nn
from tinymaskrcnn.core.backend import CUDAUnavailableError
from tinymaskrcnn.data import Compose, DataLoader, RandomHorizontalFlip
from tinymaskrcnn.data.loader import takes_generator
from tinymaskrcnn.models.mask_rcnn import maskrcnn_resnet18_fpn, maskrcnn_resnet50_fpn

REPO = Path(__file__).resolve().parents[1]
COCO_FILE = "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
IMAGENET_FILE = "resnet50-0676ba61.pth"
SMALL = dict(min_size=64, max_size=96)


# ---------------------------------------------------------------------------------------------
# 1. The model's boundary
# ---------------------------------------------------------------------------------------------

def _batch(rng, dtype=np.float32):
    images = [rng.uniform(0, 1, (3, 60, 80)).astype(dtype), rng.uniform(0, 1, (3, 72, 64)).astype(dtype)]
    targets = []
    for image, boxes in zip(images, ([[5, 6, 40, 50], [30, 10, 70, 40]], [[8, 20, 50, 66]])):
        masks = np.zeros((len(boxes),) + image.shape[1:], np.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            masks[k, y1:y2, x1:x2] = 1
        targets.append({"boxes": np.array(boxes, np.float32), "labels": np.arange(1, len(boxes) + 1),
                        "masks": masks, "image_id": 7})
    return images, targets


@pytest.fixture(scope="module")
def small_model():
    tm.manual_seed(0)
    model = maskrcnn_resnet18_fpn(num_classes=3, norm="batch", fpn_channels=16, representation_size=32,
                                  mask_channels=8, **SMALL)
    model.initial_state = {k: v.copy() for k, v in model.state_dict().items()}
    return model


def _run(model, images, targets, training):
    """Losses (training) or detections from the model as built (training moves BatchNorm's
    running statistics), with the project's generator reset so that the samplers draw the same
    RoIs whatever the inputs' type."""
    model.load_state_dict(model.initial_state)
    tm.manual_seed(5)
    model.train(training)
    with tm.no_grad():
        out = model(images, targets) if training else model(images)
    if training:
        return {k: float(v.item()) for k, v in out.items()}
    return [{k: np.asarray(v) for k, v in o.items()} for o in out]


def _same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    else:
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)


def test_torch_tensors_and_tv_tensors_go_in_as_numpy_does(torch, small_model):
    """What every torchvision user passes: torch tensors (one still recording gradients), and the
    tutorial's tv_tensors (Image, BoundingBoxes, Mask); the same losses and detections as NumPy."""
    from torchvision import tv_tensors

    images, targets = _batch(np.random.default_rng(0))
    expected = _run(small_model, images, targets, True), _run(small_model, images, None, False)
    assert len(expected[1][0]["boxes"]) > 0

    as_torch = [torch.from_numpy(images[0]).requires_grad_(), torch.from_numpy(images[1])]
    torch_targets = [{k: torch.as_tensor(v) for k, v in t.items()} for t in targets]
    tv_images = [tv_tensors.Image(torch.from_numpy(image)) for image in images]
    tv_targets = [{"boxes": tv_tensors.BoundingBoxes(torch.from_numpy(t["boxes"]), format="XYXY",
                                                     canvas_size=image.shape[1:]),
                   "masks": tv_tensors.Mask(torch.from_numpy(t["masks"])), "labels": torch.from_numpy(t["labels"]),
                   "image_id": t["image_id"]} for image, t in zip(images, targets)]
    for ins, tgts in ((as_torch, torch_targets), (tv_images, tv_targets)):
        _same(_run(small_model, ins, tgts, True), expected[0])
        _same(_run(small_model, ins, None, False), expected[1])


class _OnlyArray:
    """An array-like of another library that only offers ``__array__``."""

    def __init__(self, a):
        self._a = a

    def __array__(self, dtype=None, copy=None):
        return self._a


class _OnlyDLPack:
    """One that only offers DLPack (as JAX and TensorFlow arrays do)."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def test_array_interface_and_dlpack_go_in(small_model):
    images, targets = _batch(np.random.default_rng(1))
    expected = _run(small_model, images, targets, True)
    for wrap in (_OnlyArray, _OnlyDLPack):
        wrapped = [{k: wrap(v) if isinstance(v, np.ndarray) else v for k, v in t.items()} for t in targets]
        _same(_run(small_model, [wrap(image) for image in images], wrapped, True), expected)


def test_no_host_copy_of_a_cpu_tensor(torch):
    from tinymaskrcnn.models.mask_rcnn import model_inputs

    image = torch.rand(3, 8, 8)
    (converted,), _ = model_inputs([image])
    assert isinstance(converted, np.ndarray) and np.shares_memory(converted, image.numpy())


def test_anything_else_is_one_line_naming_the_argument(small_model):
    images, _ = _batch(np.random.default_rng(2))
    small_model.eval()
    with pytest.raises(TypeError) as err:
        small_model([images[0], "photo.png"])
    assert str(err.value) == ("images[1] is a str: the model takes NumPy or CuPy arrays, Tensors, torch tensors "
                              "(tv_tensors included), or anything with __array__ or __dlpack__")
    with pytest.raises(TypeError, match="images must be a list of"):
        small_model(images[0])


def test_torch_is_not_imported_for_numpy_inputs():
    code = ("import sys, numpy as np, tinymaskrcnn as tm\n"
            "m = tm.models.maskrcnn_resnet18_fpn(num_classes=2, fpn_channels=8, representation_size=16, "
            "mask_channels=8, min_size=32, max_size=32).eval()\n"
            "m.to('cpu', 'float32')\n"
            "with tm.no_grad():\n"
            "    m([np.zeros((3, 32, 32), np.float32)])\n"
            "print('torch' in sys.modules)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------
# 3. Module.to as torch's
# ---------------------------------------------------------------------------------------------

def _dtypes(module):
    return {k: v.dtype for k, v in module.state_dict().items()}


def test_module_to_takes_torchs_forms(torch):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    forms = [((torch.float64,), {}), (("cpu", torch.float32), {}), ((torch.device("cpu"), np.float64), {}),
             ((), {"device": torch.device("cpu"), "dtype": torch.float32}), (("float64",), {"non_blocking": True}),
             ((torch.zeros(1, dtype=torch.float32),), {}), ((np.zeros(1),), {}), ((np.float32, True), {}),
             ((tm.Tensor(np.zeros(1)),), {}), (("cpu:0",), {}), ((), {"dtype": np.float32})]
    expected = [np.float64, np.float32, np.float64, np.float32, np.float64, np.float32, np.float64, np.float32,
                np.float64, np.float64, np.float32]
    for (args, kwargs), dtype in zip(forms, expected):
        assert model.to(*args, **kwargs) is model
        assert _dtypes(model) == {k: (np.int64 if k.endswith("num_batches_tracked") else dtype)
                                  for k in model.state_dict()}, (args, kwargs)
    assert isinstance(model[0].weight.data, np.ndarray)


def test_module_to_refuses_what_torch_refuses_and_names_the_gpu_route():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="floating dtype"):
        model.to(np.int32)
    with pytest.raises(TypeError, match="argument 1 is float"):
        model.to(3.0)
    with pytest.raises(TypeError, match="device twice"):
        model.to("cpu", device="cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu:0'"):
        model.to(device="tpu:0")
    try:
        import cupy
        gpu = cupy.cuda.is_available()
    except Exception:  # noqa: BLE001 - no CuPy or no driver
        gpu = False
    if not gpu:
        for device in ("cuda", "cuda:0"):
            with pytest.raises(CUDAUnavailableError):
                model.to(device)


# ---------------------------------------------------------------------------------------------
# 2. The builders
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights_folder(tmp_path_factory):
    """A torch cache folder holding torchvision's two files by their published names, with
    random weights: an ImageNet ResNet-50 (random buffers, so loading them shows) and a COCO Mask
    R-CNN whose batch norms are calibrated (activations of order one, so outputs mean something)."""
    from conftest import require_reference

    torch = require_reference()
    import torchvision

    from test_weights import randomize_buffers
    from tinymaskrcnn.chapters.reference_models import torchvision_maskrcnn

    home = tmp_path_factory.mktemp("torch_home")
    folder = home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(randomize_buffers(torch, torchvision.models.resnet50(weights=None)).state_dict(), folder / IMAGENET_FILE)
    torch.save(torchvision_maskrcnn(num_classes=91, calibration_size=(64, 96)).state_dict(), folder / COCO_FILE)
    return home


@pytest.fixture
def torch_home(weights_folder, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(weights_folder))
    return weights_folder


def _layout(model):
    """What the weights decide: each module's class (BatchNorm2d or FrozenBatchNorm2d) and which
    parameters train."""
    modules = {name: type(m).__name__ for name, m in model.named_modules() if "BatchNorm" in type(m).__name__}
    return modules, {name: p.requires_grad for name, p in model.named_parameters()}


BUILDS = {
    "no weights": dict(weights=None, weights_backbone=None),
    "no weights, trainable layers ignored": dict(weights=None, weights_backbone=None, trainable_backbone_layers=2),
    "ImageNet backbone by name": dict(weights_backbone="IMAGENET1K_V1"),
    "ImageNet backbone, 1 trainable": dict(weights_backbone="ResNet50_Weights.IMAGENET1K_V1",
                                           trainable_backbone_layers=1),
    "COCO detector by name": dict(weights="DEFAULT"),
}


@pytest.mark.parametrize("name", list(BUILDS))
def test_builder_decides_norm_and_trainable_layers_as_torchvision(torch, torch_home, name):
    import torchvision

    kwargs = BUILDS[name]
    with warnings.catch_warnings(record=True) as theirs_warned:
        warnings.simplefilter("always")
        theirs = torchvision.models.detection.maskrcnn_resnet50_fpn(**kwargs, **SMALL)
    with warnings.catch_warnings(record=True) as ours_warned:
        warnings.simplefilter("always")
        ours = maskrcnn_resnet50_fpn(**kwargs, **SMALL)
    assert _layout(ours) == _layout(theirs)
    assert [str(w.message).startswith("trainable_backbone_layers=2 has no effect") for w in ours_warned
            if "trainable_backbone_layers" in str(w.message)] == \
        [True for w in theirs_warned if "trainable_backbone_layers" in str(w.message)]
    their_state = theirs.state_dict()
    if kwargs.get("weights") or kwargs.get("weights_backbone"):  # both read the same file
        loaded = [k for k in their_state if k.startswith("backbone.body.") or kwargs.get("weights")]
        for key in loaded:
            np.testing.assert_array_equal(ours.state_dict()[key], their_state[key].numpy(), err_msg=key)


def test_coco_weights_by_name_give_torchvision_outputs(torch, torch_home):
    """weights="DEFAULT" finds the cached COCO file, takes its 91 classes and, as torchvision
    does for that file, eps = 0 in the frozen batch norms: the detections agree."""
    import torchvision

    theirs = torchvision.models.detection.maskrcnn_resnet50_fpn(weights="DEFAULT", **SMALL).eval()
    ours = maskrcnn_resnet50_fpn(weights="DEFAULT", **SMALL).eval()
    assert ours.roi_heads.box_predictor.cls_score.weight.shape[0] == 91
    assert {m.eps for m in ours.modules() if isinstance(m, nn.FrozenBatchNorm2d)} == {0.0}
    image = np.random.default_rng(0).uniform(0, 1, (3, 64, 96)).astype(np.float32)
    with torch.no_grad():
        expected = theirs([torch.from_numpy(image)])[0]
    with tm.no_grad():
        got = ours([torch.from_numpy(image)])[0]
    assert len(got["scores"]) == len(expected["scores"]) > 0
    np.testing.assert_allclose(got["scores"][:5], expected["scores"][:5].numpy(), atol=1e-4)
    np.testing.assert_allclose(got["boxes"][:5], expected["boxes"][:5].numpy(), atol=1e-2)


def test_weights_names_resolve_to_the_cached_file(torch, torch_home):
    from torchvision.models import ResNet50_Weights
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    folder = torch_home / "hub" / "checkpoints"
    for given in ("DEFAULT", "COCO_V1", "MaskRCNN_ResNet50_FPN_Weights.COCO_V1", MaskRCNN_ResNet50_FPN_Weights.DEFAULT,
                  folder / COCO_FILE):
        assert tm.weights.resolve_weights(given, "maskrcnn_resnet50_fpn") == (str(folder / COCO_FILE), "COCO_V1")
    assert tm.weights.resolve_weights(ResNet50_Weights.IMAGENET1K_V1, "resnet50") == (str(folder / IMAGENET_FILE),
                                                                                     "IMAGENET1K_V1")
    with pytest.raises(ValueError, match="takes MaskRCNN_ResNet50_FPN_Weights"):
        tm.weights.resolve_weights(ResNet50_Weights.IMAGENET1K_V1, "maskrcnn_resnet50_fpn")
    with pytest.raises(FileNotFoundError, match="neither a file nor one of torchvision's names"):
        tm.weights.resolve_weights("COCO_V9", "maskrcnn_resnet50_fpn")


def test_a_missing_file_is_one_line_saying_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = os.path.join(str(tmp_path), "hub", "checkpoints")
    with pytest.raises(FileNotFoundError) as err:
        maskrcnn_resnet50_fpn(weights="DEFAULT")
    message = str(err.value)
    assert "\n" not in message and f"{COCO_FILE} is not in {folder}; put it there" in message
    assert f"https://download.pytorch.org/models/{COCO_FILE}" in message
    with pytest.raises(FileNotFoundError, match=f"weights_backbone: .*{IMAGENET_FILE} is not in .*=None starts"):
        maskrcnn_resnet50_fpn()  # torchvision's default: the ImageNet backbone
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tm.weights.torch_hub_checkpoints() == str(tmp_path / "xdg" / "torch" / "hub" / "checkpoints")


def test_imagenet_file_loads_into_the_backbone_alone(torch, torch_home):
    path = torch_home / "hub" / "checkpoints" / IMAGENET_FILE
    state = torch.load(path)
    model = maskrcnn_resnet50_fpn(weights_backbone=str(path), num_classes=3, **SMALL)
    own = model.state_dict()
    for key, value in state.items():
        if not key.startswith("fc.") and not key.endswith("num_batches_tracked"):  # frozen BN drops the counter
            np.testing.assert_array_equal(own["backbone.body." + key], value.numpy(), err_msg=key)
    resnet = tm.models.resnet50(weights=str(path))
    assert resnet.fc.weight.shape == (1000, 2048)
    with pytest.raises(ValueError, match="an ImageNet ResNet's weights, not a detector's: pass it as weights_backbone"):
        maskrcnn_resnet50_fpn(weights=str(path))
    with pytest.raises(ValueError, match="num_classes=2 but the weights have 91 classes"):
        maskrcnn_resnet50_fpn(weights="DEFAULT", num_classes=2)


def test_a_from_scratch_resnet50_trains_with_finite_losses():
    """torchvision's from-scratch configuration (BatchNorm2d, all five stages) and the tutorial's
    recipe (SGD with momentum, the reference engine's linear warmup): ten iterations, every
    total loss finite and below 30. The frozen, identity batch norms this builder used to make
    without weights leave a random ResNet-50 unnormalised: here a first loss of 63 and 363 at the
    fifth iteration (docs/from-torchvision.md has a run that ends in NaN)."""
    tm.manual_seed(0)
    fewer_rois = dict(rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100, box_batch_size_per_image=32)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3, **SMALL, **fewer_rois)
    assert not any(isinstance(m, nn.FrozenBatchNorm2d) for m in model.modules())
    assert all(p.requires_grad for p in model.backbone.body.parameters())
    images, targets = (batch[:1] for batch in _batch(np.random.default_rng(3)))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = tm.optim.SGD(params, lr=0.005, momentum=0.9, weight_decay=0.0005)
    warmup = tm.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.001, total_iters=59)
    model.train()
    for _ in range(10):
        losses = model(images, targets)
        total = sum(losses.values())
        assert np.isfinite(total.item()) and total.item() < 30, {k: v.item() for k, v in losses.items()}
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        warmup.step()


# ---------------------------------------------------------------------------------------------
# 4. torchvision-style transforms in the project's DataLoader
# ---------------------------------------------------------------------------------------------

class _Pairs:
    def __init__(self, pairs):
        self.pairs = pairs

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        return self.pairs[i]


def test_dataloader_takes_torchvision_style_transforms(torch, small_model):
    from torchvision import tv_tensors
    from torchvision.transforms import v2 as T

    images, targets = _batch(np.random.default_rng(4))
    data = _Pairs(list(zip(images, targets)))

    def to_tv_tensors(image, target):  # v2 transforms pass NumPy arrays through untouched
        image = tv_tensors.Image(torch.from_numpy(image))
        return image, {**target, "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(target["boxes"]), format="XYXY",
                                                                   canvas_size=image.shape[-2:]),
                       "masks": tv_tensors.Mask(torch.from_numpy(target["masks"]))}

    flip = T.Compose([to_tv_tensors, T.RandomHorizontalFlip(1.0), T.ToPureTensor()])
    loader = DataLoader(data, batch_size=2, shuffle=False, transforms=flip)
    (flipped, flipped_targets), = list(loader)
    np.testing.assert_array_equal(flipped[0].numpy(), images[0][..., ::-1])
    np.testing.assert_array_equal(flipped_targets[0]["boxes"].numpy(), [[40, 6, 75, 50], [10, 10, 50, 40]])
    assert _run(small_model, flipped, flipped_targets, True).keys() == {
        "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}

    calls = []
    DataLoader(data, shuffle=False, transforms=lambda image, target: calls.append(2) or (image, target)).load(0, 0)
    assert calls == [2]
    ours = Compose([RandomHorizontalFlip(0.5)])
    assert takes_generator(ours) and takes_generator(lambda image, target, rng: None) and not takes_generator(flip)


# ---------------------------------------------------------------------------------------------
# 5. The tutorial, ported
# ---------------------------------------------------------------------------------------------

def make_person_set(root, n=5, h=64, w=96, seed=0):
    """A COCO instances file with a 'person' category and PNG images of n bright rectangles
    ("people") on noise, as the tutorial's dataset class reads it."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(n):
        pixels = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        for _ in range(1 + i % 2):
            bw, bh = int(rng.integers(12, 30)), int(rng.integers(20, 50))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            pixels[y:y + bh, x:x + bw] = rng.integers(150, 255, 3)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                                "area": bw * bh, "bbox": [x, y, bw, bh],
                                "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]})
        Image.fromarray(pixels).save(root / "images" / f"{i:04d}.png")
        images.append({"id": i + 1, "file_name": f"{i:04d}.png", "height": h, "width": w})
    (root / "persons.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": [
        {"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]}))
    return root


def test_the_ported_tutorial_runs(torch, torch_home, tmp_path):
    """The port fine-tunes the (cached, random) COCO weights on five tiny images for two epochs,
    evaluates with COCOeval and draws a prediction with torchvision's drawing functions."""
    data = make_person_set(tmp_path / "persons")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), TORCH_HOME=str(torch_home), MPLBACKEND="Agg")
    out = subprocess.run([sys.executable, str(REPO / "examples" / "tinymaskrcnn_finetuning.py"),
                          "--images", str(data / "images"), "--annotations", str(data / "persons.json"),
                          "--num-test", "1", "--min-size", "64", "--max-size", "96", "--lr", "0.0001",
                          "--workers", "0", "--out", str(tmp_path / "prediction.png")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert re.search(r"Epoch: \[1\] \[1/2\] lr: 0\.000100", out.stdout), out.stdout
    assert "That's it!" in out.stdout and (tmp_path / "prediction.png").stat().st_size > 0


# a line the port may change: the library's names, and the one conversion for the drawing
ALLOWED = [r"import tinymaskrcnn as tm", r"from tinymaskrcnn\.models\.roi_heads import \w+",
           r"\s*model = tm\.models\.maskrcnn_resnet50_fpn\(", r".*\btm\.optim\.(SGD|lr_scheduler\.\w+)\(.*",
           r"\s*with tm\.no_grad\(\):",
           r"\s*pred = \{k: torch\.as_tensor\(v\) for k, v in pred\.items\(\)\}  # .*"]


def test_the_port_differs_from_the_tutorial_only_in_names():
    theirs = (REPO / "examples" / "torchvision_finetuning.py").read_text().splitlines()
    ours = (REPO / "examples" / "tinymaskrcnn_finetuning.py").read_text().splitlines()
    added = [line[1:] for line in difflib.unified_diff(theirs, ours, lineterm="", n=0)
             if line.startswith("+") and not line.startswith("+++")]
    assert len(added) == 10
    for line in added:
        assert any(re.fullmatch(pattern, line) for pattern in ALLOWED), line
    shown = "\n".join(difflib.unified_diff(theirs, ours, "examples/torchvision_finetuning.py",
                                           "examples/tinymaskrcnn_finetuning.py", lineterm="", n=1))
    assert shown in (REPO / "docs" / "from-torchvision.md").read_text()  # the porting page shows this diff
