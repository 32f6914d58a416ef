"""Argument checks shared by the ops and the layers."""
from numbers import Integral

import numpy as np

_AT_LEAST = {0: "non-negative", 1: "positive"}


def pair(value, name, op, minimum=None, kind=Integral):
    """An int (a number, for ``kind=Real``) or a pair of them -> (height, width), as ints (floats).

    One exception per kind of mistake, as Python's own: a value of another type or length (a
    bool, a float for an int, three items) raises TypeError; one below ``minimum``, ValueError.
    The messages start with ``op`` and ``name``.
    """
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2 or not all(isinstance(v, kind) and not isinstance(v, bool) for v in items):
        what = "an int or a pair of ints" if kind is Integral else "a number or a pair of numbers"
        raise TypeError(f"{op}: {name} must be {what} (height, width), got {value!r}")
    if minimum is not None and min(items) < minimum:
        raise ValueError(f"{op}: {name} must be {_AT_LEAST.get(minimum, f'>= {minimum}')}, got {value!r}")
    convert = int if kind is Integral else float
    return convert(items[0]), convert(items[1])


KERNEL_DTYPES = (np.float32, np.float64)


def kernel_dtype(op, name, dtype):
    """Refuse, in one line, a dtype the op's Numba kernels are not compiled for (float16):
    those ops take float32 and float64 only."""
    if dtype not in KERNEL_DTYPES:
        raise TypeError(f"{op}: {name} dtype {dtype} is not supported: use float32 or float64 "
                        f"(.astype(np.float32))")
