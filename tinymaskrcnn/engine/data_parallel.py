"""Data-parallel training over N processes through MPI: each process computes the gradient of its
share of a batch, and an Allreduce sums the shares' gradients.

Why it is exact. The loss of a batch of B images is the mean of per-image losses,
L = (1/B) sum_i l_i, so its gradient is (1/B) sum_i grad l_i. Split the batch into shares S_r of
n_r images (r = 0..N-1) and let process r compute g_r = (1/n_r) sum_{i in S_r} grad l_i, the
gradient of its own mean loss. Then

    sum_r (n_r / B) g_r = (1/B) sum_r sum_{i in S_r} grad l_i = grad L,

so each process multiplies its gradient by n_r / B and an Allreduce (sum) hands every process
the whole batch's gradient. Every process then runs the same optimizer step on the same
gradient from the same parameters, so the parameters stay equal without ever being sent (the
scheme of torch's DistributedDataParallel, Horovod and ChainerMN). Mask R-CNN's losses normalise
over the samples each image contributes rather than per image, so a share's loss is the mean
over its own samples: the averaged gradient is DDP's, equal to one process computing the shares
in turn (what tests/test_mpi.py checks), not to one forward pass over the whole batch.

What does not average: normalisation statistics. A BatchNorm layer in training normalises with
its share's statistics and updates its running averages from them; those stay per process (as
DDP without SyncBatchNorm) and the checkpoint keeps rank 0's. They never enter the gradient of
a training step, so training is exact whatever they hold; the shapes model uses InstanceNorm2d,
which has none.

How:

* ``launch`` starts ``mpiexec -n N`` as a child process, as torchrun starts its workers (MPI
  cannot make processes from a singleton here): each rank runs ``train`` on the same config, and
  the parent reports one line if a rank fails or dies. Under a launcher the user typed (``mpiexec
  -n N -hosts a,b tinymaskrcnn train ...``) ``launched_size`` sees MPI's environment and the same
  code runs without a parent.
* the gradients of all parameters are copied into one flat buffer per dtype (a few large
  messages instead of one per parameter: each message costs a latency), summed in place by one
  Allreduce, and handed back as views of the buffer.
* sampling: every process holds the same generator state; each step draws N seeds from it, runs
  its share with the seed of its rank, then restores the state that follows the draw. The run
  stays repeatable and every rank's state, hence the checkpoint, is the same.
* rank 0 alone writes the run folder (checkpoints, metrics, pictures); every rank reads the
  data and the checkpoint it resumes from.
* on GPUs (``device='cuda'``, one GPU per rank) the buffer is a CuPy array summed by NCCL on
  the device: the gradients never cross to the host.
"""
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
import time

import numpy as np

from ..core import random as tm_random
from ..core.backend import get_array_module, is_cupy
from ..functional.dispatch import ENVIRONMENT_VARIABLE, get_kernels
from .step import forward_backward, trainable_parameters

# Variables that MPI launchers set in every rank's environment (MPICH's Hydra, Intel MPI and
# others through PMI; Open MPI; PMIx launchers such as srun): their presence means "already under MPI"
_LAUNCHER_SIZE = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_NTASKS")
# The ranks' first line: tinymaskrcnn from where the parent's package lives (argv[1]), not from the
# current folder: from a repository root that holds the source tree's tinymaskrcnn/, which lacks
# the kernels a non-editable install puts in tinymaskrcnn.kernels.
_BOOTSTRAP = ("import sys; sys.path[0] = sys.argv[1]; "
              "from tinymaskrcnn.engine.data_parallel import _rank_main; _rank_main(sys.argv[2])")
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_INSTALL_HINT = "pip install mpi4py mpich (or mpi4py built on your cluster's MPI)"


class MPIUnavailableError(RuntimeError):
    """Training on several processes was asked for where mpi4py or mpiexec is missing."""


class RankFailedError(RuntimeError):
    """A rank of a data-parallel run failed or died; the message names the rank, its exit
    status and its error line. Every other rank has been stopped."""


def launched_size():
    """The number of processes of the MPI job this process is a rank of, None when it was not
    started by an MPI launcher."""
    for name in _LAUNCHER_SIZE:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return None


def communicator():
    """MPI's world communicator (mpi4py), with a one-line error naming how to install it."""
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as e:  # no mpi4py, or no MPI library for it to load
        raise MPIUnavailableError(f"training on several processes needs MPI: {_INSTALL_HINT}, or train with "
                                  f"processes=1 (--processes 1) ({e})") from None
    return MPI.COMM_WORLD


def local_rank(comm):
    """(this process's rank among the ranks on its machine, how many run there)."""
    from mpi4py import MPI

    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return local.Get_rank(), local.Get_size()
    finally:
        local.Free()


def use_local_resources(comm, device):
    """Give this rank its part of the machine: on the CPU its cores' share of threads (a rank
    started by ``launch`` already has it from the environment), on GPUs one GPU per rank on a
    machine, by its rank there."""
    import numba
    from threadpoolctl import threadpool_limits

    rank, ranks = local_rank(comm)
    if device == "cuda":
        import cupy

        cupy.cuda.Device(rank % cupy.cuda.runtime.getDeviceCount()).use()
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // ranks)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    threadpool_limits(threads)


def idle_barrier(comm, interval=0.01):
    """Wait for every rank of ``comm`` (None: return at once) while one of them works alone
    (rank 0 evaluating or drawing), sleeping between polls: MPI's own Barrier spins, which would
    take a core from the rank that works where ranks share cores."""
    if comm is None:
        return
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(interval)


def share(batch_size, size, rank):
    """The slice of a batch that ``rank`` of ``size`` processes trains on: sizes differ by at most one."""
    start = rank * batch_size // size
    return slice(start, (rank + 1) * batch_size // size)


class HostReducer:
    """Sums NumPy buffers over the ranks of ``comm`` with MPI's Allreduce, in place."""

    def __init__(self, comm):
        self.comm = comm

    def allreduce(self, buffer):
        from mpi4py import MPI

        self.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)


class NCCLReducer:
    """Sums CuPy buffers over the ranks of ``comm`` on the GPUs with NCCL, in place, on the
    current stream: no copy to the host. ``nccl`` is CuPy's ``cupy.cuda.nccl`` (a test passes a
    stand-in); rank 0 makes NCCL's id and MPI carries it to the others."""

    _TYPES = {np.dtype(np.float32): "NCCL_FLOAT32", np.dtype(np.float64): "NCCL_FLOAT64"}

    def __init__(self, comm, nccl=None, cuda=None):
        if nccl is None:
            from cupy.cuda import nccl
        if cuda is None:
            import cupy
            cuda = cupy.cuda
        self.nccl, self.cuda = nccl, cuda
        uid = comm.bcast(nccl.get_unique_id() if comm.Get_rank() == 0 else None, root=0)
        self.communicator = nccl.NcclCommunicator(comm.Get_size(), uid, comm.Get_rank())

    def allreduce(self, buffer):
        dtype = getattr(self.nccl, self._TYPES[np.dtype(buffer.dtype)])
        stream = self.cuda.get_current_stream().ptr
        self.communicator.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size, dtype, self.nccl.NCCL_SUM, stream)


class DataParallel:
    """Train ``model`` with each batch split over the ranks of ``comm`` (an mpi4py communicator):
    ``step(images, targets)`` runs this rank's share (``share``) and leaves the whole batch's
    gradient (the module docstring) in every trainable parameter's ``.grad`` on every rank;
    it returns the batch's losses and statistics, the shares' means weighted by their sizes.

    ``reducer`` sums a flat buffer over the ranks in place (default: ``HostReducer`` for NumPy
    parameters, ``NCCLReducer`` for CuPy ones). On creation rank 0's parameters and buffers are
    copied to every rank, so the ranks start equal whatever each built.

    A parameter that some shares give no gradient counts as zero there (as in DDP); one that no
    share gives keeps none, so the optimizer skips it, as in one process.
    """

    def __init__(self, model, comm, reducer=None):
        self.model, self.comm = model, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.params = trainable_parameters(model)
        if not self.params:
            raise ValueError("data-parallel training needs a model with trainable parameters")
        self.device = any(is_cupy(p.data) for p in self.params)
        self.reducer = reducer or (NCCLReducer(comm) if self.device else HostReducer(comm))
        # one bucket per dtype: the gradients, then one "has a gradient" count per parameter
        self.buckets = []
        for dtype in dict.fromkeys(p.data.dtype for p in self.params):
            members = [p for p in self.params if p.data.dtype == dtype]
            sizes = [p.data.size for p in members]
            offsets = np.cumsum([0] + sizes)
            xp = get_array_module(members[0].data)
            self.buckets.append((members, offsets, xp.zeros(int(offsets[-1]) + len(members), dtype)))
        self._broadcast_state()

    def _broadcast_state(self):
        """Rank 0's parameters and buffers on every rank (host copies: once, at the start)."""
        from ..core.backend import to_numpy

        state = {k: to_numpy(v) for k, v in self.model.state_dict().items()} if self.rank == 0 else None
        state = self.comm.bcast(state, root=0)
        if self.rank != 0:
            self.model.load_state_dict(state)

    def step(self, images, targets):
        """Forward and backward of this rank's share of the batch, then the gradients summed."""
        if len(images) < self.size:
            raise ValueError(f"data-parallel training splits each batch over {self.size} processes: got a batch of "
                             f"{len(images)} image(s); use a batch_size of at least {self.size} or fewer processes")
        rng = tm_random.get_rng()
        seeds = rng.integers(2 ** 63, size=self.size)  # the same draw on every rank
        after = tm_random.get_state()
        part = share(len(images), self.size, self.rank)
        try:
            values, stats = forward_backward(self.model, images[part], targets[part], seed=int(seeds[self.rank]))
        finally:
            tm_random.set_state(after)  # every rank continues from the same state
        weight = len(images[part]) / len(images)
        self.average(weight)
        return self._mean_of_shares(weight, values, stats)

    def average(self, weight):
        """Each ``.grad`` times ``weight`` (this rank's share of the batch), summed over the
        ranks: one Allreduce per bucket."""
        for members, offsets, buffer in self.buckets:
            xp = get_array_module(buffer)
            for k, p in enumerate(members):
                view = buffer[offsets[k]:offsets[k + 1]]
                if p.grad is None:
                    view[...] = 0
                else:
                    xp.multiply(p.grad.reshape(-1), weight, out=view)
            buffer[offsets[-1]:] = xp.asarray(np.array([p.grad is not None for p in members], buffer.dtype))
            self.reducer.allreduce(buffer)
            counts = buffer[offsets[-1]:]
            # which parameters got a gradient anywhere: one small read, the counts alone
            present = counts.get() if hasattr(counts, "get") else counts
            for k, p in enumerate(members):
                p.grad = buffer[offsets[k]:offsets[k + 1]].reshape(p.data.shape) if present[k] > 0 else None

    def _mean_of_shares(self, weight, values, stats):
        gathered = self.comm.allgather((weight, values, stats))
        values = {k: sum(w * v[k] for w, v, _ in gathered) for k in values}
        means = {}
        for k in stats:
            having = [(w, s[k]) for w, _, s in gathered if k in s]
            means[k] = sum(w * float(v) for w, v in having) / sum(w for w, _ in having)
        return values, means


def _parallel_environment(threads):
    """The ranks' environment: this one's, the kernel table in use, and ``threads`` threads each."""
    limits = {name: str(threads) for name in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                              "MKL_NUM_THREADS")}
    return {**os.environ, **limits, ENVIRONMENT_VARIABLE: get_kernels()}


def mpiexec():
    """The mpiexec beside this Python (a virtual environment's, from the mpich wheel), else the
    one on PATH; a one-line error naming how to install it."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = here if os.access(here, os.X_OK) else shutil.which("mpiexec")
    if found is None:
        raise MPIUnavailableError(f"training on several processes needs MPI's mpiexec: {_INSTALL_HINT}, or train "
                                  "with processes=1 (--processes 1)")
    return found


# Hydra's report of a rank that a signal ended: a banner of '=' lines naming its process id and exit code
_BANNER = re.compile(r"^(=+|=\s.*|YOUR APPLICATION TERMINATED.*|This typically refers.*|Please see the FAQ.*|\s*)$")


def launch(function, args, processes, threads=1):
    """Run ``function(*args)`` on ``processes`` MPI ranks started by ``mpiexec`` as a child
    process; returns what rank 0's call returned. ``function`` and ``args`` travel pickled (the
    ranks are this package's own processes), so ``function`` must be importable by name.

    If a rank raises, it writes its error and exits at once; if one dies (a signal, the
    out-of-memory killer), mpiexec ends the others. Either way every rank is stopped within
    seconds and a RankFailedError names the rank and its exit status in one line (a
    KeyboardInterrupt in a rank is raised here as one)."""
    communicator()  # before any work: this Python has mpi4py (the ranks import it)
    job = tempfile.mkdtemp(prefix="tinymaskrcnn-mpi-")
    try:
        with open(os.path.join(job, "call.pkl"), "wb") as f:
            pickle.dump((function, args), f)
        command = [mpiexec(), "-n", str(processes), sys.executable, "-c", _BOOTSTRAP, _PACKAGE_PARENT, job]
        process = subprocess.Popen(command, env=_parallel_environment(threads), stdout=subprocess.PIPE,
                                   stdin=subprocess.DEVNULL)
        banner = []
        forward = threading.Thread(target=_forward_output, args=(process.stdout, banner), daemon=True)
        forward.start()
        try:
            code = process.wait()
        except BaseException:  # Ctrl-C or SIGTERM here: the ranks are stopped before it goes on
            _stop(process)
            raise
        forward.join(timeout=5)
        if code != 0:
            raise _failure(job, processes, code, banner)
        with open(os.path.join(job, "result.pkl"), "rb") as f:
            return pickle.load(f)
    finally:
        shutil.rmtree(job, ignore_errors=True)


def _forward_output(stream, banner):
    """Copy the ranks' standard output to ours line by line, keeping Hydra's banner (the
    lines that report a rank ended by a signal) aside for the one-line report."""
    inside = False
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\n")
        if line.startswith("=" * 20):
            inside = True
        if inside and _BANNER.match(line):
            banner.append(line)
            continue
        inside = False
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _stop(process):
    """Interrupt mpiexec (it passes the signal to the ranks), then kill it if it lingers."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _failure(job, processes, code, banner):
    """The RankFailedError of a job whose mpiexec exited with ``code``: the first rank that
    wrote its error, else the rank Hydra's banner names by process id."""
    reports = {}
    for name in os.listdir(job):
        if name.startswith("rank-") and name.endswith(".error"):
            with open(os.path.join(job, name), "rb") as f:
                reports[int(name[5:-6])] = pickle.load(f)
    if reports:
        rank = min(reports)
        status, message, interrupted = reports[rank]
        if interrupted:
            raise KeyboardInterrupt
        return RankFailedError(f"rank {rank} of {processes} stopped with exit status {status}: {message}; "
                               "every rank was stopped")
    text = "\n".join(banner)
    pid, exit_code = re.search(r"PID (\d+)", text), re.search(r"EXIT CODE: (\d+)", text)
    pids = {}
    for name in os.listdir(job):
        if name.endswith(".pid"):
            with open(os.path.join(job, name)) as f:
                pids[int(f.read())] = int(name[5:-4])
    status = int(exit_code.group(1)) if exit_code else code
    how = f"killed by {_signal_name(status)}" if 0 < status < 64 and "signal" in text else f"exit status {status}"
    if not (pid and int(pid.group(1)) in pids):  # it ended before it ran the call: its own words are above
        return RankFailedError(f"a rank of {processes} ended before it started training (mpiexec's exit status "
                               f"{code}; its error above); every rank was stopped")
    oom = ", as the system's out-of-memory killer does" if how == "killed by SIGKILL" else ""
    return RankFailedError(f"rank {pids[int(pid.group(1))]} of {processes} died ({how}{oom}); every rank was stopped")


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _rank_main(job):
    """A rank of ``launch``: runs the pickled call; rank 0 writes its result. On an exception the
    rank writes (exit status, message, interrupted?) and leaves at once with ``os._exit``:
    without MPI_Finalize, so mpiexec sees a rank gone and ends the others (a rank that finalised
    would wait for them)."""
    comm = communicator()
    rank = comm.Get_rank()
    with open(os.path.join(job, f"rank-{rank}.pid"), "w") as f:
        f.write(str(os.getpid()))
    if rank != 0:  # rank 0 speaks for the run (the report, the weights it loaded, ...)
        sys.stdout = open(os.devnull, "w")
    with open(os.path.join(job, "call.pkl"), "rb") as f:
        function, args = pickle.load(f)
    try:
        result = function(*args)
        if rank == 0:
            with open(os.path.join(job, "result.pkl"), "wb") as f:
                pickle.dump(result, f)
    except BaseException as e:  # every way out must end the other ranks too
        interrupted = isinstance(e, KeyboardInterrupt)
        status = 130 if interrupted else 2
        message = str(e) or type(e).__name__
        if not isinstance(e, (ValueError, OSError, FloatingPointError, MemoryError, RankFailedError)):
            message = f"{type(e).__name__}: {message}"  # a bug: its type says which, its traceback where
            traceback.print_exc()
        notes = " ".join(getattr(e, "__notes__", ()))
        with open(os.path.join(job, f"rank-{rank}.error"), "wb") as f:
            pickle.dump((status, message + (f" ({notes})" if notes else ""), interrupted), f)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
