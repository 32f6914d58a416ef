"""The device path proven on the CPU as CuPy would run it (issue 20).

1. The CuPy stand-in (tests/cupy_standin.py) is as strict as CuPy: NumPy cannot take it
   implicitly, the Numba CPU kernels refuse it, NumPy operands are refused, and every host read
   is counted.
2. With it and the CUDA kernels in numba's simulator, a tiny float64 Mask R-CNN's inference, a
   training step, clipping, AdamW and a checkpoint equal the CPU path, within a bound on host
   reads (tests/cuda_sim/standin_model.py, run in a child pytest: the simulator must be chosen
   before numba is imported).
3. Every ``xp.<name>`` the package calls exists in CuPy's namespace and takes the keywords used
   (checked against the ``cupy`` package, which imports without a GPU).
"""
import ast
import inspect
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

import cupy_standin as cs
from tinymaskrcnn.core import backend

ROOT = Path(__file__).parent.parent


@pytest.fixture
def device_module():
    previous = backend.use_device_module(cs)
    yield cs
    backend.use_device_module(previous)


def test_the_standin_refuses_what_cupy_refuses():
    a = cs.asarray(np.arange(6.0).reshape(2, 3))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)
    with pytest.raises(TypeError, match="Unsupported type"):
        a + np.ones(3)  # NumPy and device arrays do not mix
    with pytest.raises(TypeError, match="Unsupported type"):
        cs.concatenate([a, np.ones((1, 3))])
    from tinymaskrcnn.kernels.affine import channel_affine
    x = cs.zeros((1, 2, 2, 2))
    with pytest.raises(Exception, match="(?i)non-precise type|cannot determine numba type"):
        channel_affine(x, cs.ones(2), cs.zeros(2))
    assert not isinstance(a.data, (np.ndarray, cs.ndarray))  # a memory pointer, as CuPy's .data
    assert isinstance(a.sum(), cs.ndarray) and isinstance(a[0, 0], cs.ndarray)  # 0-d arrays, not host scalars


def test_the_standin_counts_every_host_read():
    a = cs.asarray(np.arange(4.0))
    with cs.counting() as reads:
        a.sum().item(), float(a[0]), int(a[1]), bool(a[2]), a.get(), cs.asnumpy(a), a.tolist()
        list(range(10))[a[1].astype(np.int64)]
        for _ in a:
            pass
        b = a * 2 + cs.exp(a)  # device work: no read
    assert dict(reads.by_kind) == {"item": 1, "float": 1, "int": 1, "bool": 1, "get": 2, "tolist": 1, "index": 1,
                                   "iteration": 1}
    assert isinstance(b, cs.ndarray)


def test_the_package_takes_the_standin_for_cupy(device_module):
    from tinymaskrcnn.functional.dispatch import kernel_for

    x = backend.to_device(np.ones((1, 1, 4, 4)), "cuda")
    assert isinstance(x, cs.ndarray) and backend.device_of(x) == "cuda" and backend.get_array_module(x) is cs
    assert backend.uses_cuda_kernels(x)
    assert kernel_for("max_pool2d_forward", x).__module__.endswith("kernels.cuda.pool")


# the GPU tests small enough for the simulator (tests/test_gpu.py, below its line "runnable on the stand-in")
GPU_TESTS_ON_THE_STANDIN = [
    "test_roi_align_backward_on_cupy_equals_numpy", "test_conv_transpose2d_on_cupy_equals_numpy",
    "test_conv2d_dilation_groups_and_1x1_on_cupy_equal_numpy", "test_kernels_run_in_order_on_a_non_default_stream",
    "test_batched_nms_per_class_on_cupy_equals_numpy"]
# The training-step GPU test is left to a real GPU: its model's mask-head RoIAlign backward takes
# over ten minutes in the simulator; tests/cuda_sim/standin_model.py runs the same comparison
# (a training step, clipping, AdamW) on a smaller model in seconds.


def test_the_model_and_the_gpu_tests_on_the_standin_equal_the_cpu_path_with_few_host_reads():
    """tests/cuda_sim/standin_model.py and the small GPU tests, in one child pytest with the
    simulator chosen and the stand-in as the GPU tests' CuPy."""
    pytest.importorskip("numba.cuda")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", TINYMASKRCNN_GPU_TESTS="standin", REQUIRE_GPU="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), *sys.path]))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-o",
                             "python_files=standin_*.py test_gpu.py", "tests/cuda_sim/standin_model.py",
                             *(f"tests/test_gpu.py::{name}" for name in GPU_TESTS_ON_THE_STANDIN)],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-3000:]
    print(result.stdout)  # the host reads, counted and placed


# ----- the package's xp.<name> calls against CuPy's namespace ----------------------------------

def xp_calls():
    """{dotted name after xp.: [(file:line, number of positional arguments or None, keywords)]}
    for every ``xp.<name>`` the package's sources use, called or not (``xp.add.at`` as "add.at")."""
    found = defaultdict(list)
    for path in sorted([*(ROOT / "tinymaskrcnn").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")]):
        tree = ast.parse(path.read_text())
        called, inner_links = {}, set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                called[id(node.func)] = node
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
                inner_links.add(id(node.value))  # xp.add inside xp.add.at: counted through the outer one
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or id(node) in inner_links:
                continue
            chain, inner = [], node
            while isinstance(inner, ast.Attribute):
                chain.append(inner.attr)
                inner = inner.value
            if not (isinstance(inner, ast.Name) and inner.id == "xp"):
                continue
            where, call = f"{path.relative_to(ROOT)}:{node.lineno}", called.get(id(node))
            if call is None:
                use = (where, None, ())
            elif any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
                use = (where, None, ())  # *args or **kwargs: only the name can be checked
            else:
                use = (where, len(call.args), tuple(k.arg for k in call.keywords))
            found[".".join(reversed(chain))].append(use)
    return found


def require_cupy():
    try:
        import cupy
    except Exception as e:  # noqa: BLE001 - not installed, or a build that cannot load
        if os.environ.get("REQUIRE_CUPY") == "1":
            pytest.fail(f"the CuPy namespace test needs the cupy package (REQUIRE_CUPY=1): {e}")
        pytest.skip(f"cupy not installed (pip install cupy-cuda13x; it imports without a GPU): {e}")
    return cupy


def test_every_xp_name_the_package_uses_exists_in_cupy_with_the_keywords_used():
    cupy = require_cupy()
    calls = xp_calls()
    assert {"zeros", "concatenate", "argsort", "add.at"} <= set(calls), sorted(calls)  # the scan finds them
    problems = []
    for name, uses in sorted(calls.items()):
        target = cupy
        for part in name.split("."):
            target = getattr(target, part, None)
        if target is None:
            problems.append(f"cupy.{name} does not exist (used at {uses[0][0]})")
            continue
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):  # a Cython function or a ufunc: the name is what can be checked
            continue
        for where, positional, keywords in uses:
            if positional is None and not keywords:
                continue
            try:
                signature.bind(*[None] * (positional or 0), **dict.fromkeys(keywords))
            except TypeError as e:
                problems.append(f"cupy.{name}{signature} cannot take the call at {where}: {e}")
    assert not problems, "\n".join(problems)
