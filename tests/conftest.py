"""Shared test set-up.

Reference tests compare with torch/torchvision. Without them installed such a test is skipped,
unless REQUIRE_REFERENCE=1 (as in .ci/run), where a missing reference is a failure.
"""
import os

import numpy as np
import pytest


def require_reference():
    """Import torch and torchvision, or skip (fail under REQUIRE_REFERENCE=1)."""
    try:
        import torch
        import torchvision  # noqa: F401
    except ImportError as e:
        if os.environ.get("REQUIRE_REFERENCE") == "1":
            pytest.fail(f"reference test needs torch and torchvision (REQUIRE_REFERENCE=1): {e}")
        pytest.skip("torch/torchvision not installed: pip install -e '.[reference]'")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return torch


@pytest.fixture
def torch():
    return require_reference()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(params=["fast", "twins"])
def conv_path(request):
    """Run the test on the fast kernels (the convolution's schedule, functional/conv_schedule.py) and
    on their twins (the textbook convolution, functional/conv_textbook.py): ``tm.use_kernels``."""
    from tinymaskrcnn import use_kernels

    with use_kernels(request.param):
        yield request.param
