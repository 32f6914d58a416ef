"""The table of the public ops: each op beside its torch or torchvision counterpart, the dtypes
it takes, and sample inputs that put it on its edges.

One ``Entry`` per op, as PyTorch's OpInfo (common_methods_invocations.py): the op, its
reference, the dtypes it accepts, its sample inputs and the inputs it refuses. The samples are
written once in float64 and cast to every dtype the entry accepts; besides ordinary random
inputs they hold the edges a user meets: empty inputs of each shape torch accepts, values
exactly on a kink, a bound or a tie, zero-area and inverted boxes, huge coordinates,
broadcasting, non-contiguous views and float16. ``tests/test_op_table.py`` runs every entry
through one set of checks (forward and gradient equal to torch's, finite differences, dtype and
shape, inputs left alone, one-line refusals), and fails when an exported op has no entry.

``docs/ops.md`` and the kink table of chapter 1 (notebooks/src/01_tape.py) are generated from
this table: ``python tests/op_table.py`` rewrites both, and a test fails when they differ from
what the table generates, so the text cannot drift from what is tested.
"""
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

import tinymaskrcnn as tm
import tinymaskrcnn.functional as F
from tinymaskrcnn.models.anchors import AnchorGenerator
from tinymaskrcnn.models.box_coder import BoxCoder
from tinymaskrcnn.models.matcher import Matcher
from tinymaskrcnn.models.roi_heads import fastrcnn_loss, mask_targets, maskrcnn_loss
from tinymaskrcnn.ops import (MultiScaleRoIAlign, batched_nms, box_area, box_iou, clip_boxes_to_image, nms,
                              paste_masks_in_image, remove_small_boxes, roi_align)

ROOT = Path(__file__).resolve().parents[1]
FULL, HALF = (np.float64, np.float32), (np.float64, np.float32, np.float16)


@dataclass
class Sample:
    """One call of an op: positional ``args`` (float64 arrays are cast to the dtype under test;
    integer arrays, numbers and tuples pass as they are; lists and dicts are walked) and
    ``kwargs`` (passed as they are)."""

    args: tuple
    kwargs: dict = field(default_factory=dict)
    edge: str = ""           # which edge this input puts the op on ("" for an ordinary input)
    note: str = ""           # the convention there, for the docs (the test holds it to torch's)
    kink: bool = False       # an input lies on a kink, bound or tie: no finite differences there
    smooth: bool = True      # False: values so large that central differences lose every digit
    grad: Optional[tuple] = None    # indices of args that get a gradient (default: every floating one)
    dtypes: Optional[tuple] = None  # only these dtypes (default: all the entry accepts)
    layout: str = ""         # "strided" or "transposed": floating inputs as non-contiguous views
    differs: str = ""        # where we part from torch on purpose: what torch does (docs)
    expect: Optional[Callable] = None  # with ``differs``: our answer, a list of arrays, from the args
    mutates: tuple = ()      # indices of args the op updates in place, as torch does (running stats)


@dataclass
class Refusal:
    """An input the op refuses: ``error`` with a one-line message holding every one of
    ``words`` (the argument's name and what it accepts). ``torch`` says what torch does with
    the same input: "refuses" or "accepts" (the test checks it), or, where torch would read
    outside its input, what happens there (not run)."""

    args: tuple
    kwargs: dict
    error: type
    words: tuple
    torch: str


@dataclass
class Entry:
    name: str                # how a user calls it
    torch_name: str          # its counterpart
    op: Callable             # ours, on the converted args
    ref: Callable            # ref(torch) -> torch's callable on torch's args
    samples: Callable        # samples(rng) -> [Sample]
    family: str
    dtypes: tuple = HALF     # the float dtypes ours accepts (the others get a one-line TypeError)
    torch_dtypes: tuple = HALF  # those torch accepts (checked on the first sample)
    differentiable: bool = True
    exact: bool = False      # outputs compared exactly (indices, labels, integer-valued anchors)
    notes: tuple = ()        # conventions that hold for every input (docs)
    refusals: Callable = lambda rng: []


def _tv(path):
    """torchvision.<path>, imported when a test asks for it."""
    import importlib

    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(f"torchvision.{module}"), name)


def _random_boxes(rng, n, size=100.0, min_side=1.0, max_side=40.0):
    xy = rng.uniform(0, size, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(min_side, max_side, (n, 2))], axis=1)


def _degenerate_boxes():
    """A zero-area box, a line, an inverted box and a huge one, with ordinary ones around."""
    return np.array([[10.0, 10.0, 30.0, 40.0], [5.0, 5.0, 5.0, 5.0], [0.0, 2.0, 0.0, 9.0],
                     [30.0, 40.0, 10.0, 10.0], [1e6, 2e6, 3e6, 5e6], [12.0, 15.0, 25.0, 35.0]])


def _clustered(rng, n, tie_levels=None):
    """n boxes around a few centres (so many overlap), some exact duplicates, and scores."""
    centres = rng.uniform(20, 200, (max(n // 15, 1), 2))
    c = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 6, (n, 2))
    half = rng.uniform(4, 25, (n, 2))
    boxes = np.concatenate([c - half, c + half], axis=1)
    boxes[rng.integers(0, n, n // 20)] = boxes[rng.integers(0, n, n // 20)]
    scores = rng.integers(0, tie_levels, n).astype(float) if tie_levels else rng.random(n)
    return boxes, scores


# ----- the activations and the tape's kinks ---------------------------------------------------------


def _elementwise_samples(rng, special, edge, note, kink=True, extremes=True):
    out = [
        Sample((rng.standard_normal((2, 3, 4)),)),
        Sample((np.array(special),), edge=edge, note=note, kink=kink),
        Sample((np.zeros(0),), edge="empty (0,)"),
        Sample((np.zeros((2, 0, 3)),), edge="empty (2, 0, 3)"),
        Sample((rng.standard_normal((3, 5)),), edge="strided view", layout="strided"),
        Sample((rng.standard_normal((4, 3)),), edge="transposed view", layout="transposed"),
    ]
    if extremes:
        out.append(Sample((np.array([-1000.0, -100.0, -20.0, 20.0, 100.0, 1000.0]),), edge="huge magnitudes",
                          dtypes=FULL, smooth=False))
    return out


def _softmax_samples(rng):
    inf = np.inf
    return [
        Sample((rng.standard_normal((3, 4)), 1)),
        Sample((rng.standard_normal((3, 4)), 0), edge="dim 0"),
        Sample((rng.standard_normal((2, 3, 4, 5)), -3), edge="inner dim of 4-D, negative dim"),
        Sample((np.array([[1.0, 1.0, 1.0], [2.0, 5.0, 5.0]]), 1), edge="tied logits"),
        Sample((np.array([[-1000.0, 0.0, 1000.0], [-20.0, 0.0, 20.0]]), 1), edge="huge logits", dtypes=FULL,
               smooth=False),
        Sample((np.array([[-inf, 0.0, 1.0], [-inf, -inf, -inf]]), 1), edge="-inf logits, a row of -inf",
               note="-inf gives probability 0; a row of -inf gives NaN", smooth=False),
        Sample((np.zeros((0, 3)), 1), edge="empty (0, 3)"),
        Sample((np.zeros((3, 0)), 1), edge="empty along dim (3, 0)"),
        Sample((rng.standard_normal((4, 3)), 1), edge="transposed view", layout="transposed"),
    ]


def _clamp_samples(rng):
    inf, nan = np.inf, np.nan
    on_bounds = np.array([-2.0, -0.5, 0.0, 0.7, 1.5, nan, inf, -inf])
    return [
        Sample((rng.standard_normal((3, 4)),), dict(min=-0.5, max=0.7)),
        Sample((on_bounds,), dict(min=-0.5, max=0.7), edge="on both bounds, NaN, ±inf",
               note="gradient 0 on a bound (torch 2.x for number bounds); NaN gives NaN, gradient 0", kink=True),
        Sample((on_bounds,), dict(min=-0.5), edge="min only, on the bound", kink=True),
        Sample((on_bounds,), dict(max=0.7), edge="max only, on the bound", kink=True),
        Sample((on_bounds,), dict(min=0.7, max=-0.5), edge="min > max", note="every value becomes max, gradient 0",
               kink=True),
        Sample((np.zeros((0, 2)),), dict(min=0.0, max=1.0), edge="empty (0, 2)"),
        Sample((rng.standard_normal((4, 3)),), dict(min=-0.2, max=0.2), edge="transposed view", layout="transposed"),
    ]


def _clamp_refusals(rng):
    x = rng.standard_normal(3)
    return [Refusal((x,), dict(min=np.zeros(3)), TypeError, ("min", "number"), "accepts")]


# ----- losses ---------------------------------------------------------------------------------------


def _cross_entropy_samples(rng):
    w = rng.uniform(0.2, 2.0, 4)
    return [
        Sample((3 * rng.standard_normal((6, 4)), np.array([0, 3, -100, 2, 1, 1]))),
        Sample((3 * rng.standard_normal((6, 4)), np.array([0, 3, 3, 2, 1, 1])),
               dict(weight=w, reduction="sum", label_smoothing=0.1), edge="class weights, smoothing, sum"),
        Sample((3 * rng.standard_normal((5, 4)), np.array([2, 0, 2, 1, 3])), dict(ignore_index=2, reduction="none"),
               edge="a real class as ignore_index, no reduction"),
        Sample((np.zeros((3, 4)), np.array([0, 1, 3])), edge="tied logits"),
        Sample((np.array([[-1000.0, 0.0, 1000.0]]), np.array([0])), edge="huge logits", dtypes=FULL, smooth=False),
        Sample((rng.standard_normal((2, 3)), np.array([-100, -100])), edge="every target ignored",
               note="mean over no sample is NaN, gradient 0"),
        Sample((np.zeros((0, 3)), np.zeros(0, np.int64)), edge="empty batch, mean", note="NaN"),
        Sample((np.zeros((0, 3)), np.zeros(0, np.int64)), dict(reduction="sum"), edge="empty batch, sum", note="0"),
        Sample((rng.standard_normal((3, 5)), np.array([4, 0, 2])), edge="transposed view", layout="transposed"),
    ]


def _cross_entropy_refusals(rng):
    x = rng.standard_normal((2, 3))
    return [
        Refusal((rng.standard_normal((2, 3, 4)), np.zeros((2, 4), np.int64)), {}, ValueError,
                ("input", "(N, C)"), "accepts"),
        Refusal((x, rng.uniform(0, 1, (2, 3))), {}, TypeError, ("target", "integer"), "accepts"),
        Refusal((x, np.array([0, 3])), {}, ValueError, ("target value 3", "0..2"), "refuses"),
    ]


def _bce_samples(rng):
    shape = (3, 4)
    return [
        Sample((4 * rng.standard_normal(shape), rng.uniform(0, 1, shape))),
        Sample((4 * rng.standard_normal(shape), rng.uniform(0, 1, shape)),
               dict(weight=rng.uniform(0.2, 2, (3, 1)), pos_weight=rng.uniform(0.2, 2, 4), reduction="sum"),
               edge="broadcast weight and pos_weight", grad=(0, 1)),
        Sample((np.array([-800.0, -50.0, -20.0, 0.0, 20.0, 50.0, 800.0]),
                np.array([1.0, 1.0, 0.0, 0.5, 1.0, 0.0, 0.0])), dict(reduction="none"), edge="huge logits",
               dtypes=FULL, smooth=False),
        Sample((rng.standard_normal(5), np.array([0.0, 1.0, 0.0, 1.0, 0.5])), edge="targets exactly 0 and 1"),
        Sample((np.zeros((0, 4)), np.zeros((0, 4))), edge="empty, mean", note="NaN"),
        Sample((np.zeros((0, 4)), np.zeros((0, 4))), dict(reduction="sum"), edge="empty, sum"),
        Sample((rng.standard_normal((4, 3)), rng.uniform(0, 1, (4, 3))), edge="transposed views",
               layout="transposed"),
    ]


def _bce_refusals(rng):
    x = rng.standard_normal((2, 3))
    return [Refusal((x, rng.uniform(0, 1, 3)), {}, ValueError, ("target shape (3,)", "input shape (2, 3)"),
                    "refuses")]


def _smooth_l1_samples(rng):
    on_kinks, t = np.array([0.5, -0.5, 0.0, 0.25, 2.0, -3.0]), np.zeros(6)  # x - t = x
    return [
        Sample((rng.standard_normal((5, 4)), rng.standard_normal((5, 4)))),
        Sample((rng.standard_normal(7), rng.standard_normal(7)), dict(beta=1 / 9, reduction="sum"),
               edge="beta 1/9 (the heads'), sum"),
        Sample((on_kinks, t), dict(beta=0.5, reduction="none"), edge="x - t = ±beta and 0 (t = 0, beta 0.5)",
               note="slope clip((x - t)/beta, -1, 1): ±1 at |x - t| = beta, 0 at x = t", kink=True),
        Sample((on_kinks, t), dict(beta=0.0, reduction="none"), edge="beta 0 (L1) at x - t = 0 (t = 0)",
               note="slope sign(x - t), 0 at x = t", kink=True),
        Sample((np.zeros(0), np.zeros(0)), edge="empty, mean", note="NaN"),
        Sample((np.zeros((0, 4)), np.zeros((0, 4))), dict(reduction="sum"), edge="empty, sum"),
        Sample((rng.standard_normal((4, 3)), rng.standard_normal((4, 3))), edge="strided views", layout="strided"),
    ]


def _smooth_l1_refusals(rng):
    return [Refusal((rng.standard_normal((2, 3)), rng.standard_normal(3)), {}, ValueError,
                    ("target shape (3,)", "input shape (2, 3)"), "accepts")]


# ----- norms, linear, conv, pooling, resizing ----------------------------------------------------------


def _batch_norm_samples(rng):
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    constant = np.ones((2, 3, 2, 2)) * np.array([1.0, 2.0, -1.0])[:, None, None]
    return [
        Sample((2 + 3 * rng.standard_normal((2, 3, 4, 5)), None, None, w, b), dict(training=True)),
        Sample((rng.standard_normal((2, 3, 4)), rm, rv, w, b), dict(eps=1e-3), edge="eval, running statistics",
               grad=(0, 3, 4)),
        Sample((rng.standard_normal((4, 3)), rm, rv), dict(training=True, momentum=0.3),
               edge="training updates running statistics in place (unbiased variance)", grad=(0,), mutates=(1, 2)),
        Sample((constant, None, None, w, b), dict(training=True, eps=1e-3), edge="a constant channel (variance 0)",
               note="x̂ = 0: the output is the bias"),
        Sample((np.zeros((0, 3, 4)), rm, rv, w, b), edge="empty batch, eval", grad=(0, 3, 4)),
        Sample((np.zeros((0, 3, 4)), rm, rv, w, b), dict(training=True), edge="empty batch, training",
               note="empty output, running statistics untouched", grad=(0, 3, 4), mutates=(1, 2)),
        Sample((rng.standard_normal((2, 0, 4)), np.zeros(0), np.ones(0)), edge="no channels", grad=(0,)),
        Sample((rng.standard_normal((3, 3, 2, 2)), None, None, w, b), dict(training=True), edge="strided view",
               layout="strided"),
    ]


def _batch_norm_refusals(rng):
    return [
        Refusal((rng.standard_normal((1, 3)), None, None), dict(training=True), ValueError,
                ("more than 1 value per channel",), "refuses"),
        Refusal((rng.standard_normal((2, 3, 4)), None, None), {}, ValueError, ("running_mean", "running_var"),
                "refuses"),
    ]


def _instance_norm_samples(rng):
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    return [
        Sample((2 + 3 * rng.standard_normal((2, 3, 4, 5)), w, b), dict(eps=1e-3)),
        Sample((rng.standard_normal((2, 3, 5)),), edge="3-D input, no affine"),
        Sample((np.ones((2, 3, 2, 2)), w, b), dict(eps=1e-3), edge="a constant plane (variance 0)",
               note="x̂ = 0: the output is the bias"),
        Sample((np.zeros((0, 3, 4, 4)),), edge="empty batch"),
        Sample((np.zeros((0, 3, 4, 4)), w, b), edge="empty batch with weight and bias",
               differs="an IndexError inside torch.instance_norm, which repeats the weight N times",
               expect=lambda x, w, b: [np.zeros(x.shape, x.dtype)]),
        Sample((np.zeros((2, 0, 4, 4)),), edge="no channels"),
        Sample((rng.standard_normal((2, 3, 3, 4)), w, b), edge="transposed view", layout="transposed"),
    ]


def _frozen_batch_norm_samples(rng):
    w, b, rm, rv = rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    return [
        Sample((rng.standard_normal((2, 3, 5, 7)), w, b, rm, rv), grad=(0,)),
        Sample((rng.standard_normal((1, 3, 1, 1)), w, b, rm, rv), edge="1 × 1 map", grad=(0,)),
        Sample((np.zeros((0, 3, 4, 4)), w, b, rm, rv), edge="empty batch", grad=(0,)),
        Sample((rng.standard_normal((2, 3, 4, 5)), w, b, rm, rv), edge="strided view", grad=(0,), layout="strided"),
    ]


def _frozen_batch_norm_ref(torch):
    def run(x, w, b, rm, rv):
        module = _tv("ops.misc.FrozenBatchNorm2d")(x.shape[1]).to(x.dtype)
        for name, v in (("weight", w), ("bias", b), ("running_mean", rm), ("running_var", rv)):
            getattr(module, name).copy_(v)
        return module(x)

    return run


def _linear_samples(rng):
    return [
        Sample((rng.standard_normal((3, 5)), rng.standard_normal((7, 5)), rng.standard_normal(7))),
        Sample((rng.standard_normal(5), rng.standard_normal((7, 5))), edge="1-D input, no bias"),
        Sample((rng.standard_normal((2, 1, 3, 5)), rng.standard_normal((7, 5)), rng.standard_normal(7)),
               edge="leading axes"),
        Sample((np.zeros((0, 5)), rng.standard_normal((7, 5)), rng.standard_normal(7)), edge="no rows"),
        Sample((np.zeros((3, 0)), np.zeros((7, 0)), rng.standard_normal(7)), edge="in_features 0",
               note="the output is the bias"),
        Sample((rng.standard_normal((3, 5)), np.zeros((0, 5)), np.zeros(0)), edge="out_features 0"),
        Sample((rng.standard_normal((3, 5)), rng.standard_normal((7, 5))), edge="transposed views",
               layout="transposed"),
    ]


def _linear_refusals(rng):
    return [Refusal((rng.standard_normal((2, 5)), rng.standard_normal((4, 3))), {}, ValueError,
                    ("in_features=3",), "refuses")]


def _conv2d_samples(rng):
    w, b = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    return [
        Sample((rng.standard_normal((2, 3, 5, 6)), w, b), dict(padding=1)),
        Sample((rng.standard_normal((1, 4, 9, 8)), rng.standard_normal((6, 2, 3, 2)), None),
               dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2), edge="groups, per-axis arguments"),
        Sample((rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((5, 3, 1, 1)), rng.standard_normal(5)),
               edge="1 × 1"),
        Sample((np.zeros((0, 3, 5, 6)), w, b), dict(padding=1), edge="empty batch",
               note="empty output, zero weight and bias gradients"),
        Sample((rng.standard_normal((2, 3, 5, 6)), w, b), dict(stride=2), edge="transposed views",
               layout="transposed"),
    ]


def _conv2d_refusals(rng):
    x = rng.standard_normal((2, 3, 5, 5))
    return [
        Refusal((x, rng.standard_normal((0, 3, 3, 3))), {}, ValueError, ("weight", "output channel"), "refuses"),
        Refusal((np.zeros((2, 0, 5, 5)), np.zeros((4, 0, 3, 3))), {}, ValueError, ("input", "channel"), "accepts"),
        Refusal((x[0], rng.standard_normal((4, 3, 3, 3))), {}, ValueError, ("input", "4-D"), "accepts"),
        Refusal((np.zeros((2, 3, 0, 5)), rng.standard_normal((4, 3, 1, 1))), {}, ValueError,
                ("input of shape (2, 3, 0, 5)",), "refuses"),
    ]


def _conv_transpose2d_samples(rng):
    w, b = rng.standard_normal((4, 3, 2, 2)), rng.standard_normal(3)
    return [
        Sample((rng.standard_normal((2, 4, 3, 4)), w, b), dict(stride=2)),
        Sample((rng.standard_normal((1, 4, 4, 3)), rng.standard_normal((4, 3, 3, 2)), None),
               dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0), groups=2, dilation=(1, 2)),
               edge="groups, output_padding, per-axis arguments"),
        Sample((np.zeros((0, 4, 3, 4)), w, b), dict(stride=2), edge="empty batch"),
        Sample((rng.standard_normal((2, 4, 3, 4)), w, b), dict(stride=2), edge="transposed views",
               layout="transposed"),
    ]


def _conv_transpose2d_refusals(rng):
    return [Refusal((rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((3, 0, 2, 2))), {}, ValueError,
                    ("weight", "output channel"), "refuses")]


def _max_pool_samples(rng):
    nan, inf = np.nan, np.inf
    special = rng.standard_normal((1, 2, 6, 7))
    special[0, 0, 1, 1] = special[0, 0, 1, 3] = special[0, 0, 4, 2] = nan
    special[0, 1, :3, :3] = -inf
    return [
        Sample((rng.standard_normal((2, 3, 7, 9)), 3, 2, 1)),
        Sample((np.array([[[[1.0, 3.0, 3.0, 0.0], [3.0, 2.0, 3.0, 3.0]]]]), 2), edge="ties in a 2 × 4 map, kernel 2",
               note="the first of equal maxima (row by row) takes the gradient", kink=True),
        Sample((rng.integers(0, 3, (2, 2, 7, 8)).astype(float), 3, 2, 1, 1, True),
               edge="ties in overlapping windows, ceil_mode", kink=True),
        Sample((special, 3, 2, 1), edge="NaN and -inf windows",
               note="the last NaN of a window wins; a window of -inf sends its gradient to its first in-image position",
               kink=True),
        Sample((rng.standard_normal((1, 2, 7, 8)), (3, 2), (2, 1), (1, 0), (1, 2), True),
               edge="per-axis kernel, stride, padding, dilation"),
        Sample((np.zeros((0, 3, 4, 4)), 2), edge="empty batch"),
        Sample((rng.standard_normal((2, 3, 6, 5)), 2), edge="transposed view", layout="transposed"),
    ]


def _max_pool_refusals(rng):
    return [
        Refusal((np.zeros((2, 0, 4, 4)), 2), {}, ValueError, ("input", "channel"), "refuses"),
        Refusal((rng.standard_normal((1, 1, 4, 4)), 5), {}, ValueError, ("too small", "kernel_size"), "refuses"),
    ]


def _interpolate_samples(rng):
    x = rng.standard_normal((2, 3, 5, 6))
    return [
        Sample((x,), dict(size=(7, 9), mode="bilinear", align_corners=False)),
        Sample((x,), dict(size=(10, 12)), edge="nearest, doubled (the FPN's top-down path)"),
        Sample((x,), dict(scale_factor=1.7, mode="bilinear", align_corners=True), edge="align_corners, a scale"),
        Sample((x,), dict(scale_factor=0.37, recompute_scale_factor=True), edge="nearest, downscaled, recomputed"),
        Sample((x,), dict(size=(1, 1), mode="bilinear", align_corners=True), edge="to one pixel"),
        Sample((x,), dict(size=(5, 6), mode="bilinear"), edge="same size (a copy)"),
        Sample((np.zeros((0, 3, 5, 6)),), dict(size=(7, 9), mode="bilinear"), edge="empty batch"),
        Sample((x,), dict(size=(4, 8), mode="bilinear"), edge="transposed view", layout="transposed"),
    ]


def _interpolate_refusals(rng):
    return [Refusal((np.zeros((2, 0, 4, 4)),), dict(size=(5, 5)), ValueError, ("input", "channel"), "refuses")]


# ----- cat and stack ------------------------------------------------------------------------------------


def _cat_samples(rng):
    n = rng.standard_normal
    return [
        Sample(([n((2, 3)), n((4, 3)), n((1, 3))],)),
        Sample(([n((2, 3)), n((2, 1))],), dict(dim=-1), edge="negative dim"),
        Sample(([n((2, 3)), np.zeros((0, 3)), n((1, 3))],), edge="an empty member"),
        Sample(([np.zeros((0, 3)), np.zeros((0, 3))],), edge="all empty"),
        Sample(([n((2, 3))],), edge="one tensor"),
        Sample(([n((3, 2)), n((3, 4))],), dict(dim=1), edge="transposed views", layout="transposed"),
    ]


def _cat_refusals(rng):
    return [
        Refusal(([],), {}, ValueError, ("tensors", "at least one"), "refuses"),
        Refusal(([np.zeros(0), rng.standard_normal((2, 3))],), {}, ValueError, ("tensors[0]", "axes"), "accepts"),
        Refusal(([rng.standard_normal((2, 3)), rng.standard_normal((2, 4))],), {}, ValueError,
                ("tensors[1]", "shape"), "refuses"),
    ]


def _stack_samples(rng):
    n = rng.standard_normal
    return [
        Sample(([n((2, 3)), n((2, 3)), n((2, 3))],)),
        Sample(([n((2, 3)), n((2, 3))],), dict(dim=2), edge="new last axis"),
        Sample(([n((2, 3)), n((2, 3))],), dict(dim=-1), edge="negative dim"),
        Sample(([np.zeros((0, 3)), np.zeros((0, 3))],), edge="empty members"),
        Sample(([n((3, 2)), n((3, 2))],), dict(dim=1), edge="strided views", layout="strided"),
    ]


def _stack_refusals(rng):
    return [
        Refusal(([],), {}, ValueError, ("tensors", "at least one"), "refuses"),
        Refusal(([rng.standard_normal((2, 3)), rng.standard_normal((3, 2))],), {}, ValueError,
                ("tensors[1]", "shape"), "refuses"),
    ]


# ----- boxes --------------------------------------------------------------------------------------------


def _box_area_samples(rng):
    return [
        Sample((_random_boxes(rng, 7),)),
        Sample((_degenerate_boxes(),), edge="zero-area, inverted and huge boxes", dtypes=FULL,
               note="an inverted box has a negative area, as torchvision"),
        Sample((np.array([[0.0, 0.0, 800.0, 800.0], [10.0, 20.0, 30.0, 25.0]]),), edge="800-pixel sides",
               note="float16 boxes are widened to float32 first: 640000, not inf"),
        Sample((np.zeros((0, 4)),), edge="empty (0, 4)"),
        Sample((_random_boxes(rng, 5),), edge="strided view", layout="strided"),
        Sample((_random_boxes(rng, 5),), edge="transposed view", layout="transposed"),
    ]


def _integer_boxes_refusal(*rest):
    return Refusal((np.array([[0, 0, 10, 10]]),) + rest, {}, TypeError, ("boxes", "floating"), "accepts")


def _box_iou_samples(rng):
    a, b = _random_boxes(rng, 7), _random_boxes(rng, 9)
    b[0], b[1], b[2] = a[0], a[1] + [2, 2, -2, -2], a[2] + 500  # identical, contained, disjoint
    return [
        Sample((a, b)),
        Sample((_degenerate_boxes(), _degenerate_boxes()[::-1].copy()), edge="zero-area, inverted and huge boxes",
               note="two empty boxes give 0/0 = NaN, as torchvision", dtypes=FULL),
        Sample((np.array([[0.0, 0.0, 800.0, 800.0]]), np.array([[0.0, 0.0, 800.0, 400.0], [1.0, 1.0, 2.0, 2.0]])),
               edge="800-pixel sides", note="float16 boxes are widened to float32 first: no overflow, no NaN"),
        Sample((np.zeros((0, 4)), b), edge="empty (0, 4) and (9, 4)"),
        Sample((a, np.zeros((0, 4))), edge="(7, 4) and empty (0, 4)"),
        Sample((np.zeros((0, 4)), np.zeros((0, 4))), edge="both empty"),
        Sample((a, b), edge="transposed views", layout="transposed"),
    ]


def _box_iou_refusals(rng):
    return [
        Refusal((np.zeros((3, 5)), np.zeros((1, 4))), {}, ValueError, ("boxes1", "(N, 4)"), "refuses"),
        Refusal((np.array([[0, 0, 10, 10]]), np.array([[0, 0, 5, 5]])), {}, TypeError, ("boxes1", "floating"),
                "accepts"),
    ]


def _clip_samples(rng):
    return [
        Sample((rng.uniform(-30, 130, (11, 4)), (60, 90))),
        Sample((rng.uniform(-30, 130, (5, 3, 4)), (60, 90)), edge="(N, K, 4): the box head's per-class boxes"),
        Sample((rng.uniform(-30, 130, 4), (60, 90)), edge="one box (4,)"),
        Sample((np.array([[0.0, 0.0, 90.0, 60.0], [-0.0, 60.0, 90.0, 0.0], [np.nan, 5.0, 1e9, -1e9]]), (60, 90)),
               edge="on the bounds, NaN and huge", dtypes=FULL, note="NaN stays NaN"),
        Sample((np.zeros((0, 4)), (60, 90)), edge="empty (0, 4)"),
        Sample((np.zeros((0, 3, 4)), (60, 90)), edge="empty (0, 3, 4)"),
        Sample((rng.uniform(-30, 130, (6, 4)), (60, 90)), edge="strided view", layout="strided"),
    ]


def _clip_refusals(rng):
    return [Refusal((np.zeros((2, 5)), (10, 10)), {}, ValueError, ("boxes", "(..., 4)"), "refuses")]


def _remove_small_samples(rng):
    return [
        Sample((_random_boxes(rng, 40, min_side=0.0, max_side=4.0), 2.0)),
        Sample((np.array([[10.0, 20.0, 12.0, 23.0], [0.0, 0.0, 1.99, 5.0], [5.0, 5.0, 5.0, 5.0],
                          [9.0, 9.0, 3.0, 3.0]]), 2.0), edge="exactly min_size, zero-area, inverted",
               note="a side of exactly min_size is kept (>=); an inverted box is removed"),
        Sample((np.zeros((0, 4)), 1e-3), edge="empty (0, 4)"),
        Sample((_random_boxes(rng, 8, min_side=0.0, max_side=4.0), 2.0), edge="strided view", layout="strided"),
    ]


def _remove_small_refusals(rng):
    return [Refusal((np.zeros((3, 5)), 1.0), {}, ValueError, ("boxes", "(N, 4)"), "accepts")]


def _nms_samples(rng):
    boxes, scores = _clustered(rng, 120)
    tied_boxes, tied_scores = _clustered(rng, 120, tie_levels=3)
    same = np.tile([[0.0, 0.0, 10.0, 10.0]], (5, 1))
    return [
        Sample((boxes, scores, 0.5)),
        Sample((tied_boxes, tied_scores, 0.3), edge="tied scores", note="among equal scores the lower index goes first",
               kink=True),
        Sample((same, np.array([1.0, 2.0, 2.0, 2.0, 1.0]), 0.5), edge="identical boxes, tied scores", kink=True),
        Sample((np.array([[0, 0, 10, 10], [0, 0, 10, 3], [5, 5, 5, 5], [5, 5, 5, 5]], float),
                np.array([2.0, 1.0, 0.5, 0.4]), 0.3), edge="IoU exactly at the threshold, empty boxes",
               note="suppressed when IoU > threshold, compared in double; empty boxes (0/0) suppress nothing",
               kink=True),
        Sample((boxes, scores, 0.0), edge="threshold 0"),
        Sample((boxes, scores, 1.0), edge="threshold 1"),
        Sample((boxes * 1e4, scores, 0.5), edge="huge coordinates", dtypes=FULL),
        Sample((np.zeros((0, 4)), np.zeros(0), 0.5), edge="empty (0, 4)"),
        Sample((boxes[:30], scores[:30], 0.5), edge="strided views", layout="strided"),
    ]


def _nms_refusals(rng):
    return [
        Refusal((np.zeros(0), np.zeros(0), 0.5), {}, ValueError, ("boxes", "(N, 4)"), "refuses"),
        Refusal((np.zeros((3, 4)), np.array([0.1, np.nan, 0.2]), 0.5), {}, ValueError, ("scores", "NaN"), "accepts"),
    ]


def _batched_nms_samples(rng):
    boxes, scores = _clustered(rng, 150)
    big, big_scores = _clustered(rng, 1100)
    tied, tied_scores = _clustered(rng, 150, tie_levels=3)
    none = np.zeros(0, np.int64)
    return [
        Sample((boxes, scores, rng.integers(0, 4, 150), 0.5)),
        Sample((tied, tied_scores, rng.integers(0, 4, 150), 0.3), edge="tied scores", kink=True),
        Sample((big, big_scores, rng.integers(0, 5, 1100), 0.5), edge="over 4000 coordinates: one NMS per category",
               dtypes=(np.float32,), note="the same path as torchvision at the same size (they round differently)"),
        Sample((np.tile([[0.0, 0.0, 10.0, 10.0]], (4, 1)), np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 1, 0, 1]),
                0.5), edge="identical boxes in two categories", note="categories never suppress each other"),
        Sample((np.zeros((0, 4)), np.zeros(0), none, 0.5), edge="empty (0, 4)"),
        Sample((np.zeros(0), np.zeros(0), none, 0.5), edge="empty (0,)", note="any empty input gives no index"),
        Sample((np.zeros((0, 5)), np.zeros(0), none, 0.5), edge="empty (0, 5)"),
        Sample((boxes[:40], scores[:40], rng.integers(0, 3, 40), 0.5), edge="transposed views", layout="transposed"),
    ]


def _batched_nms_refusals(rng):
    boxes, scores = np.zeros((3, 4)), np.zeros(3)
    return [
        Refusal((boxes, scores, np.zeros(3), 0.5), {}, TypeError, ("idxs", "integer"), "accepts"),
        Refusal((boxes, scores, np.zeros(2, np.int64), 0.5), {}, ValueError, ("idxs", "(3,)"), "refuses"),
    ]


# ----- RoIAlign, the pooler, pasting ------------------------------------------------------------------


def _rois(rng, n_images, h, w, k):
    x1, y1 = rng.uniform(-2, w, k), rng.uniform(-2, h, k)
    boxes = np.stack([x1, y1, x1 + rng.uniform(0.2, w, k), y1 + rng.uniform(0.2, h, k)], axis=1)
    return np.concatenate([rng.integers(0, n_images, (k, 1)), boxes], axis=1)


def _roi_align_samples(rng):
    x = rng.standard_normal((2, 3, 7, 8))
    odd = np.array([[0, -5.0, -5.0, -2.0, -1.0], [1, 3.0, 3.0, 3.0, 3.0], [0, 6.0, 5.0, 2.0, 1.0],
                    [1, 0.0, 0.0, 8.0, 7.0], [0, 6.5, 5.5, 9.0, 8.0]])
    return [
        Sample((x, _rois(rng, 2, 7, 8, 6)), dict(output_size=(2, 3), spatial_scale=1.0, sampling_ratio=2), grad=(0,)),
        Sample((x, _rois(rng, 2, 14, 16, 6)), dict(output_size=3, spatial_scale=0.5, sampling_ratio=-1, aligned=True),
               edge="aligned, adaptive sampling", grad=(0,)),
        Sample((x, odd), dict(output_size=2, sampling_ratio=2), edge="outside, a point, inverted, the whole map",
               grad=(0,)),
        Sample((x, [_rois(rng, 1, 7, 8, 3)[:, 1:], np.zeros((0, 4))]), dict(output_size=2),
               edge="a list of boxes per image, one image without any", grad=(0,)),
        Sample((x, np.zeros((0, 5))), dict(output_size=2), edge="no RoI", grad=(0,),
               note="an empty output, a zero gradient"),
        Sample((np.zeros((1, 2, 0, 5)), np.zeros((0, 5))), dict(output_size=2), edge="empty map, no RoI",
               grad=(0,)),
        Sample((x, _rois(rng, 2, 7, 8, 4)), dict(output_size=2, sampling_ratio=2), edge="transposed view",
               layout="transposed", grad=(0,)),
    ]


def _roi_align_refusals(rng):
    x = rng.standard_normal((1, 2, 5, 5))
    return [
        Refusal((x, np.array([[1.0, 0, 0, 2, 2]]), 2), {}, ValueError, ("batch indices", "[0, 1)"),
                "reads outside the input (a crash, or garbage)"),
        Refusal((np.zeros((1, 2, 0, 5)), np.array([[0.0, 0, 0, 2, 2]]), 2), {}, ValueError, ("input", "empty"),
                "reads outside the input"),
        Refusal((x, np.array([[0.0, 0, 0, np.nan, 2]]), 2), {}, ValueError, ("boxes", "NaN"),
                "turns NaN into an index: reads outside the input"),
    ]


def _pooler_samples(rng):
    names = ["0", "1", "2", "3"]
    features = {k: rng.standard_normal((2, 3, 32 >> i, 40 >> i)) for i, k in enumerate(names)}
    small = _random_boxes(rng, 4, size=100, min_side=4, max_side=30)
    large = _random_boxes(rng, 3, size=60, min_side=60, max_side=150)
    boxes = [np.concatenate([small, large]), _random_boxes(rng, 5, size=120, max_side=100)]
    settings = dict(featmap_names=names, output_size=3, sampling_ratio=2)
    return [
        Sample((features, boxes, [(128, 160), (120, 150)]), settings, grad=(0,)),
        Sample(({"0": features["0"]}, boxes, [(128, 160), (128, 160)]),
               dict(featmap_names=["0"], output_size=(2, 3), sampling_ratio=-1), edge="one level", grad=(0,)),
        Sample((features, [boxes[0], np.zeros((0, 4))], [(128, 160), (120, 150)]), settings,
               edge="an image without boxes", grad=(0,)),
        Sample((features, [np.zeros((0, 4)), np.zeros((0, 4))], [(128, 160), (120, 150)]), settings,
               edge="no boxes at all", grad=(0,)),
        Sample(({"a": rng.standard_normal((1, 2, 8, 8)), "b": rng.standard_normal((1, 2, 4, 4))},
                [_random_boxes(rng, 6, size=24, min_side=3, max_side=20)], [(32, 32)]),
               dict(featmap_names=["a", "b"], output_size=2, sampling_ratio=2, canonical_scale=16),
               edge="two small levels, canonical_scale 16", grad=(0,)),
    ]


def _pooler_refusals(rng):
    features = {"0": rng.standard_normal((1, 2, 8, 8))}
    return [Refusal((features, [], []), dict(featmap_names=["0"], output_size=2, sampling_ratio=2), ValueError,
                    ("image_sizes", "empty"), "refuses")]


def _paste_samples(rng):
    boxes = np.concatenate([_random_boxes(rng, 6, size=40, max_side=30) - 5,
                            [[3, 4, 3.9, 4.9], [2.5, 2.5, 2.5, 2.5], [-2, -3, 57, 38]]])
    return [
        Sample((rng.random((len(boxes), 1, 28, 28)), boxes, (37, 53))),
        Sample((rng.random((len(boxes), 1, 7, 7)), boxes, (37, 53)), dict(padding=2),
               edge="a one-pixel, a zero-size and an oversized box"),
        Sample((np.zeros((0, 1, 28, 28)), np.zeros((0, 4)), (37, 53)), edge="no mask"),
        Sample((rng.random((3, 1, 5, 5)), boxes[:3], (37, 53)), edge="strided views", layout="strided"),
    ]


def _paste_refusals(rng):
    masks, boxes = rng.random((3, 1, 28, 28)), np.array([[-40.0, -40, -10, -5], [60, 0, 80, 10], [0, 40, 10, 49]])
    return [Refusal((masks[:, 0], boxes, (37, 53)), {}, ValueError, ("masks", "(N, 1, M, M)"), "refuses")]


def _paste_ref(torch):
    return lambda masks, boxes, img_shape, **kw: _tv("models.detection.roi_heads.paste_masks_in_image")(
        masks, boxes, img_shape, **kw)


# ----- the detector's parts ----------------------------------------------------------------------------


def _encode_samples(rng):
    gt, proposals = _random_boxes(rng, 9), _random_boxes(rng, 9)
    return [
        Sample((gt, proposals, (10.0, 10.0, 5.0, 5.0))),
        Sample((gt, gt, (1.0, 1.0, 1.0, 1.0)), edge="a box on itself", note="all deltas 0"),
        Sample((gt[:3], np.array([[5.0, 5.0, 5.0, 9.0], [1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1e5, 1e5]]),
                (1.0, 1.0, 1.0, 1.0)), edge="a zero-width and a huge proposal", dtypes=FULL,
               note="division by a zero width gives inf/NaN, as torchvision"),
        Sample((np.zeros((0, 4)), np.zeros((0, 4)), (1.0, 1.0, 1.0, 1.0)), edge="no pair"),
        Sample((gt, proposals, (10.0, 10.0, 5.0, 5.0)), edge="strided views", layout="strided"),
    ]


def _encode_refusals(rng):
    return [Refusal((np.ones((3, 4)), np.ones((2, 4)), (1.0, 1.0, 1.0, 1.0)), {}, ValueError,
                    ("reference_boxes", "one row per pair"), "refuses")]


def _decode_samples(rng):
    boxes = _random_boxes(rng, 8)
    deltas = rng.standard_normal((8, 12))
    clip = math.log(1000.0 / 16)
    on_clip = np.array([[0.0, 0.0, clip, clip], [0.0, 0.0, 50.0, -50.0], [0.5, -0.5, 1e4, clip - 1e-3]])
    return [
        Sample((deltas, boxes, (10.0, 10.0, 5.0, 5.0))),
        Sample((deltas[:, :4], boxes, (1.0, 1.0, 1.0, 1.0)), edge="one class (the RPN)"),
        Sample((on_clip, boxes[:3], (1.0, 1.0, 1.0, 1.0)), edge="dw, dh at and beyond the clamp log(1000/16)",
               note="clamped from above: the box grows at most 1000/16 times", dtypes=FULL),
        Sample((np.zeros((0, 8)), np.zeros((0, 4)), (1.0, 1.0, 1.0, 1.0)), edge="no box",
               differs="shape (0, 8): torchvision skips its reshape when there is no box",
               expect=lambda codes, boxes, weights: [np.zeros((0, codes.shape[1] // 4, 4), codes.dtype)]),
        Sample((deltas, boxes, (10.0, 10.0, 5.0, 5.0)), edge="transposed views", layout="transposed"),
    ]


def _decode_refusals(rng):
    return [Refusal((np.zeros((3, 6)), np.zeros((3, 4)), (1.0, 1.0, 1.0, 1.0)), {}, ValueError,
                    ("rel_codes", "(N, 4*K)"), "accepts")]


def _matcher_samples(rng):
    gt = _random_boxes(rng, 5, size=60.0, min_side=10.0)
    gt[3] = gt[1]  # two ground truths tie for every prediction
    anchors = _random_boxes(rng, 80, size=60.0, min_side=5.0)
    anchors[50], anchors[11] = anchors[10], gt[4]  # a duplicate best prediction, an IoU of 1
    iou = box_iou(gt, anchors)
    on_thresholds = np.array([[0.7, 0.3, 0.5, 0.1, 0.29999], [0.2, 0.2, 0.5, 0.7, 0.0]])
    nan_column = iou[:, :6].copy()
    nan_column[:, 2] = np.nan
    rpn = dict(high_threshold=0.7, low_threshold=0.3, allow_low_quality_matches=True)
    return [
        Sample((iou,), rpn, note="ties between ground truths go to the lower index", kink=True),
        Sample((iou,), dict(high_threshold=0.5, low_threshold=0.5), edge="the box head's thresholds"),
        Sample((on_thresholds,), dict(high_threshold=0.7, low_threshold=0.3), edge="IoU exactly on the thresholds",
               note="IoU = high is a match, IoU = low is between (ignored)", kink=True),
        Sample((on_thresholds,), rpn, edge="low-quality matches on tied bests",
               note="each ground truth claims every prediction of its highest IoU, ties included", kink=True),
        Sample((nan_column,), rpn, edge="a NaN column (a degenerate prediction)"),
        Sample((iou,), rpn, edge="transposed view", layout="transposed"),
    ]


def _matcher_refusals(rng):
    rpn = dict(high_threshold=0.7, low_threshold=0.3)
    return [
        Refusal((np.zeros((0, 5)),), rpn, ValueError, ("ground-truth",), "refuses"),
        Refusal((np.zeros((2, 0)),), rpn, ValueError, ("predicted boxes",), "refuses"),
    ]


def _anchor_samples(rng):
    default = dict(sizes=((32,), (64,), (128,), (256,), (512,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    grids = [(25, 38), (13, 19), (7, 10), (4, 5), (2, 3)]
    return [
        Sample((np.zeros((2, 1, 100, 150)), [np.zeros((2, 1) + g) for g in grids]), default),
        Sample((np.zeros((1, 1, 60, 70)), [np.zeros((1, 1, 7, 9)), np.zeros((1, 1, 4, 5))]),
               dict(sizes=((10, 45), (16, 24, 40)), aspect_ratios=((1.69, 1.96), (0.25, 1.0, 3.7))),
               edge="sizes and ratios on a rounding half", note="cell anchors rounded in float32, as torchvision"),
        Sample((np.zeros((1, 1, 64, 64)), [np.zeros((1, 1, 1, 1))]), dict(sizes=((32,),), aspect_ratios=((1.0,),)),
               edge="a 1 × 1 feature map"),
        Sample((np.zeros((1, 1, 2600, 64)), [np.zeros((1, 1, 650, 16))]),
               dict(sizes=((32,),), aspect_ratios=((1.0,),)), edge="coordinates past float16's integers (2048)"),
        Sample((np.zeros((0, 1, 64, 64)), [np.zeros((0, 1, 8, 8))]), dict(sizes=((32,),), aspect_ratios=((1.0,),)),
               edge="no image", note="no anchors (an empty list)"),
    ]


def _anchor_refusals(rng):
    return [Refusal((np.zeros((1, 1, 64, 64)), [np.zeros((1, 1, 0, 8))]), dict(sizes=((32,),), aspect_ratios=((1.0,),)),
                    ValueError, ("feature map 0", "non-empty"), "refuses")]


def _anchor_ref(torch):
    def run(images, features, **kw):
        image_list = _tv("models.detection.image_list.ImageList")(images, [tuple(images.shape[-2:])] * len(images))
        return _tv("models.detection.anchor_utils.AnchorGenerator")(**kw)(image_list, features)

    return run


def _fastrcnn_samples(rng):
    def case(labels, c=4):
        n = sum(len(l) for l in labels)
        return (rng.standard_normal((n, c)), rng.standard_normal((n, 4 * c)), [np.array(l, np.int64) for l in labels],
                [rng.standard_normal((len(l), 4)) for l in labels])

    return [
        Sample(case([[0, 2, 3, 0, 1], [1, 0, 0]]), grad=(0, 1)),
        Sample(case([[0, 0, 0], [0]]), edge="no positive RoI", grad=(0, 1), note="the box loss is 0"),
        Sample(case([[], []]), edge="no RoI at all", grad=(0, 1),
               differs="NaN for both losses, a mean and a sum / 0 over no RoI",
               note="both losses 0 with a zero gradient: a step whose sampler keeps no RoI stays finite",
               expect=lambda logits, *rest: [np.zeros((), logits.dtype), np.zeros((), logits.dtype)]),
    ]


def _maskrcnn_samples(rng):
    def case(counts, m=4):
        gt_masks = [(rng.random((2, 20, 24)) > 0.5).astype(np.uint8) for _ in counts]
        proposals = [_random_boxes(rng, k, size=16, min_side=2, max_side=10) for k in counts]
        return (rng.standard_normal((sum(counts), 3, m, m)), proposals, gt_masks,
                [np.array([1, 2]) for _ in counts], [rng.integers(0, 2, k) for k in counts])

    return [
        Sample(case([3, 2]), grad=(0,)),
        Sample(case([0, 0]), edge="no positive RoI", grad=(0,), note="0, still connected to the graph"),
    ]


def _maskrcnn_op(mask_logits, proposals, gt_masks, gt_labels, matched_idxs):
    labels, targets = mask_targets(proposals, gt_masks, gt_labels, matched_idxs, mask_logits.shape[-1])
    return maskrcnn_loss(mask_logits, labels, targets)


def _abs_samples(rng):
    return _elementwise_samples(rng, [-1.0, -0.0, 0.0, 2.0, np.nan], "on the kink x = 0, and NaN",
                                "gradient sign(x): 0 at x = 0 and at NaN", extremes=False)


def _torch_method(name):
    return lambda torch: lambda x, **kw: getattr(x, name)(**kw)


# ----- the table ----------------------------------------------------------------------------------------

_F = "torch.nn.functional."
TABLE = [
    # activations
    Entry("F.relu", _F + "relu", F.relu, lambda torch: torch.nn.functional.relu,
          lambda rng: _elementwise_samples(rng, [-1.0, -0.0, 0.0, 2.0, np.nan], "on the kink x = 0, and NaN",
                                           "gradient 0 at x = 0 (torch tests y <= 0); NaN passes its gradient"),
          "activations"),
    Entry("F.sigmoid", "torch.sigmoid", F.sigmoid, lambda torch: torch.sigmoid,
          lambda rng: _elementwise_samples(rng, [-np.inf, -800.0, 0.0, 800.0, np.inf], "±800 and ±inf",
                                           "0 and 1 without overflow, gradient 0", kink=False),
          "activations", notes=("computed from exp(-|x|), so no exponential overflows",)),
    Entry("F.softmax", _F + "softmax", F.softmax, lambda torch: torch.nn.functional.softmax, _softmax_samples,
          "activations", refusals=lambda rng: [Refusal((np.zeros((2, 3)), 2), {}, ValueError, ("dim 2", "(2, 3)"),
                                                       "refuses")]),
    Entry("F.log_softmax", _F + "log_softmax", F.log_softmax, lambda torch: torch.nn.functional.log_softmax,
          _softmax_samples, "activations"),
    # the tape's ops with kinks
    Entry("Tensor.clamp", "torch.Tensor.clamp", lambda x, **kw: x.clamp(**kw), _torch_method("clamp"),
          _clamp_samples, "tape", refusals=_clamp_refusals,
          notes=("bounds are numbers (or None); torch also takes tensor bounds, with gradient 1/2 on a tie",)),
    Entry("Tensor.abs", "torch.Tensor.abs", lambda x: x.abs(), _torch_method("abs"), _abs_samples, "tape"),
    # losses
    Entry("F.cross_entropy", _F + "cross_entropy", F.cross_entropy, lambda torch: torch.nn.functional.cross_entropy,
          _cross_entropy_samples, "losses", refusals=_cross_entropy_refusals,
          notes=("'mean' divides by the summed weight of the kept targets, for both terms of label smoothing",)),
    Entry("F.binary_cross_entropy_with_logits", _F + "binary_cross_entropy_with_logits",
          F.binary_cross_entropy_with_logits, lambda torch: torch.nn.functional.binary_cross_entropy_with_logits,
          _bce_samples, "losses", refusals=_bce_refusals,
          notes=("weight and pos_weight are constants (no gradient), as in torch",)),
    Entry("F.smooth_l1_loss", _F + "smooth_l1_loss", F.smooth_l1_loss, lambda torch: torch.nn.functional.smooth_l1_loss,
          _smooth_l1_samples, "losses", refusals=_smooth_l1_refusals,
          notes=("input and target must have one shape: torch broadcasts them, with a warning",)),
    Entry("fastrcnn_loss", "torchvision.models.detection.roi_heads.fastrcnn_loss", fastrcnn_loss,
          lambda torch: _tv("models.detection.roi_heads.fastrcnn_loss"), _fastrcnn_samples, "losses"),
    Entry("maskrcnn_loss", "torchvision.models.detection.roi_heads.maskrcnn_loss", _maskrcnn_op,
          lambda torch: _tv("models.detection.roi_heads.maskrcnn_loss"), _maskrcnn_samples, "losses", dtypes=FULL,
          notes=("ours takes the projected targets (models.roi_heads.mask_targets); the table calls both steps",)),
    # norms
    Entry("F.batch_norm", _F + "batch_norm", F.batch_norm, lambda torch: torch.nn.functional.batch_norm,
          _batch_norm_samples, "norms", refusals=_batch_norm_refusals),
    Entry("F.instance_norm", _F + "instance_norm", F.instance_norm,
          lambda torch: lambda x, w=None, b=None, **kw: torch.nn.functional.instance_norm(x, None, None, w, b, **kw),
          _instance_norm_samples, "norms"),
    Entry("F.frozen_batch_norm", "torchvision.ops.misc.FrozenBatchNorm2d", F.frozen_batch_norm,
          _frozen_batch_norm_ref, _frozen_batch_norm_samples, "norms", dtypes=FULL,
          notes=("only the input gets a gradient: the four vectors are buffers",)),
    # linear, conv, pooling, resizing
    Entry("F.linear", _F + "linear", F.linear, lambda torch: torch.nn.functional.linear, _linear_samples,
          "layers", refusals=_linear_refusals),
    Entry("F.conv2d", _F + "conv2d", F.conv2d, lambda torch: torch.nn.functional.conv2d, _conv2d_samples,
          "layers", dtypes=FULL, refusals=_conv2d_refusals,
          notes=("torch gives a (N, 0, H, W) output for an input of no channel, ignoring the bias: refused here",)),
    Entry("F.conv_transpose2d", _F + "conv_transpose2d", F.conv_transpose2d,
          lambda torch: torch.nn.functional.conv_transpose2d, _conv_transpose2d_samples, "layers", dtypes=FULL,
          refusals=_conv_transpose2d_refusals),
    Entry("F.max_pool2d", _F + "max_pool2d", F.max_pool2d, lambda torch: torch.nn.functional.max_pool2d,
          _max_pool_samples, "layers", dtypes=FULL, refusals=_max_pool_refusals),
    Entry("F.interpolate", _F + "interpolate", F.interpolate, lambda torch: torch.nn.functional.interpolate,
          _interpolate_samples, "layers", refusals=_interpolate_refusals,
          notes=("'nearest' indices computed in float32 whatever the dtype, as torch",)),
    # joining
    Entry("F.cat", "torch.cat", F.cat, lambda torch: torch.cat, _cat_samples, "joining", refusals=_cat_refusals,
          notes=("torch skips a legacy 1-D empty tensor among tensors of more axes: refused here",)),
    Entry("F.stack", "torch.stack", F.stack, lambda torch: torch.stack, _stack_samples, "joining",
          refusals=_stack_refusals),
    # boxes
    Entry("ops.box_area", "torchvision.ops.box_area", box_area, lambda torch: _tv("ops.box_area"), _box_area_samples,
          "boxes", differentiable=False, refusals=lambda rng: [_integer_boxes_refusal()]),
    Entry("ops.box_iou", "torchvision.ops.box_iou", box_iou, lambda torch: _tv("ops.box_iou"), _box_iou_samples,
          "boxes", differentiable=False, refusals=_box_iou_refusals),
    Entry("ops.clip_boxes_to_image", "torchvision.ops.clip_boxes_to_image", clip_boxes_to_image,
          lambda torch: _tv("ops.clip_boxes_to_image"), _clip_samples, "boxes", differentiable=False,
          refusals=_clip_refusals, notes=("float16 boxes stay float16, as torchvision",)),
    Entry("ops.remove_small_boxes", "torchvision.ops.remove_small_boxes", remove_small_boxes,
          lambda torch: _tv("ops.remove_small_boxes"), _remove_small_samples, "boxes", differentiable=False,
          exact=True, refusals=_remove_small_refusals),
    Entry("ops.nms", "torchvision.ops.nms", nms, lambda torch: _tv("ops.nms"), _nms_samples, "boxes",
          differentiable=False, exact=True, dtypes=FULL, torch_dtypes=FULL, refusals=_nms_refusals),
    Entry("ops.batched_nms", "torchvision.ops.batched_nms", batched_nms, lambda torch: _tv("ops.batched_nms"),
          _batched_nms_samples, "boxes", differentiable=False, exact=True, dtypes=FULL, torch_dtypes=FULL,
          refusals=_batched_nms_refusals),
    Entry("BoxCoder.encode", "torchvision.models.detection._utils.BoxCoder.encode_single",
          lambda reference, proposals, weights: BoxCoder(weights).encode(reference, proposals),
          lambda torch: lambda reference, proposals, weights: _tv("models.detection._utils.BoxCoder")(
              weights).encode_single(reference, proposals), _encode_samples, "boxes", differentiable=False,
          refusals=_encode_refusals),
    Entry("BoxCoder.decode", "torchvision.models.detection._utils.BoxCoder.decode",
          lambda codes, boxes, weights: BoxCoder(weights).decode(codes, boxes),
          lambda torch: lambda codes, boxes, weights: _tv("models.detection._utils.BoxCoder")(weights).decode(
              codes, [boxes]), _decode_samples, "boxes", differentiable=False, refusals=_decode_refusals),
    Entry("Matcher", "torchvision.models.detection._utils.Matcher", lambda iou, **kw: Matcher(**kw)(iou),
          lambda torch: lambda iou, **kw: _tv("models.detection._utils.Matcher")(**kw)(iou), _matcher_samples,
          "boxes", differentiable=False, exact=True, refusals=_matcher_refusals),
    Entry("AnchorGenerator", "torchvision.models.detection.anchor_utils.AnchorGenerator",
          lambda images, features, **kw: AnchorGenerator(**kw)(images, features), _anchor_ref, _anchor_samples,
          "boxes", differentiable=False, exact=True, refusals=_anchor_refusals),
    # the detection ops
    Entry("ops.roi_align", "torchvision.ops.roi_align", roi_align, lambda torch: _tv("ops.roi_align"),
          _roi_align_samples, "detection", dtypes=FULL, refusals=_roi_align_refusals,
          notes=("no gradient reaches the boxes, as torchvision",)),
    Entry("ops.MultiScaleRoIAlign", "torchvision.ops.MultiScaleRoIAlign",
          lambda features, boxes, image_sizes, **kw: MultiScaleRoIAlign(**kw)(features, boxes, image_sizes),
          lambda torch: lambda features, boxes, image_sizes, **kw: _tv("ops.MultiScaleRoIAlign")(**kw)(
              features, boxes, image_sizes), _pooler_samples, "detection", dtypes=FULL, refusals=_pooler_refusals),
    Entry("ops.paste_masks_in_image", "torchvision.models.detection.roi_heads.paste_masks_in_image",
          paste_masks_in_image, _paste_ref, _paste_samples, "detection", differentiable=False, dtypes=FULL,
          refusals=_paste_refusals,
          notes=("a box wholly outside the image gives a zero image (torchvision's slicing fails or wraps there)",)),
]

ENTRIES = {e.name: e for e in TABLE}


def samples_of(entry):
    """The entry's samples, drawn from a generator seeded by its name (the same every run)."""
    return entry.samples(np.random.default_rng(zlib.crc32(entry.name.encode())))


def refusals_of(entry):
    return entry.refusals(np.random.default_rng(zlib.crc32(entry.name.encode()) + 1))


def sample_dtypes(entry, sample):
    return [d for d in entry.dtypes if sample.dtypes is None or d in sample.dtypes]


# ----- calling an entry: arrays in the dtype under test, Tensors where a gradient is asked for ---------


def cast(value, dtype, layout=""):
    """``value`` with its float64 arrays cast to ``dtype`` (as non-contiguous views for a
    ``layout``), walking lists, tuples and dicts; integer arrays and numbers unchanged."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind != "f":
            return value
        a = value.astype(dtype)
        if layout == "strided" and a.ndim >= 1:
            wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype)
            wide[..., ::2] = a
            a = wide[..., ::2]
        elif layout == "transposed" and a.ndim >= 2:
            a = np.ascontiguousarray(a.swapaxes(-1, -2)).swapaxes(-1, -2)
        return a
    if isinstance(value, list):
        return [cast(v, dtype, layout) for v in value]
    if isinstance(value, dict):
        return {k: cast(v, dtype, layout) for k, v in value.items()}
    return value


def grad_positions(entry, sample):
    """The args that get a gradient."""
    if not entry.differentiable:
        return ()
    if sample.grad is not None:
        return sample.grad
    return tuple(i for i, a in enumerate(sample.args) if _holds_floats(a))


def _holds_floats(value):
    if isinstance(value, np.ndarray):
        return value.dtype.kind == "f"
    if isinstance(value, (list, dict)):
        return any(_holds_floats(v) for v in (value.values() if isinstance(value, dict) else value))
    return False


def wrap(value, requires_grad):
    """Our side of an argument: floating arrays that want a gradient become Tensors."""
    if isinstance(value, np.ndarray):
        return tm.Tensor(value, requires_grad=True) if requires_grad and value.dtype.kind == "f" else value
    if isinstance(value, list):
        return [wrap(v, requires_grad) for v in value]
    if isinstance(value, dict):
        return {k: wrap(v, requires_grad) for k, v in value.items()}
    return value


def our_args(entry, sample, args):
    wanted = grad_positions(entry, sample)
    return [wrap(a, i in wanted) for i, a in enumerate(args)]


def outputs(result):
    """An op's result as a flat list of arrays (Tensors' data)."""
    if isinstance(result, (list, tuple)):
        return [o for r in result for o in outputs(r)]
    return [result.data if isinstance(result, tm.Tensor) else result]


# ----- the docs generated from the table ------------------------------------------------------------

FAMILIES = [("activations", "Activations"), ("tape", "The tape's ops with a kink"), ("losses", "Losses"),
            ("norms", "Normalisation"), ("layers", "Linear, convolution, pooling, resizing"),
            ("joining", "Joining"), ("boxes", "Boxes, NMS and the detector's box parts"),
            ("detection", "RoIAlign, the pooler, pasting masks")]
DOCS = ROOT / "docs" / "ops.md"
CHAPTER = ROOT / "notebooks" / "src" / "01_tape.py"
CHAPTER_BEGIN = "# <!-- kink table: generated by tests/op_table.py, do not edit by hand -->"
CHAPTER_END = "# <!-- end of the kink table -->"


def _names(entries):
    return ", ".join(f"`{e.name}`" for e in entries)


def _dtype_names(dtypes):
    return ", ".join(np.dtype(d).name for d in dtypes)


def _values(a):
    """A short array as text: [0, 1, nan]."""
    a = np.asarray(a, dtype=np.float64).ravel()
    return "[" + ", ".join("-0" if v == 0 and math.copysign(1, v) < 0 else f"{v:g}" for v in a) + "]"


def _refusal_message(entry, refusal):
    try:
        entry.op(*[wrap(a, entry.differentiable) for a in refusal.args], **refusal.kwargs)
    except refusal.error as e:
        return f"{type(e).__name__}: {e}"
    return "(no error)"


def kink_rows():
    """(op, edge, input, output, gradient for a cotangent of ones) for every kink sample whose
    first input holds at most 8 numbers (flattened, row by row), computed in float64."""
    rows = []
    for entry in TABLE:
        if not entry.differentiable:
            continue
        for sample in samples_of(entry):
            first = sample.args[0]
            if not (sample.kink and isinstance(first, np.ndarray) and first.size <= 8):
                continue
            args = our_args(entry, sample, list(sample.args))
            out = entry.op(*args, **sample.kwargs)
            (out * np.ones(out.shape)).sum().backward()
            rows.append((entry.name, sample.edge, _values(first), _values(out.data), _values(args[0].grad)))
    return rows


def kink_table():
    lines = ["| op | where | x | output | gradient (cotangent 1) |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join([f"`{op}`"] + [cell.replace("|", "\\|") for cell in rest]) + " |"
              for op, *rest in kink_rows()]
    return lines


def render_docs():
    """The text of docs/ops.md."""
    n_samples = sum(len(samples_of(e)) for e in TABLE)
    n_refusals = sum(len(refusals_of(e)) for e in TABLE)
    lines = [
        "# The ops at their edges",
        "",
        "Generated by `python tests/op_table.py` from the table in `tests/op_table.py`; a test fails",
        "when this file differs from what the table generates. Do not edit it by hand.",
        "",
        f"The table holds {len(TABLE)} ops, {n_samples} sample inputs and {n_refusals} refused inputs.",
        "`tests/test_op_table.py` runs every sample in every dtype the op accepts and holds it to",
        "torch or torchvision: the output (float64 to 1e-10, float32 to 1e-5, float16 to 4e-3,",
        "NaN where torch has NaN), its dtype and shape, the gradient for a random cotangent,",
        "including on kinks, bounds and ties (where torch's convention is its own, ours follows it),",
        "finite differences in float64 away from the kinks, and the inputs left unmodified. Every",
        "refused input gets one line naming the argument and what it accepts, and the test checks",
        "what torch does with it. Where ours parts from torch on purpose, the sample says so below.",
        "",
        "Rules that hold for every op:",
        "",
        "- **dtypes.** float64 proves, float32 runs: every op takes both. The ops written as array",
        "  code also take float16 (torch computes float16 in float32 and rounds once; ours rounds each",
        "  step, hence the wider tolerance). Those on a Numba kernel, or built on one, refuse it with",
        f"  one line: {_names(e for e in TABLE if np.float16 not in e.dtypes)}; torch takes float16 in",
        f"  all of them but {_names(e for e in TABLE if np.float16 not in e.torch_dtypes)}.",
        "- **float16 boxes.** `box_area` and `box_iou` widen float16 boxes to float32 first, as",
        "  torchvision does: the area of an 800-pixel box, 640000, is above float16's largest value",
        "  (65504). `clip_boxes_to_image` and `remove_small_boxes` work in float16, as torchvision's.",
        "- **empty inputs** give empty results of torch's shape and dtype (NaN for a mean over no",
        "  element, 0 for a sum) and gradients of torch's shape, zero where nothing flows; an empty",
        "  input torch refuses is refused with one line.",
        "",
        "## Kinks, bounds and ties",
        "",
        "Where a function has no derivative, the gradient is a convention; these are torch's,",
        "computed here by the ops themselves (float64):",
        "",
        *kink_table(),
    ]
    for family, title in FAMILIES:
        lines += ["", f"## {title}"]
        for entry in (e for e in TABLE if e.family == family):
            samples = samples_of(entry)
            lines += ["", f"### `{entry.name}` — `{entry.torch_name}`", ""]
            lines.append(f"dtypes: {_dtype_names(entry.dtypes)} (torch: {_dtype_names(entry.torch_dtypes)}); "
                         f"{'gradients checked' if entry.differentiable else 'no gradient'}; {len(samples)} samples.")
            lines.append("")
            for note in entry.notes:
                lines.append(f"- {note}")
            for s in samples:
                if not s.edge:
                    continue
                text = f"- {s.edge}" + (f": {s.note}" if s.note else "")
                if s.differs:
                    text += f" (torch: {s.differs})"
                lines.append(text)
            for r in refusals_of(entry):
                torch_does = {"refuses": "torch too", "accepts": "torch accepts it"}.get(r.torch, f"torch {r.torch}")
                lines.append(f"- refused ({torch_does}): `{_refusal_message(entry, r)}`")
    return "\n".join(lines) + "\n"


def chapter_block(text):
    """The kink table's lines in the chapter's source, between its two markers."""
    lines = text.splitlines()
    begin, end = lines.index(CHAPTER_BEGIN), lines.index(CHAPTER_END)
    return lines[begin + 1:end]


def chapter_kink_lines():
    return ["#"] + [f"# {line}" for line in kink_table()] + ["#"]


def write():
    """Rewrite docs/ops.md and the chapter's kink table from the table."""
    DOCS.write_text(render_docs())
    text = CHAPTER.read_text()
    lines = text.splitlines()
    begin, end = lines.index(CHAPTER_BEGIN), lines.index(CHAPTER_END)
    CHAPTER.write_text("\n".join(lines[:begin + 1] + chapter_kink_lines() + lines[end:]) + "\n")


if __name__ == "__main__":
    write()
    print(f"wrote {DOCS.relative_to(ROOT)} and the kink table of {CHAPTER.relative_to(ROOT)}")
