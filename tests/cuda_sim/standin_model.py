"""The device path as CuPy would run it, on the CPU: a tiny float64 Mask R-CNN on the CuPy
stand-in (tests/cupy_standin.py: CuPy's refusals, every host read counted) with the CUDA kernels
in numba's simulator equals the CPU path, and a training step and an inference read the device
only a bounded number of times. Run by tests/test_device_standin.py in a child pytest with
NUMBA_ENABLE_CUDASIM=1 (named standin_*.py so that no other run collects it)."""
import numpy as np
import pytest

import cupy_standin as cs
import tinymaskrcnn as tm
from sim_model import tiny_model
from tinymaskrcnn import optim
from tinymaskrcnn.core import backend
from tinymaskrcnn.engine.step import forward_backward

# host reads allowed in one training step (forward, backward, clipping, AdamW) and one inference
# of two images with two FPN levels pooled, three classes and 30 parameters: none per image,
# level, class or parameter (one per image in inference: mask pasting's check). The reads that
# remain are listed in docs/gpu.md with their reasons.
STEP_READS, INFERENCE_READS = 6, 4


@pytest.fixture(autouse=True)
def device_module():
    previous = backend.use_device_module(cs)
    yield
    backend.use_device_module(previous)


def example():
    """Two images (a read per image would show), with targets."""
    rng = np.random.default_rng(1)
    images = [rng.uniform(0, 1, (3, 48, 64)), rng.uniform(0, 1, (3, 40, 56))]
    masks = np.zeros((2, 48, 64), np.uint8)
    masks[0, 5:30, 4:40], masks[1, 20:45, 30:60] = 1, 1
    targets = [{"boxes": np.array([[4, 5, 40, 30], [30, 20, 60, 45]], np.float64), "labels": np.array([1, 2]),
                "masks": masks},
               {"boxes": np.array([[10, 8, 50, 36]], np.float64), "labels": np.array([2]),
                "masks": masks[1:, :40, :56]}]
    return images, targets


def close(a, b):
    a, b = backend.to_numpy(a), backend.to_numpy(b)
    assert a.shape == b.shape
    scale = max(np.abs(b).max(initial=0.0), 1e-300)
    return np.abs(a - b).max(initial=0.0) / scale <= 1e-10


def small_model():
    """Small RoI patches with one sample a bin: the test runs three training steps in the
    simulator, whose atomic adds (RoIAlign's backward) cost milliseconds each."""
    return tiny_model(box_pool=2, mask_pool=3, sampling_ratio=1)


def on_device(model):
    return model.to(device="cuda")


def test_inference_equals_the_cpu_path_with_few_host_reads():
    images, _ = example()
    model = small_model().eval()
    tm.random.manual_seed(1)
    with tm.no_grad():
        expected = model(images)
    model = on_device(model)
    tm.random.manual_seed(1)
    with tm.no_grad(), cs.counting() as reads:
        got = model(images)
    print("inference host reads:", reads.total, "\n" + reads.report())
    for got_i, expected_i in zip(got, expected):
        assert set(got_i) == set(expected_i)
        for key in expected_i:
            assert isinstance(got_i[key], cs.ndarray), key
            assert close(got_i[key], expected_i[key]), key
    assert reads.total <= INFERENCE_READS, reads.report()


def train_step(model, optimizer, images, targets):
    tm.random.manual_seed(1)
    values, stats = forward_backward(model, images, targets)
    norm = optim.clip_grad_norm_(list(model.parameters()), 0.5)
    optimizer.step()
    return values, stats, norm


def test_training_step_clipping_and_adamw_equal_the_cpu_path_with_few_host_reads(tmp_path):
    images, targets = example()
    model = small_model().train()
    optimizer = optim.AdamW(model.parameters(), lr=1e-3)
    expected = train_step(model, optimizer, images, targets)
    train_step(model, optimizer, images, targets)  # a second step: AdamW's moments in play
    expected_params = {n: p.data.copy() for n, p in model.named_parameters()}

    device_model = small_model().train()
    on_device(device_model)
    device_optimizer = optim.AdamW(device_model.parameters(), lr=1e-3)
    got = train_step(device_model, device_optimizer, images, targets)
    with cs.counting() as reads:
        train_step(device_model, device_optimizer, images, targets)
    print("training step host reads:", reads.total, "\n" + reads.report())
    values, stats, norm = got
    assert set(values) == set(expected[0]) and set(stats) == set(expected[1])
    for key in expected[0]:
        assert abs(values[key] - expected[0][key]) <= 1e-10 * abs(expected[0][key]), key
    for key in expected[1]:
        assert np.isclose(stats[key], expected[1][key], rtol=1e-10, equal_nan=True), key
    assert abs(norm - expected[2]) <= 1e-10 * expected[2]
    for name, p in device_model.named_parameters():
        assert isinstance(p.data, cs.ndarray) and close(p.data, expected_params[name]), name
    assert reads.total <= STEP_READS, reads.report()

    # a checkpoint of the device model and optimizer, loaded into fresh ones on the device
    path = tmp_path / "checkpoint.npz"
    tm.weights.save(path, {"model": device_model.state_dict(), "optimizer": device_optimizer.state_dict()})
    state = tm.weights.load(path)
    restored = on_device(small_model())
    restored.load_state_dict(state["model"])
    restored_optimizer = optim.AdamW(restored.parameters(), lr=1e-3)
    restored_optimizer.load_state_dict(state["optimizer"])
    for (name, p), q in zip(device_model.named_parameters(), restored.parameters()):
        assert isinstance(q.data, cs.ndarray) and close(q.data, p.data), name
    for p, q in zip(device_model.parameters(), restored.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            assert isinstance(restored_optimizer.state[q][key], cs.ndarray)
            assert close(restored_optimizer.state[q][key], device_optimizer.state[p][key]), key


def test_batched_nms_on_the_device_keeps_the_cpu_paths_boxes_on_both_sides_of_the_switch(monkeypatch):
    """Box 1's IoU with box 0 is 0.500001, exactly 0.5 once shifted by category 100's offset:
    the offset path keeps it, the per-category path drops it. Below and above the switch
    size the device runs the CPU path's algorithm (one switch, ``PER_CLASS_ABOVE``, lowered
    here to 3 boxes' coordinates: the simulator is slow)."""
    from tinymaskrcnn.ops import boxes as ops_boxes

    monkeypatch.setattr(ops_boxes, "PER_CLASS_ABOVE", 12)
    small = np.array([[0, 0, 10, 10], [0, 0, 10, 5.00001]], np.float32)
    large = np.concatenate([small, [[20, 20, 30, 30], [40, 20, 50, 30]]]).astype(np.float32)  # + far-away boxes
    for boxes, box1_kept in ((small, True), (large, False)):
        categories = np.where(np.arange(len(boxes)) < 2, 100, 0)
        scores = np.linspace(1, 0, len(boxes)).astype(np.float32)
        expected = ops_boxes.batched_nms(boxes, scores, categories, 0.5)
        got = ops_boxes.batched_nms(*(cs.asarray(a) for a in (boxes, scores, categories)), 0.5)
        assert isinstance(got, cs.ndarray) and (1 in expected) == box1_kept
        np.testing.assert_array_equal(got.get(), expected)
