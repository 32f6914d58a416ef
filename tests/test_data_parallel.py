"""Data-parallel training: the averaged gradient is the mean of the two halves' gradients as one
process computes them, the optimizer's updates reach the worker, the worker imports the caller's
package whatever the current folder holds, and a worker's failure is reported with its type and
traceback, its death with its exit status and last error line."""
import numpy as np
import pytest

from tinymaskrcnn.engine import data_parallel
from tinymaskrcnn import engine, optim
from tinymaskrcnn.core import random as tm_random
from tinymaskrcnn.engine.data_parallel import DataParallel, WorkerDiedError
from tinymaskrcnn.engine.step import forward_backward
from tinymaskrcnn.core.gradcheck import rel_error

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


# the worker's step leaves no gradient in the first and third trainable parameters
_DROPPING_WORKER = """
import sys
sys.path[0] = sys.argv[1]
from tinymaskrcnn.engine import data_parallel
step = data_parallel.forward_backward

def dropping(model, *args):
    out = step(model, *args)
    params = data_parallel.trainable_parameters(model)
    params[0].grad = params[2].grad = None
    return out

data_parallel.forward_backward = dropping
data_parallel._worker_main()
"""


def test_a_gradient_only_one_process_has_is_averaged_with_zero(rng, monkeypatch):
    """As DDP averages: a parameter that one half gives no gradient counts as zero there (half the
    other's), one that neither gives keeps none (the optimizer skips it, as in one process). The
    worker drops parameters 0 and 2, this process 1 and 2."""
    images, targets = _batch(rng)
    model, reference = _model(), _model()
    step = data_parallel.forward_backward

    def dropping(model, *args):
        out = step(model, *args)
        params = data_parallel.trainable_parameters(model)
        params[1].grad = params[2].grad = None
        return out

    monkeypatch.setattr(data_parallel, "_BOOTSTRAP", _DROPPING_WORKER)
    monkeypatch.setattr(data_parallel, "forward_backward", dropping)
    with DataParallel(model, BUILD) as parallel:
        for _ in range(2):  # twice: the second step must not see the first step's gradients of dropped parameters
            tm_random.manual_seed(3)
            parallel.step(images, targets)
    got = [p.grad for p in data_parallel.trainable_parameters(model)]

    tm_random.manual_seed(3)
    worker_seed = int(tm_random.get_rng().integers(2 ** 63))
    forward_backward(reference, images[:1], targets[:1])
    mine = [p.grad.copy() for p in data_parallel.trainable_parameters(reference)]
    forward_backward(reference, images[1:], targets[1:], seed=worker_seed)
    theirs = [p.grad for p in data_parallel.trainable_parameters(reference)]
    assert rel_error(got[0], mine[0] / 2) < 1e-6 and rel_error(got[1], theirs[1] / 2) < 1e-6
    assert got[2] is None and np.abs(mine[0]).max() > 0 and np.abs(theirs[1]).max() > 0
    for g, a, b in zip(got[3:], mine[3:], theirs[3:]):
        assert rel_error(g, (a + b) / 2) < 1e-5


def test_worker_failure_is_reported_and_the_worker_stopped(rng):
    images, targets = _batch(rng)
    targets[1]["labels"] = np.array([1, 9])  # class 9 of a 4-class model: fails in the worker's half
    with pytest.raises(ValueError, match="target value 9 is out of range") as info:  # the worker's own error
        with DataParallel(_model(), BUILD) as parallel:
            process = parallel._process
            parallel.step(images, targets)
    cause = str(info.value.__cause__)
    assert "worker process failed" in cause and "Traceback" in cause and "cross_entropy" in cause
    assert process.poll() is not None  # stopped on leaving the block


def test_worker_that_dies_is_named(rng):
    images, targets = _batch(rng)
    with DataParallel(_model(), BUILD) as parallel:
        parallel._process.kill()
        parallel._process.wait()
        with pytest.raises(WorkerDiedError, match=r"worker process died \(killed by SIGKILL.*--processes 1"):
            parallel.step(images, targets)


def test_worker_that_cannot_start_gives_its_last_error_line(monkeypatch):
    monkeypatch.setattr(data_parallel, "_BOOTSTRAP", "import sys; print('starting', file=sys.stderr); "
                                                     "raise ImportError('no module named decoy')")
    with pytest.raises(WorkerDiedError, match=r"exit code 1\), its last error line: ImportError: no module named decoy"):
        with DataParallel(_model(), BUILD):
            pass


def test_worker_imports_the_callers_package_not_the_current_folders(rng, tmp_path, monkeypatch):
    """Run from a repository root with a non-editable install, the current folder holds the source
    tree's tinymaskrcnn/, which lacks the kernels installed from kernels/: the worker must import
    the package its caller imported. A decoy package in the current folder stands for it."""
    decoy = tmp_path / "tinymaskrcnn"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('the decoy tinymaskrcnn in the current folder')\n")
    (decoy / "data_parallel.py").write_text("raise ImportError('the decoy tinymaskrcnn in the current folder')\n")
    monkeypatch.chdir(tmp_path)
    images, targets = _batch(rng)
    with DataParallel(_model(), BUILD) as parallel:
        values, _ = parallel.step(images, targets)
    assert all(np.isfinite(v) for v in values.values())


def test_batch_of_one_is_refused(rng):
    images, targets = _batch(rng, 1)
    with DataParallel(_model(), BUILD) as parallel:
        with pytest.raises(ValueError, match="batch of 1 image"):
            parallel.step(images, targets)
