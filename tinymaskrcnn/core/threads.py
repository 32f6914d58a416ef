"""Work shared out over the cores by Python threads, each running single-threaded BLAS.

A convolution is im2col (a copy) followed by a matrix product, many times over. Letting
Numba's threads do the copies and OpenBLAS's threads the products means every copy/product
pair hands the cores from one thread pool to the other and back; on 2 cores each hand-over
costs about a millisecond, and the copied matrix has left the cache by the time BLAS reads it.
Instead each worker thread here takes whole tiles (copy, then product, on the same core while
the tile is in its cache), with BLAS limited to one thread meanwhile. Both Numba kernels
compiled with ``nogil=True`` and NumPy's matrix products release the GIL, so the threads run
in parallel.

The number of workers follows ``numba.get_num_threads()`` (so ``numba.set_num_threads`` and
NUMBA_NUM_THREADS control it as they do every other kernel).
"""
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numba

_state = threading.local()  # .in_worker: set in the pool's threads (they must not wait on the pool)
_lock = threading.Lock()  # one map at a time: the BLAS thread count is process-wide
_pool, _pool_workers = None, 0
_blas = None  # threadpoolctl's controllers of the BLAS libraries NumPy uses, found once


def num_workers():
    """How many threads ``map_shares`` uses."""
    return numba.get_num_threads()


def _mark_worker():
    _state.in_worker = True


def _executor(workers):
    """The pool, rebuilt when the number of workers asked for has changed."""
    global _pool, _pool_workers
    if workers != _pool_workers:
        if _pool is not None:
            _pool.shutdown(wait=True)
        _pool = ThreadPoolExecutor(workers, thread_name_prefix="tinymaskrcnn", initializer=_mark_worker)
        _pool_workers = workers
    return _pool


@contextmanager
def single_threaded_blas():
    """BLAS runs in its caller's thread (no threads of its own) inside the block."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController().select(user_api="blas").lib_controllers
    before = [lib.get_num_threads() for lib in _blas]
    for lib in _blas:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(_blas, before):
            lib.set_num_threads(n)


def split(items, parts):
    """``items`` cut into at most ``parts`` contiguous runs of nearly equal length."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [items[a:b] for a, b in zip(bounds, bounds[1:])]


def map_shares(work, items, parallel=True):
    """[work(share) for share in split(items, num_workers())], the shares run in parallel.

    With ``parallel=False`` (work too small to be worth handing over) or a single share (one
    item, one worker, or a call from inside a worker) it runs in the calling thread with BLAS
    left as it is, so those products still use BLAS's threads.
    """
    workers = 1 if not parallel or getattr(_state, "in_worker", False) else num_workers()
    shares = split(items, workers)
    if len(shares) <= 1:
        return [work(share) for share in shares]
    with _lock, single_threaded_blas():
        return list(_executor(workers).map(work, shares))
