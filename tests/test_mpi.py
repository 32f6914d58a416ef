"""Data-parallel training through MPI (engine/data_parallel.py): for N = 1, 2 and 3 processes
(3 oversubscribes a 2-core machine) the summed gradient and the parameters after a few steps equal
one process computing the same shares in turn, in float64, to rounding; a rank that raises or is
killed stops every rank within seconds with one line naming it and its exit status (exit code 2),
the last checkpoint intact, and the run resumes from it to the same end as a run never stopped;
on GPUs the buffer goes to NCCL by its device pointer, never through the host."""
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tinymaskrcnn import engine, optim, weights
from tinymaskrcnn.core import random as tm_random
from tinymaskrcnn.core.gradcheck import rel_error
from tinymaskrcnn.engine import data_parallel
from tinymaskrcnn.engine.data_parallel import DataParallel, RankFailedError
from tinymaskrcnn.engine.step import forward_backward, trainable_parameters

from test_engine import TINY_MODEL, make_tiny_shapes

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on NumPy 2

BUILD = ("maskrcnn_resnet18_fpn", 4, TINY_MODEL)
BATCH, STEPS = 6, 3  # 6 images: equal shares for 1, 2 and 3 processes


@pytest.fixture(autouse=True)
def ranks_import_these_tests(monkeypatch):
    """The ranks unpickle functions of this module: they import it from the tests folder."""
    here = os.path.dirname(os.path.abspath(__file__))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))


def _batch():
    rng = np.random.default_rng(11)
    images, targets = [], []
    for k in range(BATCH):
        images.append(rng.uniform(0, 1, (3, 64, 80)))
        masks = np.zeros((2, 64, 80), np.uint8)
        masks[0, 10:40, 5 + k:30 + k] = 1
        masks[1, 30:60, 40:75 - k] = 1
        boxes = np.array([[5 + k, 10, 30 + k, 40], [40, 30, 75 - k, 60]], np.float64)
        targets.append({"boxes": boxes, "labels": np.array([1, 1 + k % 3]), "masks": masks})
    return images, targets


def _model():
    tm_random.manual_seed(7)
    model = engine.build_model(*BUILD).to(np.float64)
    model.train()
    return model


def _train_steps(parallel_step, model):
    """STEPS AdamW steps of ``parallel_step()``; the first step's gradients and the end's parameters."""
    params = trainable_parameters(model)
    optimizer = optim.AdamW(params, lr=1e-3)
    tm_random.manual_seed(3)
    first = None
    for _ in range(STEPS):
        parallel_step()
        first = first or [None if p.grad is None else p.grad.copy() for p in params]
        optimizer.step()
    return first, [p.data.copy() for p in params]


def _rank_trains():
    """In each rank: the data-parallel steps over the whole communicator."""
    model = _model()
    parallel = DataParallel(model, data_parallel.communicator())
    images, targets = _batch()
    return _train_steps(lambda: parallel.step(images, targets), model)


def _one_process(size):
    """The same steps in this process: each step draws the ranks' seeds as they do, runs the
    shares in turn and sums their gradients weighted by their share of the batch."""
    model = _model()
    params = trainable_parameters(model)
    images, targets = _batch()

    def step():
        seeds = tm_random.get_rng().integers(2 ** 63, size=size)
        after = tm_random.get_state()
        total = [None] * len(params)
        for rank in range(size):
            part = data_parallel.share(BATCH, size, rank)
            forward_backward(model, images[part], targets[part], seed=int(seeds[rank]))
            for k, p in enumerate(params):
                if p.grad is not None:
                    add = p.grad * (len(images[part]) / BATCH)
                    total[k] = add if total[k] is None else total[k] + add
        tm_random.set_state(after)
        for p, g in zip(params, total):
            p.grad = g

    return _train_steps(step, model)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_n_processes_equal_one_process_over_the_same_batch(size):
    grads, params = data_parallel.launch(_rank_trains, (), size)
    expected_grads, expected_params = _one_process(size)
    assert sum(g is not None for g in grads) > len(grads) // 2
    for got, expected in zip(grads, expected_grads):
        assert (got is None) == (expected is None)
        if got is not None:
            assert rel_error(got, expected) < 1e-10
    for got, expected in zip(params, expected_params):
        assert rel_error(got, expected) < 1e-10
    assert max(np.abs(p - s.data).max() for p, s in zip(params, trainable_parameters(_model()))) > 1e-4  # it trained


def _rank_fails():
    comm = data_parallel.communicator()
    if comm.Get_rank() == 1:
        raise ValueError("a bad annotation in rank 1's share")
    comm.Barrier()  # the others wait for rank 1 here, as they would in the gradients' Allreduce


def test_an_exception_in_one_rank_stops_every_rank_with_one_line():
    start = time.perf_counter()
    with pytest.raises(RankFailedError) as info:
        data_parallel.launch(_rank_fails, (), 3)
    assert str(info.value) == ("rank 1 of 3 stopped with exit status 2: a bad annotation in rank 1's share; "
                               "every rank was stopped")
    assert time.perf_counter() - start < 60  # it did not hang (each mpiexec run takes seconds)


def test_a_killed_rank_stops_the_run_in_one_line_and_it_resumes_exactly(tmp_path):
    """`tinymaskrcnn train --processes 2` (it starts mpiexec itself); rank 1 is killed once the
    first checkpoint exists. The run ends in one line, exit code 2; its checkpoint resumes to the
    same parameters as a run never stopped."""
    make_tiny_shapes(tmp_path / "shapes")
    flags = ["--data", str(tmp_path / "shapes"), "--min-size", "64", "--max-size", "96", "--model-kwargs",
             json.dumps({k: v for k, v in TINY_MODEL.items() if k not in ("min_size", "max_size")}),
             "--iterations", "12", "--batch-size", "2", "--warmup-iters", "1", "--lr", "0.01", "--checkpoint-period",
             "2", "--num-predictions", "0", "--no-progress", "--processes", "2"]
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # where the launcher's job folder (with the ranks' ids) goes
    command = [sys.executable, "-m", "tinymaskrcnn.cli", "train"]
    straight = subprocess.run(command + flags + ["--out-dir", str(tmp_path / "straight")], env=env, timeout=300,
                              capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr

    run = tmp_path / "stopped"
    process = subprocess.Popen(command + flags + ["--out-dir", str(run)], env=env, stderr=subprocess.PIPE, text=True,
                               stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run / engine.CHECKPOINT).exists() or not glob.glob(str(tmp_path / "tinymaskrcnn-mpi-*/rank-1.pid")):
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.05)
        (pid_file,) = glob.glob(str(tmp_path / "tinymaskrcnn-mpi-*/rank-1.pid"))
        os.kill(int(Path(pid_file).read_text()), signal.SIGKILL)
        killed = time.monotonic()
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert time.monotonic() - killed < 20  # every rank stopped within seconds
    assert process.returncode == 2
    assert err.count("\n") == 1, err
    assert err.startswith("tinymaskrcnn train: error: rank 1 of 2 died (killed by SIGKILL") and "Traceback" not in err
    assert "every rank was stopped" in err and "--resume" in err
    iteration = weights.load(run / engine.CHECKPOINT)["iteration"]  # intact: it loads
    assert iteration % 2 == 0 and iteration >= 2

    resumed = subprocess.run(command + flags + ["--out-dir", str(run), "--resume"], env=env, timeout=300,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a, b = weights.load(tmp_path / "straight" / engine.CHECKPOINT), weights.load(run / engine.CHECKPOINT)
    assert a["iteration"] == b["iteration"] == 12 and a["rng"] == b["rng"] and a["loader"] == b["loader"]
    for key in a["model"]:
        assert np.array_equal(a["model"][key], b["model"][key]), key


def test_processes_default_and_checks(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert engine.processes(engine.TrainConfig(batch_size=4)) == 4  # one per core, up to one image each
    assert engine.processes(engine.TrainConfig(batch_size=16)) == 8
    monkeypatch.setenv("PMI_SIZE", "3")  # under mpiexec -n 3
    assert engine.processes(engine.TrainConfig(batch_size=16)) == 3
    with pytest.raises(ValueError, match="batch_size=2 needs to be at least 3"):
        engine.TrainConfig(processes=3).validate()
    with pytest.raises(ValueError, match="processes=0"):
        engine.TrainConfig(processes=0).validate()


class _StandInNCCL:
    """cupy.cuda.nccl for one rank: the communicator records the pointers it is given and, as a
    sum over one rank, leaves the buffer as it is."""
    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 7, 8, 0
    calls = []

    @staticmethod
    def get_unique_id():
        return (0,) * 128

    class NcclCommunicator:
        def __init__(self, size, uid, rank):
            assert (size, rank) == (1, 0)

        def allReduce(self, send, receive, count, dtype, op, stream):  # noqa: N802 - NCCL's name
            _StandInNCCL.calls.append((send, receive, count, dtype, op))


def test_gpu_gradients_are_summed_on_the_device_by_pointer():
    """N=1 on the CuPy stand-in (tests/cupy_standin.py): the gradients reach NCCL as the device
    buffer's pointer; the only host read is the per-parameter "has a gradient" counts."""
    import cupy_standin
    from mpi4py import MPI

    from tinymaskrcnn.core import backend

    previous = backend.use_device_module(cupy_standin)
    try:
        model = engine.build_model("maskrcnn_resnet18_fpn", 3, dict(fpn_channels=8, representation_size=16,
                                                                    mask_channels=8)).to(device="cuda")
        reducer = data_parallel.NCCLReducer(MPI.COMM_SELF, _StandInNCCL, cupy_standin.cuda)
        parallel = DataParallel(model, MPI.COMM_SELF, reducer)
        params = trainable_parameters(model)
        for k, p in enumerate(params):
            p.grad = None if k == 0 else cupy_standin.full(p.data.shape, 0.5, p.data.dtype)
        with cupy_standin.counting() as reads:
            parallel.average(1.0)
        (members, offsets, buffer), = parallel.buckets
        assert _StandInNCCL.calls == [(buffer.data.ptr, buffer.data.ptr, buffer.size, 7, 0)]
        assert params[0].grad is None and all(type(p.grad) is cupy_standin.ndarray for p in params[1:])
        assert float(params[1].grad.sum()) == 0.5 * params[1].data.size
        assert reads.total == 1
    finally:
        backend.use_device_module(previous)

