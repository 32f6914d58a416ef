"""Asking for CUDA where it cannot run gives one clear error, from the API and the CLI alike;
the test-only simulator switch refuses to start without the simulator."""
import types

import numpy as np
import pytest

import tinymaskrcnn as tm
from tinymaskrcnn.core import backend
from tinymaskrcnn import cli


@pytest.fixture(params=["no cupy", "no gpu"])
def no_cuda(request, monkeypatch):
    """CuPy missing, or CuPy present without a usable GPU (what CuPy reports on this machine)."""
    fake = None if request.param == "no cupy" else types.SimpleNamespace(
        cuda=types.SimpleNamespace(is_available=lambda: False), ndarray=type("ndarray", (), {}))
    monkeypatch.setattr(backend, "_cupy", fake)
    return "needs CuPy" if fake is None else r"cupy.cuda.is_available\(\) is False"


def test_model_to_cuda_names_the_problem(no_cuda):
    model = tm.nn.Conv2d(3, 4, 3)
    with pytest.raises(backend.CUDAUnavailableError, match=no_cuda):
        model.to(device="cuda")
    assert backend.device_of(model.weight) == "cpu"


@pytest.mark.parametrize("argv", [["train", "--device", "cuda", "--iterations", "60"],
                                  ["evaluate", "run/checkpoint.npz", "--device", "cuda"]])
def test_cli_device_cuda_fails_first_with_one_line(no_cuda, tmp_path, capsys, argv):
    assert cli.main(argv + ["--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tinymaskrcnn {argv[0]}: error: device='cuda'") and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing was started


def test_engine_runs_one_process_on_the_gpu_by_default(monkeypatch):
    from tinymaskrcnn import engine
    monkeypatch.setattr(backend, "check_cuda", lambda: None)
    monkeypatch.setattr(engine.loop, "check_cuda", lambda: None)
    with pytest.raises(ValueError, match="device='gpu'"):
        engine.train(engine.TrainConfig(device="gpu"))
    assert engine.processes(engine.TrainConfig(device="cuda", batch_size=4)) == 1


def test_simulate_cuda_needs_the_simulator():
    from numba import config
    if config.ENABLE_CUDASIM:
        pytest.skip("this process runs numba's simulator")
    with pytest.raises(RuntimeError, match="NUMBA_ENABLE_CUDASIM=1"):
        backend.simulate_cuda()
    assert not backend.uses_cuda_kernels(np.zeros(2))
