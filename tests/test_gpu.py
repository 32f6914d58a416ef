"""On a real GPU: the CUDA kernels on CuPy arrays equal the CPU kernels, and the ops run on CuPy.

Skipped where there is no usable GPU; failed instead under REQUIRE_GPU=1 (the device check,
benchmarks/device_check.sh, sets it). The simulator tests (test_cuda_kernels.py) cover the same
kernels everywhere; these check the real compiler, atomics and CuPy's streams.
"""
import os

import numpy as np
import pytest

import tinymaskrcnn.functional as F
from tinymaskrcnn import ops
from tinymaskrcnn.core.backend import to_numpy
from tinymaskrcnn.kernels import roi_align as cpu_roi


@pytest.fixture
def cp():
    try:
        import cupy
        ok = cupy.cuda.is_available()
    except Exception:  # noqa: BLE001 - no CuPy or no driver
        ok = False
    if not ok:
        if os.environ.get("REQUIRE_GPU") == "1":
            pytest.fail("REQUIRE_GPU=1 but CuPy finds no usable GPU")
        pytest.skip("no GPU (cupy.cuda.is_available() is False)")
    return cupy


def rtol(dtype):
    return 1e-10 if dtype == np.float64 else 1e-4


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_forward_and_backward_on_cupy_equal_numpy(cp, rng, dtype, stride):
    from tinymaskrcnn.core.autograd import Tensor
    x = rng.standard_normal((2, 16, 23, 30)).astype(dtype)
    w = rng.standard_normal((8, 16, 3, 3)).astype(dtype)
    g = rng.standard_normal((2, 8, (23 - 1) // stride + 1, (30 - 1) // stride + 1)).astype(dtype)
    results = []
    for to in (np.asarray, cp.asarray):
        xt, wt = Tensor(to(x), requires_grad=True), Tensor(to(w), requires_grad=True)
        y = F.conv2d(xt, wt, stride=stride, padding=1)
        (y * Tensor(to(g))).sum().backward()
        results.append([to_numpy(a) for a in (y.data, xt.grad, wt.grad)])
    for got, expected in zip(results[1], results[0]):
        np.testing.assert_allclose(got, expected, rtol=rtol(dtype), atol=rtol(dtype) * np.abs(expected).max())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_roi_align_on_cupy_equals_the_cpu_kernel(cp, rng, dtype):
    x = rng.standard_normal((2, 8, 40, 50)).astype(dtype)
    xy = rng.uniform(-5, 40, (300, 2))
    rois = np.concatenate([rng.integers(0, 2, (300, 1)), xy, xy + rng.uniform(1, 60, (300, 2))], 1).astype(dtype)
    out = ops.roi_align(cp.asarray(x), cp.asarray(rois), 7, 0.5, 2)
    np.testing.assert_allclose(to_numpy(out), cpu_roi.roi_align_forward(x, rois, 7, 7, dtype(0.5), 2, False),
                               rtol=rtol(dtype), atol=rtol(dtype))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nms_and_paste_masks_on_cupy_equal_numpy(cp, rng, dtype):
    xy = rng.uniform(0, 500, (4000, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 100, (4000, 2))], 1).astype(dtype)
    scores = rng.uniform(0, 1, 4000).astype(dtype)
    np.testing.assert_array_equal(to_numpy(ops.nms(cp.asarray(boxes), cp.asarray(scores), 0.5)),
                                  ops.nms(boxes, scores, 0.5))
    masks = rng.uniform(0, 1, (20, 1, 28, 28)).astype(dtype)
    pasted = ops.paste_masks_in_image(cp.asarray(masks), cp.asarray(boxes[:20]), (480, 640))
    np.testing.assert_allclose(to_numpy(pasted), ops.paste_masks_in_image(masks, boxes[:20], (480, 640)),
                               rtol=rtol(dtype), atol=rtol(dtype))


def test_max_pool_on_cupy_equals_numpy(cp, rng):
    from tinymaskrcnn.core.autograd import Tensor
    x = rng.integers(-5, 5, (2, 4, 17, 19)).astype(np.float64)
    grads = []
    for to in (np.asarray, cp.asarray):
        xt = Tensor(to(x), requires_grad=True)
        y = F.max_pool2d(xt, 3, 2, 1)
        y.sum().backward()
        grads.append((to_numpy(y.data), to_numpy(xt.grad)))
    np.testing.assert_array_equal(grads[0][0], grads[1][0])
    np.testing.assert_allclose(grads[0][1], grads[1][1], rtol=1e-12)


def test_cupy_arrays_and_torch_cuda_tensors_arrive_without_a_host_copy(cp):
    """The model's boundary (issue 26): a CuPy array is taken as it is, and a torch CUDA tensor
    by DLPack, as a CuPy array over the same device memory."""
    from tinymaskrcnn.core.backend import array_from
    from tinymaskrcnn.models.mask_rcnn import model_inputs

    x = cp.arange(12, dtype=cp.float32).reshape(3, 2, 2)
    (same,), _ = model_inputs([x])
    assert same is x
    try:
        import torch
    except ImportError:
        pytest.skip("torch not installed")
    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA")
    t = torch.arange(12, dtype=torch.float32, device="cuda").reshape(3, 2, 2)
    a = array_from(t)
    assert isinstance(a, cp.ndarray) and a.data.ptr == t.data_ptr()
    np.testing.assert_array_equal(to_numpy(a), t.cpu().numpy())


def test_model_to_a_torch_cuda_device_takes_torch_cuda_tensors(cp):
    import tinymaskrcnn as tm

    try:
        import torch
    except ImportError:
        pytest.skip("torch not installed")
    model = tm.models.maskrcnn_resnet18_fpn(num_classes=3, fpn_channels=16, representation_size=32,
                                           mask_channels=8, min_size=64, max_size=96).eval()
    image = np.random.default_rng(0).uniform(0, 1, (3, 60, 80)).astype(np.float32)
    with tm.no_grad():
        expected = model([image])[0]
        model.to(torch.device("cuda", 0))
        assert isinstance(model.backbone.fpn.layer_blocks[0][0].weight.data, cp.ndarray)
        got = model([torch.from_numpy(image).cuda() if torch.cuda.is_available() else image])[0]
    assert isinstance(got["scores"], cp.ndarray)
    np.testing.assert_allclose(to_numpy(got["scores"]), expected["scores"], atol=1e-4)
