"""weights.py: the torch-free .pth reader, load_torchvision, our .npz checkpoints, download checks.

torch is used only to *write* .pth files and as the reference for what they hold; every read
goes through tinymaskrcnn.weights, which never imports torch.
"""
import collections
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest
from conftest import require_reference

import tinymaskrcnn as tm
from tinymaskrcnn import nn, weights
from tinymaskrcnn.models.backbone import resnet_fpn_backbone
from tinymaskrcnn.models.resnet import resnet18

FORMATS = ["zip", "legacy"]  # torch.save's format since PyTorch 1.6, and the one before (older published weights)


def torch_save(torch, obj, path, fmt):
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


def randomize_buffers(torch, model):
    """Random running statistics (and frozen affine buffers), so buffers are checked as data."""
    with torch.no_grad():
        for name, b in model.named_buffers():
            if b.dtype.is_floating_point:
                b.uniform_(0.5, 2.0)
            else:
                b.fill_(7)  # num_batches_tracked
    return model


def assert_same_arrays(ours, reference):
    """Same keys in the same order, and every array bit-identical with the same dtype."""
    assert list(ours) == list(reference)
    for key, ref in reference.items():
        ref = ref.detach().numpy()
        assert ours[key].dtype == ref.dtype, key
        assert ours[key].shape == ref.shape, key
        assert ours[key].tobytes() == ref.tobytes(), key


# ---------------------------------------------------------------------------------------------
# read_pth
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_read_resnet18_state_dict(torch, tmp_path, fmt, dtype):
    import torchvision

    torch.manual_seed(0)
    model = randomize_buffers(torch, torchvision.models.resnet18(weights=None)).to(getattr(torch, dtype))
    state = model.state_dict()
    assert state["bn1.num_batches_tracked"].dtype == torch.int64
    ours = weights.read_pth(torch_save(torch, state, tmp_path / "r18.pth", fmt))
    assert isinstance(ours, collections.OrderedDict)
    assert_same_arrays(ours, state)


@pytest.mark.parametrize("fmt", FORMATS)
def test_reading_never_imports_torch(torch, tmp_path, fmt):
    path = torch_save(torch, {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}, tmp_path / "lin.pth", fmt)
    script = (  # torch made unimportable: any import of it inside raises
        "import sys; sys.modules['torch'] = None\n"
        "from tinymaskrcnn import nn, weights\n"
        f"weights.load_torchvision(nn.Linear(3, 2), {str(path)!r})\n"
        "assert sys.modules['torch'] is None\n")
    subprocess.run([sys.executable, "-c", script], check=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_views_strides_and_dtypes(torch, tmp_path, fmt):
    torch.manual_seed(0)
    base = torch.randn(4, 6, dtype=torch.float64)
    obj = {
        "transposed": base.t(),                      # non-contiguous, shares base's storage
        "rows": base[1:3],                           # storage offset
        "cols": base[:, 1::2],                       # offset and stride 2
        "expanded": torch.arange(3.0).expand(4, 3),  # stride 0
        "base": base,
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "half": torch.randn(5).half(),
        "bfloat16": torch.randn(5).bfloat16(),
        "int32": torch.arange(-3, 3, dtype=torch.int32),
        "int16": torch.arange(-3, 3, dtype=torch.int16),
        "int8": torch.arange(-3, 3, dtype=torch.int8),
        "uint8": torch.arange(250, 256, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "complex": torch.randn(3, dtype=torch.complex64),
        "parameter": torch.nn.Parameter(torch.randn(2, 2)),
        "nested": {"list": [torch.ones(2), 3, "text"], "tuple": (1.5, None)},
    }
    ours = weights.read_pth(torch_save(torch, obj, tmp_path / "v.pth", fmt))
    for key, ref in obj.items():
        if key == "nested":
            continue
        ref = ref.detach()
        expected = ref.float().numpy() if ref.dtype == torch.bfloat16 else ref.numpy()  # bf16 widens exactly
        assert ours[key].dtype == expected.dtype, key
        assert ours[key].shape == expected.shape, key
        assert np.array_equal(ours[key], expected), key
    assert np.array_equal(ours["nested"]["list"][0], np.ones(2, np.float32))
    assert ours["nested"]["list"][1:] == [3, "text"] and ours["nested"]["tuple"] == (1.5, None)
    # views of one storage are views of one array, as in torch: a write shows through all
    assert np.shares_memory(ours["transposed"], ours["base"]) and np.shares_memory(ours["rows"], ours["cols"])
    ours["base"][1, 1] = 100.0
    assert ours["transposed"][1, 1] == 100.0 and ours["rows"][0, 1] == 100.0 and ours["cols"][1, 0] == 100.0


def test_big_endian_archive(torch, tmp_path):
    """A zip written on a big-endian machine (byteorder 'big', swapped storage bytes)."""
    x = torch.randn(3, 4, dtype=torch.float64)
    little = torch_save(torch, {"x": x}, tmp_path / "little.pth", "zip")
    big = tmp_path / "big.pth"
    with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename:
                data = np.frombuffer(data, np.float64).byteswap().tobytes()
            dst.writestr(info, data)
    reference = torch.load(big)["x"]  # torch agrees that the hand-made file holds x
    assert torch.equal(reference, x)
    assert np.array_equal(weights.read_pth(big)["x"], x.numpy())


class _Payload:
    """Pickles as a call of ``func(*args)``: what a malicious .pth does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _zip_pth(path, payload):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"weight": payload}, protocol=2))
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    return path


LEGACY_HEADER = (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True})  # magic, protocol, system info


def _legacy_pth(path, payload):
    with open(path, "wb") as f:
        for obj in (*LEGACY_HEADER, {"weight": payload}, []):
            pickle.dump(obj, f, protocol=2)
    return path


@pytest.mark.parametrize("writer", [_zip_pth, _legacy_pth])
def test_refuses_foreign_globals_without_running_them(tmp_path, writer):
    marker = tmp_path / "pwned"
    evil_eval = _Payload(eval, f"open({str(marker)!r}, 'w').close()")
    # the payload is live: plain pickle runs it and the marker appears ...
    pickle.loads(pickle.dumps(evil_eval))
    assert marker.exists()
    marker.unlink()
    # ... our reader refuses it, naming the global, and nothing runs
    with pytest.raises(weights.CheckpointError, match=r"'(builtins|__builtin__)\.eval'"):
        weights.read_pth(writer(tmp_path / "eval.pth", evil_eval))
    evil_system = _Payload(os.system, f"touch {marker}")
    with pytest.raises(weights.CheckpointError, match=rf"'{os.system.__module__}\.system'"):
        weights.read_pth(writer(tmp_path / "system.pth", evil_system))
    assert not marker.exists()


def test_plain_pickle_is_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "plain.pth"
    path.write_bytes(pickle.dumps(_Payload(eval, f"open({str(marker)!r}, 'w').close()")))
    with pytest.raises(ValueError, match="not a file written by torch.save"):
        weights.read_pth(path)
    assert not marker.exists()


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such .pth"):
        weights.read_pth(tmp_path / "absent.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ValueError, match="not a file written by torch.save"):
        weights.read_pth(junk)
    script = tmp_path / "script.pt"
    with zipfile.ZipFile(script, "w") as z:
        z.writestr("m/data.pkl", pickle.dumps({}))
        z.writestr("m/constants.pkl", pickle.dumps(()))
    with pytest.raises(ValueError, match="TorchScript"):
        weights.read_pth(script)
    old = tmp_path / "old.pth"
    with tarfile.open(old, "w") as t:
        info = tarfile.TarInfo("pickle")
        info.size = 4
        t.addfile(info, io.BytesIO(b"abcd"))
    with pytest.raises(ValueError, match="pre-0.4 tar format.*re-save"):
        weights.read_pth(old)


def _text(s):
    return b"X" + len(s).to_bytes(4, "little") + s.encode()  # BINUNICODE


def _small(n):
    return b"K" + bytes([n])  # BININT1


def _tensor_pickle(key, numel, offset, size, view=b""):
    """{'w': _rebuild_tensor_v2(<FloatStorage ``key`` of ``numel``>, offset, (size,), (1,), False,
    OrderedDict())} written opcode by opcode as torch writes it (protocol 2); ``view`` adds the
    legacy format's storage-view record."""
    storage = b"(" + _text("storage") + b"ctorch\nFloatStorage\n" + _text(key) + _text("cpu") + _small(numel)
    return (b"\x80\x02}" + _text("w") + b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage + view + b"tQ"
            + _small(offset) + _small(size) + b"\x85" + _small(1) + b"\x85\x89ccollections\nOrderedDict\n)RtRs.")


@pytest.mark.parametrize("offset", [1, 2])
def test_storage_bounds_are_checked(tmp_path, offset):
    """A tensor record reaching past its storage is an error, not an out-of-bounds view."""
    path = tmp_path / "crafted.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a/data.pkl", _tensor_pickle("0", 4, offset, 3))
        z.writestr("a/data/0", np.arange(4, dtype=np.float32).tobytes())
    if offset == 1:  # in bounds: the crafted record is a valid tensor
        assert np.array_equal(weights.read_pth(path)["w"], np.array([1, 2, 3], np.float32))
    else:
        with pytest.raises(weights.CheckpointError, match="reach element 4 of a storage of 4"):
            weights.read_pth(path)


def test_legacy_storage_view(tmp_path):
    """Old legacy files may point a tensor at a view (offset 2, 3 elements) of a root storage."""
    path = tmp_path / "old.pth"
    with open(path, "wb") as f:
        for obj in LEGACY_HEADER:
            pickle.dump(obj, f, protocol=2)
        f.write(_tensor_pickle("root", 6, 0, 3, view=_text("v") + _small(2) + _small(3) + b"\x87"))
        pickle.dump(["root"], f, protocol=2)
        f.write((6).to_bytes(8, "little") + np.arange(6, dtype="<f4").tobytes())
    assert np.array_equal(weights.read_pth(path)["w"], np.array([2, 3, 4], np.float32))


# ---------------------------------------------------------------------------------------------
# load_torchvision
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def imagenet_resnet18(tmp_path_factory):
    """A torchvision ImageNet-style resnet18 checkpoint (BatchNorm2d, with fc), random weights."""
    torch = require_reference()
    import torchvision

    torch.manual_seed(1)
    state = randomize_buffers(torch, torchvision.models.resnet18(weights=None)).state_dict()
    return torch_save(torch, state, tmp_path_factory.mktemp("w") / "resnet18-0000.pth", "zip"), state


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_load_resnet18_by_name(imagenet_resnet18, dtype):
    path, state = imagenet_resnet18
    model = resnet18().to(dtype=dtype)
    result = weights.load_torchvision(model, path)
    assert result == weights.LoadResult([], [], [])
    own = model.state_dict()
    assert list(own) == list(state)
    for key, ref in state.items():
        ref = ref.numpy()
        expected_dtype = np.int64 if ref.dtype == np.int64 else dtype
        assert own[key].dtype == expected_dtype, key
        assert np.array_equal(own[key], ref.astype(expected_dtype)), key


def test_imagenet_weights_into_detection_backbone(imagenet_resnet18):
    """ImageNet ResNet (BatchNorm2d + fc) into a FrozenBatchNorm2d backbone body: fc excluded,
    num_batches_tracked dropped, everything else loaded; by prefix or on the body itself."""
    path, state = imagenet_resnet18
    for target, prefix in [("whole", "body."), ("body", "")]:
        backbone = resnet_fpn_backbone("resnet18")
        fpn_before = {k: v.copy() for k, v in backbone.fpn.state_dict().items()}
        module = backbone if target == "whole" else backbone.body
        result = weights.load_torchvision(module, path, prefix=prefix, exclude="fc." if prefix else ("fc.",))
        assert result == weights.LoadResult([], [], [])
        own = backbone.state_dict()
        for key, ref in state.items():
            if key.startswith("fc.") or key.endswith("num_batches_tracked"):
                continue
            assert np.array_equal(own["body." + key], ref.numpy()), key
        for key, before in fpn_before.items():  # outside the prefix: untouched
            assert np.array_equal(backbone.fpn.state_dict()[key], before), key
    with pytest.raises(ValueError, match=r"unexpected \(2.*fc\.weight \(1000, 512\), fc\.bias \(1000,\)"):
        weights.load_torchvision(resnet_fpn_backbone("resnet18").body, path)


def test_load_backbone_with_fpn(torch):
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone as tv_resnet_fpn_backbone

    torch.manual_seed(2)
    theirs = randomize_buffers(torch, tv_resnet_fpn_backbone(backbone_name="resnet18", weights=None))
    state = theirs.state_dict()
    ours = resnet_fpn_backbone("resnet18")
    weights.load_torchvision(ours, state)  # a mapping of torch tensors works too
    assert_same_arrays(ours.state_dict(), state)


def test_load_maskrcnn_state_dict(torch):
    import torchvision

    from tinymaskrcnn.models.mask_rcnn import maskrcnn_resnet50_fpn

    torch.manual_seed(3)
    # without any weights both build BatchNorm2d (num_batches_tracked included)
    theirs = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    state = randomize_buffers(torch, theirs).state_dict()
    ours = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    weights.load_torchvision(ours, {"model": state, "epoch": 26})  # wrapped, as training scripts save it
    own = ours.state_dict()
    assert list(own) == list(state)
    assert_same_arrays(own, state)


def test_mismatch_is_reported_and_strict_false_loads_the_rest(imagenet_resnet18):
    _, reference = imagenet_resnet18
    state = collections.OrderedDict((k, v.numpy()) for k, v in reference.items())
    del state["layer1.0.conv1.weight"]
    state["layer9.extra"] = np.zeros((2, 3), np.float32)
    state["fc.weight"] = np.zeros((10, 512), np.float32)
    model = resnet18()
    before = model.state_dict()["conv1.weight"].copy()
    with pytest.raises(ValueError) as err:
        weights.load_torchvision(model, state)
    message = str(err.value)
    assert "missing (1, in the module, not in the state): layer1.0.conv1.weight (64, 64, 3, 3)" in message
    assert "unexpected (1, in the state, not in the module): layer9.extra (2, 3)" in message
    assert "mis-shaped (1): fc.weight: state (10, 512), module (1000, 512)" in message
    assert np.array_equal(model.state_dict()["conv1.weight"], before)  # a failed strict load loads nothing

    result = weights.load_torchvision(model, {"state_dict": state}, strict=False)
    assert result.missing == [("layer1.0.conv1.weight", (64, 64, 3, 3))]
    assert result.unexpected == [("layer9.extra", (2, 3))]
    assert result.mismatched == [("fc.weight", (10, 512), (1000, 512))]
    own = model.state_dict()
    assert np.array_equal(own["conv1.weight"], state["conv1.weight"])
    assert np.array_equal(own["fc.bias"], state["fc.bias"])


def test_mapping_of_tensors_and_arrays():
    layer = nn.Linear(3, 2)
    w, b = np.arange(6.0).reshape(2, 3), np.array([1.0, 2.0])
    weights.load_torchvision(layer, {"weight": tm.Tensor(w), "bias": b})
    assert layer.weight.data.dtype == np.float32
    assert np.array_equal(layer.weight.data, w) and np.array_equal(layer.bias.data, b)


def test_state_dict_from_errors():
    with pytest.raises(ValueError, match="no state_dict found"):
        weights.state_dict_from({"epoch": 3, "args": "x"})
    with pytest.raises(TypeError, match="expected a state_dict mapping"):
        weights.state_dict_from([np.zeros(2)])


# ---------------------------------------------------------------------------------------------
# load_pretrained: what `train --weights` does
# ---------------------------------------------------------------------------------------------

def _snapshot(module):
    return {k: v.copy() for k, v in module.state_dict().items()}


def test_imagenet_resnet18_starts_the_detector_backbone(torch, imagenet_resnet18):
    """torchvision's ImageNet resnet18 (conv1.weight, layer1.0..., fc.weight) into the detector's
    backbone.body: every array equal to torch's, fc left out, nothing else touched; in float64 the
    loaded body gives torchvision's ResNet features."""
    import torchvision

    from tinymaskrcnn.models.mask_rcnn import maskrcnn_resnet18_fpn

    path, state = imagenet_resnet18
    model = maskrcnn_resnet18_fpn(num_classes=4, norm="batch")
    before = _snapshot(model)
    lines = weights.load_pretrained(model, path)
    assert lines[0] == (f"weights {path} (an ImageNet ResNet into backbone.body., fc left out): loaded 120 of "
                        f"{len(before)} arrays, the backbone's 120 of 120")
    own = model.state_dict()
    for key, ref in state.items():
        if not key.startswith("fc."):
            assert own["backbone.body." + key].dtype == ref.numpy().dtype, key
            assert np.array_equal(own["backbone.body." + key], ref.numpy()), key
    for key, value in before.items():
        if not key.startswith("backbone.body."):
            assert np.array_equal(own[key], value), key  # FPN and heads stay as built

    theirs = torchvision.models.resnet18(weights=None).double().eval()
    theirs.load_state_dict(state)
    theirs.double()
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 96))
    with torch.no_grad():
        t = theirs.maxpool(theirs.relu(theirs.bn1(theirs.conv1(torch.from_numpy(x)))))
        expected = []
        for layer in (theirs.layer1, theirs.layer2, theirs.layer3, theirs.layer4):
            t = layer(t)
            expected.append(t.numpy())
    model.to(dtype=np.float64).eval()
    with tm.no_grad():
        features = model.backbone.body(tm.Tensor(x))
    assert list(features) == ["0", "1", "2", "3"]
    for ours, ref in zip(features.values(), expected):
        assert ours.data.dtype == np.float64
        assert np.abs(ours.data - ref).max() <= 1e-9 * np.abs(ref).max()


def test_imagenet_resnet18_into_the_instance_norm_model(imagenet_resnet18):
    """The main job's model normalises each image by its own statistics: convs and affine loaded,
    BatchNorm's running statistics reported as ignored."""
    from tinymaskrcnn.engine import SHAPES_MODEL_DEFAULTS
    from tinymaskrcnn.models.mask_rcnn import maskrcnn_resnet18_fpn

    path, state = imagenet_resnet18
    model = maskrcnn_resnet18_fpn(num_classes=4, **SHAPES_MODEL_DEFAULTS)
    lines = weights.load_pretrained(model, path)
    assert "loaded 60 of 102 arrays, the backbone's 60 of 60" in lines[0]
    assert lines[-1].startswith("  in the file but not in the model (ignored): 60 arrays, e.g. bn1.running_mean, ")
    assert np.array_equal(model.state_dict()["backbone.body.layer4.1.bn2.weight"], state["layer4.1.bn2.weight"].numpy())


def test_detector_checkpoint_keeps_heads_of_another_shape():
    from tinymaskrcnn.models.mask_rcnn import maskrcnn_resnet18_fpn

    tm.manual_seed(0)
    coco = maskrcnn_resnet18_fpn(num_classes=91, norm="batch").state_dict()
    tm.manual_seed(1)
    model = maskrcnn_resnet18_fpn(num_classes=4, norm="batch")
    before = _snapshot(model)
    lines = weights.load_pretrained(model, coco)
    heads = {"roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias",
             "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias",
             "roi_heads.mask_predictor.mask_fcn_logits.weight", "roi_heads.mask_predictor.mask_fcn_logits.bias"}
    assert lines[0] == f"weights the state (a detector's checkpoint): loaded {len(before) - 6} of {len(before)} " \
                       "arrays, the backbone's 120 of 120"
    assert lines[1].startswith("  kept as built (shape differs): "
                               "roi_heads.box_predictor.cls_score.weight (91, 256)->(4, 256)")
    for key, value in model.state_dict().items():
        assert np.array_equal(value, before[key] if key in heads else coco[key]), key


def test_our_own_checkpoint_starts_a_model_of_other_classes(tmp_path):
    """A run's checkpoint.npz (the model state under 'model', beside the optimizer's and the
    rest) starts a model for another set of classes: everything but the predictors loaded."""
    from tinymaskrcnn.models.mask_rcnn import maskrcnn_resnet18_fpn

    tm.manual_seed(0)
    trained = maskrcnn_resnet18_fpn(num_classes=4, norm="instance", fpn_channels=16).state_dict()
    path = tmp_path / "checkpoint.npz"
    weights.save(path, {"model": trained, "optimizer": {"state": {"0": np.ones(3)}}, "iteration": 7})
    tm.manual_seed(1)
    model = maskrcnn_resnet18_fpn(num_classes=3, norm="instance", fpn_channels=16)
    before = _snapshot(model)
    lines = weights.load_pretrained(model, path)
    assert lines[0] == f"weights {path} (a detector's checkpoint): loaded {len(before) - 6} of {len(before)} " \
                       "arrays, the backbone's 60 of 60"
    predictors = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")
    for key, value in model.state_dict().items():
        assert np.array_equal(value, before[key] if key.startswith(predictors) else trained[key]), key


def test_pretrained_that_fits_nothing_or_part_of_the_backbone_is_refused(torch, imagenet_resnet18):
    """Today's silent 'loaded 0 of 102 arrays' and a resnet50 file for a resnet18 model: errors
    with the counts and example keys, and the model untouched."""
    import torchvision

    from tinymaskrcnn.models.mask_rcnn import maskrcnn_resnet18_fpn

    model = maskrcnn_resnet18_fpn(num_classes=4, norm="batch")
    before = _snapshot(model)
    unrelated = {"encoder.weight": np.zeros((3, 3)), "decoder.weight": np.zeros(3)}
    with pytest.raises(weights.CheckpointError,
                       match=r"the state \(2 arrays\) into MaskRCNN \(162 arrays\): no name matches.*The file's: "
                             r"encoder.weight, decoder.weight; the model's: backbone.body.conv1.weight"):
        weights.load_pretrained(model, unrelated)
    resnet50 = torchvision.models.resnet50(weights=None).state_dict()
    with pytest.raises(weights.CheckpointError,
                       match=r"only 97 of the backbone's 120 arrays fit; mis-shaped \(23\): backbone.body.layer1.0."
                             r"conv1.weight file \(64, 64, 1, 1\) model \(64, 64, 3, 3\).*resnet50 weights for a "
                             "resnet18 model"):
        weights.load_pretrained(model, resnet50)
    _, state = imagenet_resnet18
    partial = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    with pytest.raises(weights.CheckpointError, match=r"only 90 of the backbone's 120 arrays fit; not in the file "
                                                      r"\(30\): backbone.body.layer4.0.conv1.weight"):
        weights.load_pretrained(model, partial)
    for key, value in model.state_dict().items():
        assert np.array_equal(value, before[key]), key


# ---------------------------------------------------------------------------------------------
# our checkpoints
# ---------------------------------------------------------------------------------------------

def _example_state():
    rng = np.random.default_rng(0)
    model = collections.OrderedDict([
        ("conv.weight", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
        ("bn.running_var", rng.random(4)),
        ("bn.num_batches_tracked", np.array(12, np.int64)),
        ("empty", np.zeros((0, 5), np.float16)),
        ("fortran", np.asfortranarray(rng.standard_normal((3, 2)))),
        ("strided", rng.standard_normal((6, 4))[::2, ::-1]),
        ("mask", rng.random((2, 2)) > 0.5),
        ("bytes", np.arange(5, dtype=np.uint8)),
        ("text", np.array(["a", "bc"])),
    ])
    tm.manual_seed(7)
    tm.random.get_rng().standard_normal(3)  # a state that is not the seed's start
    return {
        "model": model,
        "optimizer": {"state": {0: {"momentum_buffer": rng.standard_normal(3).astype(np.float32)}},
                      "param_groups": [{"lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4, "params": [0, 1]}]},
        "iteration": 1200,
        "rng": tm.random.get_state(),
        "config": {"name": "shapes", "sizes": (32, 64), "flip": 0.5, "resume": None, "amp": False,
                   "scale": np.float32(1.5), "limit": float("inf"), "mixed": {(1, "a"): "tuple key", 2.5: [1, (2,)]}},
    }


def assert_same_tree(loaded, expected, path="state"):
    assert type(loaded) is type(expected), f"{path}: {type(loaded).__name__} vs {type(expected).__name__}"
    if isinstance(expected, np.ndarray):
        assert loaded.dtype == expected.dtype and loaded.shape == expected.shape, path
        assert loaded.tobytes() == np.ascontiguousarray(expected).tobytes(), path  # bit-identical
    elif isinstance(expected, dict):
        assert list(loaded) == list(expected), path
        for k in expected:
            assert_same_tree(loaded[k], expected[k], f"{path}/{k}")
    elif isinstance(expected, (list, tuple)):
        assert len(loaded) == len(expected), path
        for i, (a, b) in enumerate(zip(loaded, expected)):
            assert_same_tree(a, b, f"{path}/{i}")
    else:
        assert loaded == expected, path


def test_checkpoint_round_trip(tmp_path):
    state = _example_state()
    path = tmp_path / "ckpt.npz"
    weights.save(path, state)
    expected_draws = tm.random.get_rng().standard_normal(5)
    tm.manual_seed(123)  # move the generator elsewhere
    loaded = weights.load(path)
    assert_same_tree(loaded, state)
    tm.random.set_state(loaded["rng"])
    assert np.array_equal(tm.random.get_rng().standard_normal(5), expected_draws)
    assert os.listdir(tmp_path) == ["ckpt.npz"]
    with np.load(path, allow_pickle=False) as npz:  # an ordinary .npz: arrays readable by name
        assert np.array_equal(npz["model/conv.weight"], state["model"]["conv.weight"])


def test_save_refuses_what_it_cannot_store(tmp_path):
    with pytest.raises(TypeError, match="cannot save object at 'config/bad'"):
        weights.save(tmp_path / "c.npz", {"config": {"bad": object()}})
    with pytest.raises(TypeError, match="object array at 'x'"):
        weights.save(tmp_path / "c.npz", {"x": np.array([None, 1])})
    with pytest.raises(TypeError, match="expects a dict"):
        weights.save(tmp_path / "c.npz", [1, 2])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("interruption", [OSError("No space left on device"), KeyboardInterrupt()])
def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch, interruption):
    path = tmp_path / "ckpt.npz"
    first = {"model": {"w": np.arange(6.0)}, "iteration": 1}
    weights.save(path, first)
    real_write_array = np.lib.format.write_array
    calls = []

    def failing_write_array(fp, array, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second entry: write half of it, then die
            fp.write(np.ascontiguousarray(array).tobytes()[: array.nbytes // 2])
            raise interruption
        return real_write_array(fp, array, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", failing_write_array)
    second = {"model": {"w": np.arange(6.0) + 1, "v": np.ones(100)}, "iteration": 2}
    with pytest.raises(type(interruption)):
        weights.save(path, second)
    assert len(calls) == 2
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # no temporary file left behind
    assert_same_tree(weights.load(path), first)
    # without a previous checkpoint, nothing appears under the final name
    calls.clear()
    with pytest.raises(type(interruption)):
        weights.save(tmp_path / "new.npz", second)
    assert os.listdir(tmp_path) == ["ckpt.npz"]


def test_load_errors(tmp_path, torch):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        weights.load(tmp_path / "absent.npz")
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a tinymaskrcnn checkpoint"):
        weights.load(text)
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(2))
    with pytest.raises(ValueError, match="not a tinymaskrcnn checkpoint.*no '__tinymaskrcnn__'"):
        weights.load(plain)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(2))
    with pytest.raises(ValueError, match="single .npy array"):
        weights.load(single)
    pth = torch_save(torch, {"w": torch.zeros(2)}, tmp_path / "w.pth", "zip")
    with pytest.raises(ValueError, match="use read_pth or load_torchvision"):
        weights.load(pth)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        weights.save(tmp_path / "missing_dir" / "c.npz", {"a": 1})


# ---------------------------------------------------------------------------------------------
# download: the hash check (nothing is fetched from the network)
# ---------------------------------------------------------------------------------------------

def test_weight_urls_name_their_hash():
    for name in ("resnet18", "resnet34", "resnet50", "resnet101", "maskrcnn_resnet50_fpn_coco"):
        assert weights.WEIGHT_URLS[name].startswith("https://download.pytorch.org/models/")
    assert weights.WEIGHT_URLS["maskrcnn_resnet50_fpn_coco"].endswith("maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")
    assert all(len(weights.downloads._hash_prefix(url)) == 8 for url in weights.WEIGHT_URLS.values())


def test_sha256_check_rejects_a_wrong_file(tmp_path):
    content = b"pretend weights"
    prefix = hashlib.sha256(content).hexdigest()[:8]
    good = tmp_path / f"toy-{prefix}.pth"
    good.write_bytes(content)
    assert weights.verify_sha256(good) == hashlib.sha256(content).hexdigest()
    bad = tmp_path / f"other-{prefix}.pth"
    bad.write_bytes(content + b"!")
    with pytest.raises(ValueError, match=f"expected it to start with {prefix}"):
        weights.verify_sha256(bad)
    with pytest.raises(ValueError, match="no '-<sha256 prefix>.'"):
        weights.verify_sha256(tmp_path / "nohash.pth")


def test_download_verifies_before_publishing(tmp_path, monkeypatch):
    content = b"pretend weights"
    prefix = hashlib.sha256(content).hexdigest()[:8]
    monkeypatch.setitem(weights.WEIGHT_URLS, "toy", f"https://example.invalid/toy-{prefix}.pth")
    served = {}
    monkeypatch.setattr(weights.downloads.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(served["body"]))
    served["body"] = content + b" but tampered"
    with pytest.raises(ValueError, match="SHA-256"):
        weights.download("toy", tmp_path)
    assert os.listdir(tmp_path) == []  # neither the bad file nor a temporary one
    served["body"] = content
    path = weights.download("toy", tmp_path)
    assert path == str(tmp_path / f"toy-{prefix}.pth") and open(path, "rb").read() == content
    served["body"] = b"not fetched again"
    assert weights.download("toy", tmp_path) == path
    with pytest.raises(ValueError, match="unknown weights 'nope'"):
        weights.download("nope", tmp_path)
