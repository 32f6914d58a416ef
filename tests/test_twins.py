"""The kernel table and its switch (functional/dispatch.py): ``tm.use_kernels("twins")`` runs the
whole package on the kernels' NumPy twins (and the textbook convolution), and gives the fast
path's numbers: a float64 training step (losses, every gradient, an AdamW step) and an
inference of a small Mask R-CNN agree to rounding. The switch reaches every family, and
TINYMASKRCNN_KERNELS sets it in a fresh process."""
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest

import tinymaskrcnn as tm
import tinymaskrcnn.functional as F
from tinymaskrcnn.core.gradcheck import rel_error
from tinymaskrcnn.functional.dispatch import KERNELS

ROUNDING = 1e-9  # float64: the twins sum the same products as the kernels, in other orders
MODEL = dict(num_classes=3, min_size=64, max_size=96, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
             rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=50, box_batch_size_per_image=64,
             box_score_thresh=0.0, box_detections_per_img=10)


def _scene(rng):
    images = [rng.uniform(0, 1, (3, 60, 80)), rng.uniform(0, 1, (3, 72, 64))]
    masks = np.zeros((1, 60, 80), np.uint8)
    masks[0, 10:40, 20:60] = 1
    targets = [{"boxes": np.array([[20.0, 10, 60, 40]]), "labels": np.array([2]), "masks": masks},
               {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64), "masks": np.zeros((0, 72, 64), np.uint8)}]
    return images, targets


def _model():
    tm.manual_seed(0)  # the same weights, and then the same samples, on both settings
    return tm.models.maskrcnn_resnet18_fpn(**MODEL).to(dtype=np.float64)


def _training_step(setting, images, targets):
    """Losses, every parameter's gradient, and every parameter after one AdamW step."""
    model = _model()
    model.train()
    optimizer = tm.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    with tm.use_kernels(setting):
        losses = model(images, targets)
        sum(losses.values()).backward()
        grads = {n: p.grad.copy() for n, p in model.named_parameters() if p.grad is not None}
        optimizer.step()
    return {k: v.item() for k, v in losses.items()}, grads, {n: p.data for n, p in model.named_parameters()}


def test_a_training_step_on_the_twins_equals_the_fast_path(rng):
    images, targets = _scene(rng)
    fast_losses, fast_grads, fast_params = _training_step("fast", images, targets)
    losses, grads, params = _training_step("twins", images, targets)
    assert tm.get_kernels() == "fast"  # the block gave the setting back
    assert fast_losses == pytest.approx(losses, rel=ROUNDING) and all(v > 0 for v in losses.values())
    assert fast_grads.keys() == grads.keys() and "roi_heads.mask_predictor.conv5_mask.weight" in grads
    for name in grads:
        assert rel_error(fast_grads[name], grads[name]) < ROUNDING, name
    for name in params:
        assert rel_error(fast_params[name], params[name]) < ROUNDING, name


def test_an_inference_on_the_twins_equals_the_fast_path(rng):
    images, _ = _scene(rng)
    model = _model()
    model.eval()
    with tm.no_grad():
        fast = model(images)
        with tm.use_kernels("twins"):
            twins = model(images)
    for ours, theirs in zip(fast, twins):
        assert len(theirs["boxes"]) > 0 and set(ours) == {"boxes", "labels", "scores", "masks"}
        np.testing.assert_array_equal(ours["labels"], theirs["labels"])
        for key in ("boxes", "scores", "masks"):
            np.testing.assert_allclose(np.asarray(ours[key]), np.asarray(theirs[key]), rtol=ROUNDING, atol=1e-12,
                                       err_msg=key)


# ----- the switch reaches every family ---------------------------------------------------------


def _module_and_name(path):
    """(module, function name) of a "module.function" entry of the table."""
    module, _, function = path.rpartition(".")
    return importlib.import_module(f"tinymaskrcnn.{module}"), function


def _replace(monkeypatch, column, make):
    """Put ``make(name, original)`` in place of the function of ``column`` ("fast" or "twin") of
    every kernel of the table, in its module, where the ops look it up."""
    for name, implementations in KERNELS.items():
        path = getattr(implementations, column)
        if path is not None:
            module, function = _module_and_name(path)
            monkeypatch.setattr(module, function, make(name, getattr(module, function)))


def _every_family(rng):
    """One call of every op family, forward and backward: conv, frozen batch norm, max pooling,
    RoIAlign, NMS, mask pasting, and an AdamW step."""
    x = tm.Tensor(rng.standard_normal((2, 3, 12, 12)), requires_grad=True)
    weight = tm.nn.Parameter(rng.standard_normal((4, 3, 3, 3)))
    channels = [rng.uniform(0.5, 1.5, 4) for _ in range(4)]
    y = F.max_pool2d(F.frozen_batch_norm(F.conv2d(x, weight, None, stride=2, padding=1), *channels), 3, 1, 1)
    boxes = np.array([[0, 0.5, 1.0, 4.5, 5.0], [1, 2.0, 0.0, 6.0, 3.5]])
    tm.ops.roi_align(y, boxes, 2, spatial_scale=1.0, sampling_ratio=2).sum().backward()
    assert x.grad is not None and weight.grad is not None
    tm.optim.AdamW([weight], lr=0.1).step()
    keep = tm.ops.nms(np.array([[0, 0, 4, 4.0], [0, 0, 4, 3.9], [5, 5, 9, 9]]), np.array([0.9, 0.8, 0.7]), 0.5)
    np.testing.assert_array_equal(keep, [0, 2])
    pasted = tm.ops.paste_masks_in_image(rng.uniform(0, 1, (2, 1, 7, 7)), np.array([[1, 1, 8, 9.0], [0, 2, 5, 6]]),
                                         (12, 10))
    assert pasted.shape == (2, 1, 12, 10)


def _refuse(name, original):
    def refused(*args, **kwargs):
        raise AssertionError(f"{name}: the other setting's implementation ran")
    return refused


@pytest.mark.parametrize("setting, column, other", [("twins", "twin", "fast"), ("fast", "fast", "twin")])
def test_the_setting_routes_every_family(monkeypatch, rng, setting, column, other):
    """Every kernel of the other column refuses to run; every kernel of the chosen column runs
    (on "fast", the textbook convolution's im2col and col2im, which have no Numba kernel, never do)."""
    ran = set()

    def record(name, original):
        return lambda *args, **kwargs: ran.add(name) or original(*args, **kwargs)

    _replace(monkeypatch, other, _refuse)
    _replace(monkeypatch, column, record)
    with tm.use_kernels(setting):
        _every_family(rng)
    assert ran == {name for name, impl in KERNELS.items() if getattr(impl, column) is not None}


def test_the_table_names_real_functions_in_the_layers_below():
    """Every entry is a function of the kernels or of the foundation's ops; the fast CPU kernels of
    kernels/ are Numba's, their twins plain Python named <name>_twin; the CUDA ones are in
    kernels/cuda/ (not imported here: numba-cuda may be absent)."""
    for name, implementations in KERNELS.items():
        assert implementations.twin is not None, name
        for column in ("fast", "twin"):
            path = getattr(implementations, column)
            if path is None:
                continue
            assert path.startswith(("kernels.", "functional.")), path
            function = getattr(*_module_and_name(path))
            assert callable(function), path
            if path.startswith("kernels."):
                assert hasattr(function, "py_func") == (column == "fast"), path
                assert path.endswith("_twin") == (column == "twin"), path
        assert implementations.cuda is None or implementations.cuda.startswith("kernels.cuda."), name


def test_set_kernels_returns_the_previous_setting_and_checks_the_name():
    assert tm.get_kernels() == "fast"
    with tm.use_kernels("twins"):
        assert tm.get_kernels() == "twins"
        assert tm.set_kernels("fast") == "twins"
        assert tm.set_kernels("twins") == "fast"
        with pytest.raises(ValueError, match=r"must be 'fast' \(the Numba kernels\) or 'twins' .*got 'slow'"):
            tm.set_kernels("slow")
        assert tm.get_kernels() == "twins"
    assert tm.get_kernels() == "fast"
    with pytest.raises(RuntimeError, match="inside"):
        with tm.use_kernels("twins"):
            raise RuntimeError("inside")
    assert tm.get_kernels() == "fast"


def _python(code, value, tmp_path):
    """Run ``code`` in a fresh interpreter with TINYMASKRCNN_KERNELS=value and this one's import path."""
    env = {**os.environ, "TINYMASKRCNN_KERNELS": value, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)


def test_the_environment_variable_sets_the_kernels_of_a_new_process(tmp_path):
    shown = _python("import numpy as np, tinymaskrcnn as tm\n"
                    "from tinymaskrcnn.functional.dispatch import kernel_for\n"
                    "print(tm.get_kernels(), kernel_for('nms', np.zeros(1)).__name__)", "twins", tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.split() == ["twins", "nms_twin"]
    refused = _python("import tinymaskrcnn", "slow", tmp_path)
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1] == ("ValueError: TINYMASKRCNN_KERNELS must be 'fast' (the Numba "
                                                       "kernels) or 'twins' (their NumPy twins), got 'slow'")
