"""The Numba-CUDA kernels (kernels/cuda/), tested without a GPU.

1. Under numba's CUDA simulator against their CPU twins (tests/cuda_sim/sim_*.py). The simulator
   must be chosen before numba is imported, and this process imported numba long ago for the
   CPU kernels, so those tests run in a child pytest started with NUMBA_ENABLE_CUDASIM=1 (their
   names keep the main run from collecting them).
2. Compiled to PTX for sm_90 in float32 and float64 by the real compiler (NVVM, from the wheels
   of ``numba-cuda[cu13]``), which rejects code the simulator runs (a shift of a uint64 by an
   int64, say), and in float32 must do no float64 arithmetic (a bare ``0.5`` would).

Both need numba-cuda (the dev extra): skipped without it, failed under REQUIRE_REFERENCE=1 (CI).
"""
import importlib
import inspect
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
KERNEL_MODULES = ["im2col", "roi_align", "nms", "paste_masks", "pool", "adamw"]


def require_numba_cuda():
    try:
        import numba.cuda  # noqa: F401
        from numba.cuda.cudadrv import nvvm

        nvvm.NVVM()  # the NVVM library of the cu13 wheels
    except Exception as e:
        if os.environ.get("REQUIRE_REFERENCE") == "1":
            pytest.fail(f"the CUDA kernel tests need numba-cuda with its NVVM wheels (REQUIRE_REFERENCE=1): {e}")
        pytest.skip(f"numba-cuda with NVVM not installed: pip install 'numba-cuda[cu13]' ({e})")


def test_kernels_equal_their_cpu_twins_in_the_simulator():
    require_numba_cuda()
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=os.pathsep.join(sys.path))
    # the files are named sim_*.py so that only this child run collects them
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
                             "python_files=sim_*.py", "tests/cuda_sim"],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-3000:]


def signatures(T):
    """Argument types of every kernel, for floating type T (numba type)."""
    from numba import boolean, float64, int32, int64, uint8, uint64

    a2, a3, a4 = T[:, ::1], T[:, :, ::1], T[:, :, :, ::1]
    ints = lambda k: (int64,) * k  # noqa: E731
    return {
        "im2col_kernel": (a4, *ints(10), a3),
        "col2im_kernel": (a3, *ints(10), a4),
        "roi_align_forward_kernel": (a4, a2, T, int64, boolean, a4),
        "roi_align_backward_kernel": (a4, a2, T, int64, boolean, a4),
        "nms_mask_kernel": (a2, int64[::1], float64, uint64[:, ::1]),
        "nms_gather_kernel": (uint64[:, ::1], uint64[::1], uint8[::1]),
        "paste_masks_kernel": (a3, a2, int64, T, a3),
        "max_pool2d_forward_kernel": (a4, *ints(8), int32[:, ::1], a4, int32[:, :, :, ::1]),
        "max_pool2d_backward_kernel": (a4, int32[:, :, :, ::1], *ints(8), a4),
        "adamw_kernel": (T[::1], T[::1], T[::1], T[::1], T, T, T, T, T, T),
    }


# float32 kernels allowed float64 instructions: NMS compares the IoU with a float64 threshold
FLOAT64_ON_PURPOSE = {"nms_mask_kernel", "nms_gather_kernel"}


def all_kernels():
    found = {}
    for name in KERNEL_MODULES:
        module = importlib.import_module(f"tinymaskrcnn.kernels.cuda.{name}")
        for attr, value in vars(module).items():
            if attr.endswith("_kernel") and hasattr(value, "py_func"):
                found[attr] = value
    return found


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_every_kernel_compiles_to_ptx_for_sm90(monkeypatch, precision):
    require_numba_cuda()
    import numba
    from numba import cuda
    import numba.cuda.dispatcher

    # device functions compile for the current device's compute capability; there is none here
    monkeypatch.setattr(numba.cuda.dispatcher, "get_current_device",
                        lambda: types.SimpleNamespace(compute_capability=(9, 0)))
    kernels = all_kernels()
    table = signatures(getattr(numba, precision))
    assert set(kernels) == set(table), "a kernel without a signature in this test (or one removed)"
    for name, kernel in kernels.items():
        ptx, _ = cuda.compile_ptx(kernel.py_func, table[name], cc=(9, 0))
        assert ".entry" in ptx, name
        if precision == "float32" and name not in FLOAT64_ON_PURPOSE:
            wide = [line for line in ptx.splitlines() if ".f64" in line]
            assert not wide, f"{name} does float64 arithmetic in float32 (an untyped constant?): {wide[:3]}"
