"""Data-parallel training on the CPU: a second process computes half of each batch's gradient.

Why: on the small images of the main job one training step is hundreds of small operations. A
2-core machine runs two single-threaded processes, one image each, faster than one process whose
convolutions use both cores: the small matrix products, the normalisations and the RoI ops
parallelise badly inside a step but perfectly across images (the figures: docs/benchmarks.md,
"Figures behind design choices").

How (the scheme of torch's DistributedDataParallel, on one machine):

* every parameter's array lives in one block of shared memory, so a replica in the worker
  process reads the values the main process's optimizer writes, without copying;
* each step the batch is split; the worker gets its half and a seed drawn from the project's
  generator (so its sampling is repeatable and a resumed run is exact), the main process does
  the other half, the worker writes its gradient into a second shared block, and the main
  process averages the two gradients before clipping and the optimizer step (as DDP does, a
  parameter that one half gives no gradient counts as zero there, so its gradient is half the
  other's; one that neither gives keeps none, as in one process, so the optimizer skips it);
* each half is a batch of its own: its losses are normalised over its own samples and its
  BatchNorm layers use its own statistics (as DDP without SyncBatchNorm: with one image a
  process, BatchNorm's running statistics then average one-image statistics, which is why the
  shapes model normalises with InstanceNorm2d instead); the losses and statistics reported are
  the halves' means;
* buffers (BatchNorm running statistics, frozen layers) are copied to the worker once at the
  start; the running statistics that count are the main process's, as DDP's rank 0.
"""
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import traceback
from multiprocessing.connection import Connection

import numpy as np

from ..core import random as tm_random
from ..functional.dispatch import ENVIRONMENT_VARIABLE, get_kernels
from .step import forward_backward, trainable_parameters

# each process runs on one core: two processes are the two cores' work
_SINGLE_THREADED = {"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                    "MKL_NUM_THREADS": "1"}
# The worker's first line: look for tinymaskrcnn first where the caller's package lives (argv[1]),
# not in the current folder as `python -m` would. From a repository root that folder holds the
# source tree's tinymaskrcnn/, which has no kernels (they are installed from kernels/ as
# tinymaskrcnn.kernels), so a non-editable install's worker would fail to import.
_BOOTSTRAP = "import sys; sys.path[0] = sys.argv[1]; from tinymaskrcnn.engine.data_parallel import _worker_main; _worker_main()"
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class WorkerDiedError(RuntimeError):
    """The data-parallel worker process ended without reporting an error of its own (it could
    not start, or it was killed); the message gives its exit status and last error line."""


def _block_layout(params):
    """(offset, nbytes) of each parameter in one block, 64-byte aligned, and the block's size."""
    layout, offset = [], 0
    for p in params:
        layout.append((offset, p.data.nbytes))
        offset += -(-p.data.nbytes // 64) * 64
    return layout, max(offset, 64)


def _views(block, params, layout):
    """Arrays over the shared ``block`` (uint8), one per parameter, with its shape and dtype."""
    return [block[o:o + n].view(p.data.dtype).reshape(p.data.shape) for p, (o, n) in zip(params, layout)]


def _worker(connection):
    """The worker process: build the replica, map the shared blocks, answer steps until told to
    stop or until the main process goes away."""
    try:
        from ..models.registry import build_model

        _, build, state, param_file, grad_file = connection.recv()
        model = build_model(*build)
        model.load_state_dict(state)
        model.train()
        params = trainable_parameters(model)
        layout, size = _block_layout(params)
        for p, view in zip(params, _views(np.memmap(param_file, np.uint8, "r+", shape=size), params, layout)):
            p.data = view
        grads = _views(np.memmap(grad_file, np.uint8, "r+", shape=size), params, layout)
        connection.send(("ready",))
    except Exception as e:
        _send_error(connection, e)
        return
    while True:
        try:
            message = connection.recv()
        except EOFError:
            return
        if message[0] == "stop":
            return
        try:
            values, stats = forward_backward(model, *message[1:])
            missing = []  # the parameters this half gave no gradient (their block is left as it was)
            for k, (p, g) in enumerate(zip(params, grads)):
                if p.grad is None:
                    missing.append(k)
                else:
                    g[...] = p.grad
            connection.send(("ok", values, stats, missing))
        except Exception as e:
            _send_error(connection, e)


def _send_error(connection, error):
    """Send the worker's traceback, and the exception itself when it survives pickling, so the
    main process raises the same type (a MemoryError stays a MemoryError)."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        error = None
    connection.send(("error", traceback.format_exc(), error))


def _worker_main():
    """Entry point of the worker interpreter (see _BOOTSTRAP): argv is [-c, package parent, fd].
    Ctrl-C and a SIGTERM sent to the process group are the main process's to handle: it stops
    the worker (which also ends when the main process's end of the connection closes)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _worker(Connection(int(sys.argv[2])))


class DataParallel:
    """Train ``model`` with its batches split between this process and one worker process.

    ``build`` is ``(model_name, num_classes, model_kwargs)``, what ``build.build_model`` needs
    to make the replica. Use as a context manager (the worker is stopped on leaving, also on an
    error); ``step(images, targets)`` leaves the averaged gradient in every trainable
    parameter's ``.grad`` and returns the halves' mean losses and statistics. Both processes
    run single-threaded meanwhile. The worker is a fresh interpreter that imports this very
    tinymaskrcnn package (see _BOOTSTRAP), so the caller's script is never re-imported and no
    thread pool is copied by a fork.

    An exception in the worker is raised here with its type (its traceback as the cause); a
    worker that dies raises WorkerDiedError with its exit status and last line of stderr.
    """

    def __init__(self, model, build):
        self.model, self.build = model, build
        self.params = trainable_parameters(model)
        if not self.params:
            raise ValueError("data-parallel training needs a model with trainable parameters")
        if any(not isinstance(p.data, np.ndarray) for p in self.params):
            raise TypeError("data-parallel training runs on NumPy arrays (the CPU); a GPU model trains in one process")
        self._process = self._connection = self._stderr = None

    def __enter__(self):
        import numba
        from threadpoolctl import threadpool_limits

        layout, size = _block_layout(self.params)
        # RAM-backed files where there is /dev/shm; unlinked once both processes have mapped them
        folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
        files = [tempfile.NamedTemporaryFile(prefix="tinymaskrcnn-", dir=folder, delete=False) for _ in range(2)]
        for f in files:
            f.truncate(size)
            f.close()
        try:
            param_block, grad_block = (np.memmap(f.name, np.uint8, "r+", shape=size) for f in files)
            for p, view in zip(self.params, _views(param_block, self.params, layout)):
                view[...] = p.data
                p.data = view  # the optimizer updates it in place, the worker reads it
            self._worker_grads = _views(grad_block, self.params, layout)
            ours, theirs = socket.socketpair()
            self._connection = Connection(ours.detach())
            # the worker's stderr is kept (unlinked, in a temporary file) for the message if it dies
            self._stderr = tempfile.TemporaryFile()
            self._process = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, _PACKAGE_PARENT, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), env={**os.environ, **_SINGLE_THREADED, ENVIRONMENT_VARIABLE: get_kernels()},
                stderr=self._stderr)
            theirs.close()
            self._numba_threads = numba.get_num_threads()
            numba.set_num_threads(1)
            self._blas = threadpool_limits(1)
            state = {k: np.array(v) for k, v in self.model.state_dict().items()}
            self._send(("init", self.build, state, files[0].name, files[1].name))
            self._receive()  # "ready", or the worker's error
        except BaseException:
            self.__exit__(None, None, None)
            raise
        finally:
            for f in files:
                os.unlink(f.name)
        return self

    def __exit__(self, *exc):
        import numba

        if self._process is not None:
            try:
                self._connection.send(("stop",))
            except (OSError, ValueError):
                pass
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._connection.close()
            self._process = None
            if hasattr(self, "_blas"):
                self._blas.restore_original_limits()
                numba.set_num_threads(self._numba_threads)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return False

    def _died(self):
        try:
            code = self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # its end of the connection is gone but it still runs
            self._process.kill()
            code = self._process.wait()
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            how = f"killed by {name}" + (", as the system's out-of-memory killer does" if name == "SIGKILL" else "")
        else:
            how = f"exit code {code}"
        self._stderr.seek(0)
        lines = [line.strip() for line in self._stderr.read().decode(errors="replace").splitlines() if line.strip()]
        last = f", its last error line: {lines[-1]}" if lines else ""
        return WorkerDiedError(f"the data-parallel worker process died ({how}){last}; "
                               "train with --processes 1 (processes=1) to run in this process alone")

    def _send(self, message):
        try:
            self._connection.send(message)
        except OSError:
            raise self._died() from None

    def _receive(self):
        try:
            message = self._connection.recv()
        except (EOFError, OSError):
            raise self._died() from None
        if message[0] == "error":
            _, text, error = message
            cause = RuntimeError(f"the data-parallel worker process failed:\n{text}")
            if error is None:
                raise cause
            raise error from cause
        return message

    def step(self, images, targets):
        """Forward and backward of the batch, split in two; returns (loss values, statistics)."""
        if len(images) < 2:
            raise ValueError(f"data-parallel training splits each batch in two: got a batch of {len(images)} image(s); "
                             "use batch_size >= 2 or processes=1")
        half = len(images) // 2
        seed = int(tm_random.get_rng().integers(2 ** 63))  # the worker's half: repeatable from this run's state
        self._send(("step", images[half:], targets[half:], seed))
        values, stats = forward_backward(self.model, images[:half], targets[:half])
        _, worker_values, worker_stats, worker_missing = self._receive()
        worker_missing = set(worker_missing)
        for k, (p, g) in enumerate(zip(self.params, self._worker_grads)):
            if k in worker_missing:
                if p.grad is not None:  # the worker's share is zero
                    p.grad *= 0.5
            elif p.grad is None:
                p.grad = g * 0.5
            else:  # the tape never hands a leaf an array it still uses: add in place
                p.grad += g
                p.grad *= 0.5
        values = {k: (v + worker_values[k]) / 2 for k, v in values.items()}
        stats = {k: (v + worker_stats[k]) / 2 if k in worker_stats else v for k, v in stats.items()}
        return values, stats

