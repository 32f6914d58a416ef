"""Data-parallel training on the CPU: a second process computes half of each batch's gradient.

Why: on the small images of the main job one training step is hundreds of small operations. A
2-core machine runs two single-threaded processes, one image each, 1.3x faster than one process
whose convolutions use both cores (0.46 against 0.60 s a step on the shapes set, measured in
docs/benchmarks.md): the small matrix products, the batch norms and the RoI ops parallelise
badly inside a step but perfectly across images.

How (the scheme of torch's DistributedDataParallel, on one machine):

* every parameter's array lives in one block of shared memory, so a replica in the worker
  process reads the values the main process's optimizer writes, without copying;
* each step the batch is split; the worker gets its half and a seed drawn from the project's
  generator (so its sampling is repeatable and a resumed run is exact), the main process does
  the other half, the worker writes its gradient into a second shared block, and the main
  process averages the two gradients before clipping and the optimizer step;
* each half is a batch of its own: its losses are normalised over its own samples and its
  BatchNorm layers use its own statistics (as DDP without SyncBatchNorm); the losses and
  statistics reported are the halves' means;
* buffers (BatchNorm running statistics, frozen layers) are copied to the worker once at the
  start; the running statistics that count are the main process's, as DDP's rank 0.
"""
import ctypes
import multiprocessing
import os
import traceback
from contextlib import contextmanager

import numpy as np

from . import random as tm_random


def _block_layout(params):
    """(offset, nbytes) of each parameter in one block, 64-byte aligned, and the block's size."""
    layout, offset = [], 0
    for p in params:
        layout.append((offset, p.data.nbytes))
        offset += -(-p.data.nbytes // 64) * 64
    return layout, max(offset, 64)


def _views(raw, params, layout):
    """Arrays over the shared block ``raw``, one per parameter, with its shape and dtype."""
    buffer = np.frombuffer(raw, dtype=np.uint8)
    return [buffer[o:o + n].view(p.data.dtype).reshape(p.data.shape) for p, (o, n) in zip(params, layout)]


def _trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def forward_backward(model, images, targets, seed=None):
    """Losses of ``images`` and their gradient in every ``.grad`` (cleared first): returns
    (loss values, training statistics). ``seed``, when given, reseeds the project's generator
    first (the worker's half of a batch)."""
    if seed is not None:
        tm_random.manual_seed(seed)
    for p in model.parameters():
        p.grad = None
    stats = {}
    losses = model(images, targets, stats=stats)
    values = {name: float(loss.item()) for name, loss in losses.items()}
    sum(losses.values()).backward()
    return values, stats


def _worker_main(connection, build, state, param_raw, grad_raw):
    """The worker process: build the replica, then answer steps until told to stop."""
    try:
        from . import engine

        model = engine.build_model(*build)
        model.load_state_dict(state)
        model.train()
        params = _trainable(model)
        layout, _ = _block_layout(params)
        for p, view in zip(params, _views(param_raw, params, layout)):
            p.data = view
        grads = _views(grad_raw, params, layout)
        connection.send(("ready",))
    except Exception:
        connection.send(("error", traceback.format_exc()))
        return
    while True:
        message = connection.recv()
        if message[0] == "stop":
            return
        try:
            values, stats = forward_backward(model, *message[1:])
            for p, g in zip(params, grads):
                if p.grad is None:
                    g[...] = 0
                else:
                    g[...] = p.grad
            connection.send(("ok", values, stats))
        except Exception:
            connection.send(("error", traceback.format_exc()))


@contextmanager
def _environment(**variables):
    """``os.environ`` with ``variables`` set inside the block (a spawned child inherits it)."""
    before = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class DataParallel:
    """Train ``model`` with its batches split between this process and one worker process.

    ``build`` is ``(model_name, num_classes, model_kwargs)``, what ``engine.build_model`` needs
    to make the replica. Use as a context manager (the worker is stopped on leaving, also on an
    error); ``step(images, targets)`` leaves the averaged gradient in every trainable
    parameter's ``.grad`` and returns the halves' mean losses and statistics. Both processes
    run single-threaded meanwhile: two processes are the two cores' work.
    """

    def __init__(self, model, build):
        self.model, self.build = model, build
        self.params = _trainable(model)
        if not self.params:
            raise ValueError("data-parallel training needs a model with trainable parameters")
        if any(not isinstance(p.data, np.ndarray) for p in self.params):
            raise TypeError("data-parallel training runs on NumPy arrays (the CPU); a GPU model trains in one process")
        self._process = self._connection = None

    def __enter__(self):
        import numba
        from threadpoolctl import threadpool_limits

        context = multiprocessing.get_context("spawn")  # a fork would copy live thread pools
        layout, size = _block_layout(self.params)
        param_raw, grad_raw = context.RawArray(ctypes.c_char, size), context.RawArray(ctypes.c_char, size)
        for p, view in zip(self.params, _views(param_raw, self.params, layout)):
            view[...] = p.data
            p.data = view  # the optimizer updates it in place, the worker reads it
        self._worker_grads = _views(grad_raw, self.params, layout)
        self._connection, child = context.Pipe()
        state = {k: np.array(v) for k, v in self.model.state_dict().items()}
        with _environment(NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"):
            self._process = context.Process(target=_worker_main, args=(child, self.build, state, param_raw, grad_raw),
                                            name="tinymaskrcnn-data-parallel", daemon=True)
            self._process.start()
        child.close()
        self._numba_threads = numba.get_num_threads()
        numba.set_num_threads(1)
        self._blas = threadpool_limits(1)
        try:
            self._receive()  # "ready", or the worker's error
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        import numba

        if self._process is not None:
            try:
                self._connection.send(("stop",))
            except (OSError, ValueError):
                pass
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join()
            self._connection.close()
            self._process = None
            self._blas.restore_original_limits()
            numba.set_num_threads(self._numba_threads)
        return False

    def _receive(self):
        try:
            message = self._connection.recv()
        except EOFError:
            self._process.join(timeout=5)
            raise RuntimeError(f"the data-parallel worker process died (exit code {self._process.exitcode}); "
                               "train with processes=1 to see the error in this process") from None
        if message[0] == "error":
            raise RuntimeError(f"the data-parallel worker process failed:\n{message[1]}")
        return message

    def step(self, images, targets):
        """Forward and backward of the batch, split in two; returns (loss values, statistics)."""
        if len(images) < 2:
            raise ValueError(f"data-parallel training splits each batch in two: got a batch of {len(images)} image(s); "
                             "use batch_size >= 2 or processes=1")
        half = len(images) // 2
        seed = int(tm_random.get_rng().integers(2 ** 63))  # the worker's half: repeatable from this run's state
        self._connection.send(("step", images[half:], targets[half:], seed))
        values, stats = forward_backward(self.model, images[:half], targets[:half])
        _, worker_values, worker_stats = self._receive()
        for p, g in zip(self.params, self._worker_grads):
            p.grad = g.copy() if p.grad is None else p.grad + g
            p.grad *= 0.5
        values = {k: (v + worker_values[k]) / 2 for k, v in values.items()}
        stats = {k: (v + worker_stats[k]) / 2 if k in worker_stats else v for k, v in stats.items()}
        return values, stats
