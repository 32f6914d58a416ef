"""On a real GPU: the CUDA kernels on CuPy arrays equal the CPU kernels, and the ops run on CuPy.

Skipped where there is no usable GPU; failed instead under REQUIRE_GPU=1 (the device check,
benchmarks/device_check.sh, sets it). The simulator tests (test_cuda_kernels.py) cover the same
kernels everywhere; these check the real compiler, atomics and CuPy's streams.

The tests below the line "runnable on the stand-in" are small enough for numba's simulator:
with TINYMASKRCNN_GPU_TESTS=standin (and NUMBA_ENABLE_CUDASIM=1) the ``cp`` fixture gives the
CuPy stand-in of tests/cupy_standin.py instead of CuPy, and tests/test_device_standin.py runs
them so in CI: their code is proven before a GPU runs it.
"""
import os

import numpy as np
import pytest

import tinymaskrcnn.functional as F
from tinymaskrcnn import ops
from tinymaskrcnn.core.backend import to_numpy
from tinymaskrcnn.kernels import roi_align as cpu_roi


ON_STANDIN = os.environ.get("TINYMASKRCNN_GPU_TESTS") == "standin"


@pytest.fixture
def cp():
    if ON_STANDIN:
        import cupy_standin
        from tinymaskrcnn.core import backend

        previous = backend.use_device_module(cupy_standin)
        yield cupy_standin
        backend.use_device_module(previous)
        return
    try:
        import cupy
        ok = cupy.cuda.is_available()
    except Exception:  # noqa: BLE001 - no CuPy or no driver
        ok = False
    if not ok:
        if os.environ.get("REQUIRE_GPU") == "1":
            pytest.fail("REQUIRE_GPU=1 but CuPy finds no usable GPU")
        pytest.skip("no GPU (cupy.cuda.is_available() is False)")
    yield cupy


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


# ----- runnable on the stand-in (small sizes: the simulator runs a thread in ~0.1 ms) --------------

def close(got, expected, rtol=1e-10):
    got, expected = to_numpy(got), to_numpy(expected)
    assert got.shape == expected.shape
    scale = max(np.abs(expected).max(initial=0.0), 1e-300)
    return np.abs(got - expected).max(initial=0.0) / scale <= rtol


def on_both(cp, fn, *arrays):
    """fn on NumPy arrays and on the same arrays on the device, each result as NumPy."""
    return [[to_numpy(r) for r in fn(*[to(a) for a in arrays])] for to in (np.asarray, cp.asarray)]


def test_roi_align_backward_on_cupy_equals_numpy(cp, rng):
    """The atomics of the backward kernel: overlapping RoIs add into the same pixels."""
    from tinymaskrcnn.core.autograd import Tensor
    x = rng.standard_normal((2, 3, 9, 11))
    xy = rng.uniform(-2, 6, (12, 2))
    rois = np.concatenate([rng.integers(0, 2, (12, 1)), xy, xy + rng.uniform(1, 8, (12, 2))], 1)
    g = rng.standard_normal((12, 3, 2, 2))

    def run(x, rois, g):
        xt = Tensor(x, requires_grad=True)
        out = ops.roi_align(xt, rois, 2, 0.5, 2)
        (out * Tensor(g)).sum().backward()
        return out.data, xt.grad
    (out, grad), (out_d, grad_d) = on_both(cp, run, x, rois, g)
    assert close(out_d, out) and close(grad_d, grad)


@pytest.mark.parametrize("stride, padding, output_padding, dilation, groups",
                         [(2, 1, 1, 1, 1), (1, 0, 0, 2, 2), (2, 0, 1, 1, 3)])
def test_conv_transpose2d_on_cupy_equals_numpy(cp, rng, stride, padding, output_padding, dilation, groups):
    from tinymaskrcnn.core.autograd import Tensor
    x = rng.standard_normal((2, 3 * groups, 4, 5))
    w = rng.standard_normal((3 * groups, 2, 3, 3))
    b = rng.standard_normal(2 * groups)

    def run(x, w, b):
        xt, wt, bt = (Tensor(a, requires_grad=True) for a in (x, w, b))
        y = F.conv_transpose2d(xt, wt, bt, stride, padding, output_padding, groups, dilation)
        (y * y).sum().backward()
        return y.data, xt.grad, wt.grad, bt.grad
    expected, got = on_both(cp, run, x, w, b)
    assert all(close(a, e) for a, e in zip(got, expected))


@pytest.mark.parametrize("dilation, groups, kernel", [(2, 1, 3), (1, 2, 3), (2, 3, 3), (1, 1, 1), (1, 2, 1)])
def test_conv2d_dilation_groups_and_1x1_on_cupy_equal_numpy(cp, rng, dilation, groups, kernel):
    """Dilated and grouped convolutions, and the 1x1 stride-1 case that skips im2col."""
    from tinymaskrcnn.core.autograd import Tensor
    x = rng.standard_normal((2, 2 * groups, 7, 6))
    w = rng.standard_normal((2 * groups, 2, kernel, kernel))

    def run(x, w):
        xt, wt = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
        y = F.conv2d(xt, wt, None, 1, dilation * (kernel // 2), dilation, groups)
        (y * y).sum().backward()
        return y.data, xt.grad, wt.grad
    expected, got = on_both(cp, run, x, w)
    assert all(close(a, e) for a, e in zip(got, expected))


def test_kernels_run_in_order_on_a_non_default_stream(cp, rng):
    """CuPy work, a Numba-CUDA kernel and CuPy work again, all queued on a non-default stream
    with no synchronisation between them: the kernel launches on CuPy's current stream, so it
    reads what CuPy wrote and CuPy reads what it wrote."""
    from tinymaskrcnn.kernels.cuda import simulated, stream_for
    from tinymaskrcnn.ops.roi_align import RoIAlign
    x = rng.standard_normal((1, 2, 8, 8))
    boxes = np.array([[0, 1.0, 1.0, 6.0, 7.0], [0, 0.0, 2.0, 5.0, 4.0]])
    expected = ops.roi_align(x * 3.0, boxes, 2, 1.0, 2) + 1.0
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        xd, boxes_d = cp.asarray(x) * 3.0, cp.asarray(boxes)  # CuPy's kernel, queued on the stream
        if not simulated():
            handle = stream_for(xd).handle
            assert int(getattr(handle, "value", handle)) == stream.ptr
        # RoIAlign.apply: ops.roi_align's check of the boxes would read them, synchronising
        pooled = RoIAlign.apply(xd, boxes_d, output_size=(2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=False)
        got = pooled.data + 1.0  # Numba's kernel, then CuPy's, neither waiting on the host
    stream.synchronize()
    assert close(got, expected)


def test_batched_nms_per_class_on_cupy_equals_numpy(cp, rng):
    """Above the switch size NMS runs per class, on the GPU in one launch; the kept boxes and
    their order are the CPU path's (ties included: scores drawn from few values)."""
    from tinymaskrcnn.ops.boxes import PER_CLASS_ABOVE
    n = PER_CLASS_ABOVE // 4 + 50 if not ON_STANDIN else 40
    xy = rng.uniform(0, 100, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], 1)
    scores, idxs = rng.integers(0, 30, n) / 30.0, rng.integers(0, 5, n)
    for dtype in (np.float64, np.float32):
        args = boxes.astype(dtype), scores.astype(dtype), idxs
        np.testing.assert_array_equal(to_numpy(ops.batched_nms(*(cp.asarray(a) for a in args), 0.5)),
                                      ops.batched_nms(*args, 0.5))


def test_training_step_and_optimizer_step_on_cupy_equal_the_cpu_path(cp):
    """A tiny float64 Mask R-CNN: losses, every gradient, the clipped norm and two AdamW steps
    on the device equal the CPU path to 1e-10."""
    import tinymaskrcnn as tm
    from cuda_sim.sim_model import tiny_model
    from tinymaskrcnn.engine.step import forward_backward

    rng = np.random.default_rng(1)
    images = [rng.uniform(0, 1, (3, 48, 64)), rng.uniform(0, 1, (3, 40, 56))]
    masks = np.zeros((2, 48, 64), np.uint8)
    masks[0, 5:30, 4:40], masks[1, 20:45, 30:60] = 1, 1
    targets = [{"boxes": np.array([[4, 5, 40, 30], [30, 20, 60, 45.0]]), "labels": np.array([1, 2]), "masks": masks},
               {"boxes": np.array([[10, 8, 50, 36.0]]), "labels": np.array([2]), "masks": masks[1:, :40, :56]}]
    results = []
    for device in ("cpu", "cuda"):
        model = tiny_model().train().to(device=device)
        optimizer = tm.optim.AdamW(model.parameters(), lr=1e-3)
        for _ in range(2):
            tm.random.manual_seed(1)
            values, stats = forward_backward(model, images, targets)
            grads = {n: np.array(to_numpy(p.grad)) for n, p in model.named_parameters()}  # before clipping
            norm = tm.optim.clip_grad_norm_(list(model.parameters()), 0.5)
            optimizer.step()
        results.append((values, stats, grads, norm, {n: to_numpy(p.data) for n, p in model.named_parameters()}))
    (values, stats, grads, norm, params), got = results
    assert all(abs(got[0][k] - v) <= 1e-10 * abs(v) for k, v in values.items())
    assert all(np.isclose(got[1][k], v, rtol=1e-10, equal_nan=True) for k, v in stats.items())
    assert all(close(got[2][k], g) for k, g in grads.items()) and abs(got[3] - norm) <= 1e-10 * norm
    assert all(close(got[4][k], p) for k, p in params.items())
