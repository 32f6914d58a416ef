"""Data-parallel training: the averaged gradient is the mean of the two halves' gradients as one
process computes them, the optimizer's updates reach the worker, and a worker's failure is
reported with its traceback."""
import numpy as np
import pytest

from tinymaskrcnn import engine, optim, random as tm_random
from tinymaskrcnn.data_parallel import DataParallel, forward_backward
from tinymaskrcnn.gradcheck import rel_error

from test_engine import TINY_MODEL

BUILD = ("maskrcnn_resnet18_fpn", 4, TINY_MODEL)


def _batch(rng, n=2):
    images, targets = [], []
    for _ in range(n):
        images.append(rng.uniform(0, 1, (3, 64, 80)).astype(np.float32))
        masks = np.zeros((2, 64, 80), np.uint8)
        masks[0, 10:40, 5:30] = 1
        masks[1, 30:60, 40:75] = 1
        targets.append({"boxes": np.array([[5, 10, 30, 40], [40, 30, 75, 60]], np.float32),
                        "labels": np.array([1, 3]), "masks": masks})
    return images, targets


def _model():
    tm_random.manual_seed(7)
    model = engine.build_model(*BUILD)
    model.train()
    return model


def test_gradient_is_the_mean_of_the_halves(rng):
    images, targets = _batch(rng)
    model = _model()
    reference = _model()  # the same weights: both built from seed 7
    with DataParallel(model, BUILD) as parallel:
        tm_random.manual_seed(3)
        values, stats = parallel.step(images, targets)
        got = {n: p.grad.copy() for n, p in model.named_parameters() if p.requires_grad}

        # the same two halves in this process: the worker's seed is the first draw, then the
        # main half samples from the generator that follows
        tm_random.manual_seed(3)
        worker_seed = int(tm_random.get_rng().integers(2 ** 63))
        first, _ = forward_backward(reference, images[:1], targets[:1])
        first_grads = {n: p.grad.copy() for n, p in reference.named_parameters() if p.requires_grad}
        second, _ = forward_backward(reference, images[1:], targets[1:], seed=worker_seed)
        for name, p in reference.named_parameters():
            if p.requires_grad:
                expected = (first_grads[name] + p.grad) / 2
                assert rel_error(got[name], expected) < 1e-5, name
        for name in values:
            assert values[name] == pytest.approx((first[name] + second[name]) / 2, rel=1e-5), name
        assert "roi_fg_accuracy" in stats and np.linalg.norm(np.concatenate([g.ravel() for g in got.values()])) > 0

        # an optimizer step in this process is what the worker computes with next
        params = [p for p in model.parameters() if p.requires_grad]
        optim.SGD(params, lr=0.1).step()
        ref_params = [p for p in reference.parameters() if p.requires_grad]
        for p, q in zip(params, ref_params):
            q.data[...] = p.data
        tm_random.manual_seed(4)
        parallel.step(images, targets)
        got = [p.grad.copy() for p in params]
        tm_random.manual_seed(4)
        worker_seed = int(tm_random.get_rng().integers(2 ** 63))
        forward_backward(reference, images[:1], targets[:1])
        first_grads = [p.grad.copy() for p in ref_params]
        forward_backward(reference, images[1:], targets[1:], seed=worker_seed)
        for g, a, q in zip(got, first_grads, ref_params):
            assert rel_error(g, (a + q.grad) / 2) < 1e-5


def test_worker_failure_is_reported_and_the_worker_stopped(rng):
    images, targets = _batch(rng)
    targets[1]["labels"] = np.array([1, 9])  # class 9 of a 4-class model: fails in the worker's half
    with pytest.raises(RuntimeError, match="worker process failed") as info:
        with DataParallel(_model(), BUILD) as parallel:
            process = parallel._process
            parallel.step(images, targets)
    assert "9" in str(info.value) and "Traceback" in str(info.value)
    assert process.poll() is not None  # stopped on leaving the block


def test_worker_that_dies_is_named(rng):
    images, targets = _batch(rng)
    with DataParallel(_model(), BUILD) as parallel:
        parallel._process.kill()
        parallel._process.wait()
        with pytest.raises(RuntimeError, match="worker process died"):
            parallel.step(images, targets)


def test_batch_of_one_is_refused(rng):
    images, targets = _batch(rng, 1)
    with DataParallel(_model(), BUILD) as parallel:
        with pytest.raises(ValueError, match="batch of 1 image"):
            parallel.step(images, targets)
