"""functional/arguments.py: the one (height, width) pair check that every op and layer uses."""
from numbers import Real

import numpy as np
import pytest

import tinymaskrcnn.functional as F
from tinymaskrcnn import nn
from tinymaskrcnn.functional.arguments import pair


def test_pair_accepts_an_int_or_two_and_converts():
    assert pair(3, "stride", "op") == (3, 3)
    assert pair((2, np.int64(5)), "stride", "op") == (2, 5) and type(pair((2, np.int64(5)), "s", "op")[1]) is int
    assert pair([1, 0], "padding", "op", 0) == (1, 0)
    assert pair(np.float32(0.5), "scale_factor", "op", kind=Real) == (0.5, 0.5)


@pytest.mark.parametrize("value", [True, 1.5, (1, 2, 3), (1,), "same", None])
def test_a_wrong_type_or_length_is_a_type_error(value):
    with pytest.raises(TypeError, match=r"conv2d: stride must be an int or a pair of ints \(height, width\)"):
        pair(value, "stride", "conv2d", 1)


@pytest.mark.parametrize("value,minimum,words", [(0, 1, "positive"), ((1, -1), 0, "non-negative"), (2, 3, ">= 3")])
def test_a_value_below_the_minimum_is_a_value_error(value, minimum, words):
    with pytest.raises(ValueError, match=f"op: size must be {words}, got"):
        pair(value, "size", "op", minimum)


def test_ops_and_layers_raise_the_same_errors():
    x = np.zeros((1, 2, 6, 6), np.float32)
    for call in (lambda: F.max_pool2d(x, 2.0), lambda: F.conv2d(x, np.zeros((2, 2, 3, 3), np.float32), stride=2.0),
                 lambda: nn.Conv2d(2, 2, kernel_size=(3, 3, 3)), lambda: F.interpolate(x, size=(2, 3, 4))):
        with pytest.raises(TypeError, match="must be an int or a pair of ints"):
            call()
    for call in (lambda: F.max_pool2d(x, 2, stride=0), lambda: nn.Conv2d(2, 2, 3, stride=0)):
        with pytest.raises(ValueError, match="stride must be positive"):
            call()
