"""The data-parallel step's GPU path on one real GPU (the device check runs it: benchmarks/device_check.py):
one rank's gradients go through CuPy's NCCL on the device and come back as the same CuPy arrays,
scaled by the rank's share. Skipped without CuPy, a GPU, NCCL or mpi4py; the same code on the CuPy
stand-in runs everywhere (tests/test_mpi.py::test_gpu_gradients_are_summed_on_the_device_by_pointer)."""
import numpy as np
import pytest

from tinymaskrcnn.engine import data_parallel
from tinymaskrcnn.engine.step import trainable_parameters
from tinymaskrcnn.models.registry import build_model


def test_gpu_gradients_are_summed_by_nccl_on_one_gpu():
    cupy = pytest.importorskip("cupy")
    if not cupy.cuda.is_available():
        pytest.skip("no GPU")
    pytest.importorskip("cupy.cuda.nccl")
    MPI = pytest.importorskip("mpi4py.MPI")

    model = build_model("maskrcnn_resnet18_fpn", 3, dict(fpn_channels=8, representation_size=16, mask_channels=8))
    model.to(device="cuda")
    parallel = data_parallel.DataParallel(model, MPI.COMM_SELF)
    assert isinstance(parallel.reducer, data_parallel.NCCLReducer)
    params = trainable_parameters(model)
    expected = []
    for p in params:
        p.grad = cupy.random.standard_normal(p.data.shape).astype(p.data.dtype)
        expected.append(cupy.asnumpy(p.grad) * 0.5)
    parallel.average(0.5)
    cupy.cuda.get_current_stream().synchronize()
    for p, e in zip(params, expected):
        assert isinstance(p.grad, cupy.ndarray)
        np.testing.assert_allclose(cupy.asnumpy(p.grad), e, rtol=1e-6)
