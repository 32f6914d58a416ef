"""Which implementation runs each kernel: one table, one switch.

Every hot loop of the package exists up to three times (design principle 1: every fast kernel
has a slow, readable twin):

    fast   the Numba CPU kernel (kernels/*.py); for the convolution, the tiled, threaded
           schedule of functional/conv_schedule.py (Numba im2col and Winograd kernels, BLAS);
    cuda   the Numba-CUDA kernel (kernels/cuda/*.py), for CuPy arrays;
    twin   the readable NumPy version: ``<name>_twin`` in kernels/*.py, and for the convolution
           the textbook functional/conv_textbook.py (pad, im2col, one matrix product).

The tests hold the three equal. An op asks for the function to call with the arrays it holds,

    kernel_for("roi_align_forward", input)(input, rois, ...)

and gets, by the table ``KERNELS`` below:

    CUDA arrays (CuPy, or NumPy under the simulator switch ``backend.simulate_cuda``)
        -> the cuda column; a family without one (the norms' affine map, the textbook
           convolution whose im2col and col2im are the CUDA kernels) runs its twin, which is
           array code and runs on CuPy as it is;
    otherwise the setting: "fast" (the default) -> the fast column (the twin where there is
        none), "twins" -> the twin column.

The setting starts from the environment variable TINYMASKRCNN_KERNELS (read at import, so it
reaches subprocesses, such as the data-parallel workers, which inherit the environment) and is
changed by ``set_kernels(name)``, or for a block by ``with use_kernels("twins"): ...``. An op
that records a backward chooses the backward's kernels when it runs forward, so the backward of
what a block recorded runs on the block's setting even when ``.backward()`` is called after it.

The table names functions as "module.function" under the package: "kernels.nms.nms" is the
function ``nms`` of tinymaskrcnn.kernels.nms (the file kernels/nms.py). A module is imported on
first use, so the detection kernels cost nothing until a detector runs, and numba-cuda, which
may be absent, is imported only when a CUDA array comes in.
"""
import importlib
import os
from contextlib import contextmanager
from typing import NamedTuple, Optional

from ..core.backend import uses_cuda_kernels

ENVIRONMENT_VARIABLE = "TINYMASKRCNN_KERNELS"
SETTINGS = ("fast", "twins")


class Implementations(NamedTuple):
    """Where one kernel's implementations live ("module.function"; None: there is none, the twin runs)."""

    fast: Optional[str]
    cuda: Optional[str]
    twin: str


KERNELS = {
    # The convolution's three products (functional/conv.py): y = W im2col(x) + b,
    # dL/dx = col2im(W^T dY), dL/dW = dY im2col(x)^T. On CUDA arrays: the textbook products.
    "conv2d_forward": Implementations(
        fast="functional.conv_schedule.conv2d_forward",
        cuda=None,
        twin="functional.conv_textbook.conv2d_forward"),
    "conv2d_input_grad": Implementations(
        fast="functional.conv_schedule.conv2d_input_grad",
        cuda=None,
        twin="functional.conv_textbook.conv2d_input_grad"),
    "conv2d_weight_grad": Implementations(
        fast="functional.conv_schedule.conv2d_weight_grad",
        cuda=None,
        twin="functional.conv_textbook.conv2d_weight_grad"),
    # im2col and col2im of the textbook convolution (the fast one has its own, kernels/im2col.py)
    "im2col": Implementations(
        fast=None,
        cuda="kernels.cuda.im2col.im2col",
        twin="functional.conv_textbook.im2col"),
    "col2im": Implementations(
        fast=None,
        cuda="kernels.cuda.im2col.col2im",
        twin="functional.conv_textbook.col2im"),
    # max pooling (functional/pool.py)
    "max_pool2d_forward": Implementations(
        fast="kernels.pool.max_pool2d_forward",
        cuda="kernels.cuda.pool.max_pool2d_forward",
        twin="kernels.pool.max_pool2d_forward_twin"),
    "max_pool2d_backward": Implementations(
        fast="kernels.pool.max_pool2d_backward",
        cuda="kernels.cuda.pool.max_pool2d_backward",
        twin="kernels.pool.max_pool2d_backward_twin"),
    # frozen batch norm's per-channel affine map (functional/norm.py)
    "channel_affine": Implementations(
        fast="kernels.affine.channel_affine",
        cuda=None,
        twin="kernels.affine.channel_affine_twin"),
    # AdamW's update of one parameter (optim/optimizer.py)
    "adamw_update": Implementations(
        fast="kernels.adamw.adamw_update",
        cuda="kernels.cuda.adamw.adamw_update",
        twin="kernels.adamw.adamw_update_twin"),
    # the detector's ops (ops/roi_align.py, ops/boxes.py, ops/paste_masks.py)
    "roi_align_forward": Implementations(
        fast="kernels.roi_align.roi_align_forward",
        cuda="kernels.cuda.roi_align.roi_align_forward",
        twin="kernels.roi_align.roi_align_forward_twin"),
    "roi_align_backward": Implementations(
        fast="kernels.roi_align.roi_align_backward",
        cuda="kernels.cuda.roi_align.roi_align_backward",
        twin="kernels.roi_align.roi_align_backward_twin"),
    "nms": Implementations(
        fast="kernels.nms.nms",
        cuda="kernels.cuda.nms.nms",
        twin="kernels.nms.nms_twin"),
    "paste_masks": Implementations(
        fast="kernels.paste_masks.paste_masks",
        cuda="kernels.cuda.paste_masks.paste_masks",
        twin="kernels.paste_masks.paste_masks_twin"),
}

_PACKAGE = __name__.partition(".")[0]


def _checked(name, what):
    if name not in SETTINGS:
        raise ValueError(f"{what} must be 'fast' (the Numba kernels) or 'twins' (their NumPy twins), got {name!r}")
    return name


_setting = _checked(os.environ.get(ENVIRONMENT_VARIABLE) or "fast", ENVIRONMENT_VARIABLE)


def get_kernels():
    """The current setting: "fast" or "twins"."""
    return _setting


def set_kernels(name):
    """Run every op of the package on ``name``: "fast" (the Numba kernels and the tiled
    convolution) or "twins" (their NumPy twins and the textbook convolution). CUDA arrays run the
    CUDA kernels either way. Returns the previous setting."""
    global _setting
    previous, _setting = _setting, _checked(name, "set_kernels: the kernels")
    return previous


@contextmanager
def use_kernels(name):
    """``with tm.use_kernels("twins"): loss = model(images, targets)``: the ops inside the block
    (and the backward of what the block recorded) run on ``name``; the setting before it returns
    after it."""
    previous = set_kernels(name)
    try:
        yield
    finally:
        set_kernels(previous)


def _function(path):
    module, _, function = path.rpartition(".")
    # looked up on every call, not kept: a test that replaces a kernel in its module is obeyed
    return getattr(importlib.import_module(f"{_PACKAGE}.{module}"), function)


def kernel_for(name, *arrays):
    """The function that computes the kernel ``name`` (a key of ``KERNELS``) on ``arrays``:
    the CUDA kernel for CUDA arrays, else the setting's (see the module docstring)."""
    implementations = KERNELS[name]
    if uses_cuda_kernels(*arrays):
        path = implementations.cuda
    elif _setting == "fast":
        path = implementations.fast
    else:
        path = implementations.twin
    return _function(path or implementations.twin)


def twin_of(name):
    """The NumPy twin of the kernel ``name``, whatever the setting: for arrays that a kernel
    cannot take (AdamW's Numba kernel wants C-contiguous arrays of one dtype)."""
    return _function(KERNELS[name].twin)
