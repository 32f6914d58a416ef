"""Build a detector by name: what the training loop (engine) and its data-parallel worker
(data_parallel) both need, kept apart from either so that neither imports the other.

A model's settings come from places a user or a file controls (``--model-kwargs``, a
checkpoint's recorded ``model_kwargs`` and ``num_classes``), so they are checked before anything
is built (``check_architecture``): a keyword the builder does not take, a value of the wrong
type, or one outside the range the model can run in is a ValueError naming it. A crafted
checkpoint claiming 200,000 classes or a million FPN channels is so refused in microseconds,
not after gigabytes of layers are allocated.
"""
import inspect
import math

from ..core.files import brief

MODELS = ("maskrcnn_resnet18_fpn", "maskrcnn_resnet50_fpn")
MAX_CLASSES = 10_000  # LVIS has 1,204 with background; 10,000 classes give the heads ~50M weights

# Integer settings and the range each can run in: channel widths and counts bound the memory a
# model takes (the upper ends are far beyond any published model), and an image resized below
# 32 pixels (a short side, a long side) leaves nothing for the backbone's stride-32 stage. A
# list value (min_size's choices, anchor_sizes, box_head_convs) holds such integers.
_INT_RANGES = {
    "min_size": (32, 4096), "max_size": (32, 8192), "size_divisible": (1, 256), "fixed_size": (32, 8192),
    "fpn_channels": (1, 1024), "representation_size": (1, 4096), "mask_channels": (1, 1024),
    "box_head_convs": (1, 1024), "anchor_sizes": (1, 4096), "scales_per_octave": (1, 8),
    "rpn_pre_nms_top_n_train": (1, 100_000), "rpn_pre_nms_top_n_test": (1, 100_000),
    "rpn_post_nms_top_n_train": (1, 100_000), "rpn_post_nms_top_n_test": (1, 100_000),
    "rpn_batch_size_per_image": (1, 100_000), "box_batch_size_per_image": (1, 100_000),
    "box_detections_per_img": (1, 10_000), "mask_batch_size_per_image": (1, 10_000),
    "trainable_backbone_layers": (0, 5),
}
_LISTS = {"anchor_sizes", "box_head_convs", "fixed_size", "image_mean", "image_std", "bbox_reg_weights"}
# how many entries a list setting has: one anchor size per FPN level, one mean and deviation per
# RGB channel, a weight per box coordinate, (height, width); at most 8 convs in the box head
_LENGTHS = {"anchor_sizes": (5, 5), "image_mean": (3, 3), "image_std": (3, 3), "bbox_reg_weights": (4, 4),
            "fixed_size": (2, 2), "box_head_convs": (0, 8)}
# string settings and the values the builders take
_CHOICES = {"norm": ("batch", "instance")}
_FRACTIONS = {"rpn_nms_thresh", "rpn_fg_iou_thresh", "rpn_bg_iou_thresh", "rpn_positive_fraction", "rpn_score_thresh",
              "box_score_thresh", "box_nms_thresh", "box_fg_iou_thresh", "box_bg_iou_thresh", "box_positive_fraction"}
# what the builders take as modules: a model's settings are saved as JSON in every checkpoint
_MODULES = {"rpn_anchor_generator", "rpn_head", "box_roi_pool", "box_head", "box_predictor", "mask_roi_pool",
            "mask_head", "mask_predictor", "norm_layer"}


def keywords(name):
    """{keyword: default} that ``build_model(name, ...)``'s model_kwargs may set: the builder's
    and MaskRCNN's (the builders pass their **kwargs on to MaskRCNN), the builder's first."""
    from .. import models  # on first use: the detector's kernels are not needed before

    if name not in MODELS:
        raise ValueError(f"unknown model {brief(name)}: choose one of {MODELS}")
    found = {}
    for function in (getattr(models, name), models.MaskRCNN):
        for p in inspect.signature(function).parameters.values():
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in ("self", "backbone", "num_classes"):
                found.setdefault(p.name, p.default)
    return found


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _problem(key, value, default):
    """Why ``value`` cannot be the setting ``key`` (whose builder default is ``default``), or None."""
    if key in _MODULES:
        return "it takes a module, which model_kwargs cannot hold (they are saved as JSON in every checkpoint)"
    if value is None and default is None:
        return None
    if key in _LISTS or (key == "min_size" and isinstance(value, (list, tuple))):
        if not isinstance(value, (list, tuple)):
            return "expected a list of numbers"
        items = list(value)
        shortest, longest = _LENGTHS.get(key, (1, 64))
        if not shortest <= len(items) <= longest:
            return f"expected {shortest}{'' if shortest == longest else f' to {longest}'} entries, got {len(items)}"
    else:
        items = [value]
    if key in _CHOICES:
        return None if value in _CHOICES[key] else f"expected one of {_CHOICES[key]}"
    if key in _INT_RANGES:
        low, high = _INT_RANGES[key]
        if not all(_is_int(v) and low <= v <= high for v in items):
            return f"expected {'a list of integers' if key in _LISTS else 'an integer'} from {low} to {high}"
    elif key in _FRACTIONS:
        if not (_is_number(value) and 0 <= value <= 1):
            return "expected a number from 0 to 1"
    elif key in _LISTS:
        if not all(_is_number(v) and v > 0 for v in items):
            return "expected positive numbers"
    elif isinstance(default, bool):
        if not isinstance(value, bool):
            return "expected true or false"
    elif isinstance(default, (int, float)):
        if not _is_number(value):
            return "expected a number"
    elif not isinstance(value, (str, type(None))):
        return "expected a string (or null)"
    return None


def check_architecture(name, num_classes=None, model_kwargs=None):
    """Check what ``build_model`` is given before anything is built: ``name`` one of MODELS,
    ``num_classes`` (when given) an integer from 2 (background and one class) to MAX_CLASSES,
    and every ``model_kwargs`` entry a keyword the model takes, of its type and in the range it
    runs in. A ValueError names the first that is not."""
    known = keywords(name)
    if num_classes is not None and not (_is_int(num_classes) and 2 <= num_classes <= MAX_CLASSES):
        raise ValueError(f"num_classes={brief(num_classes)}: expected an integer from 2 (background and one class) "
                         f"to {MAX_CLASSES}")
    if model_kwargs is None:
        return
    if not isinstance(model_kwargs, dict) or not all(isinstance(k, str) for k in model_kwargs):
        raise ValueError(f"model_kwargs must be a dict of keyword arguments, got {brief(model_kwargs)}")
    unknown = sorted(set(model_kwargs) - set(known))
    if unknown:
        raise ValueError(f"{name} takes no keyword argument {', '.join(map(repr, unknown))} "
                         f"(model_kwargs / --model-kwargs); it takes: {', '.join(sorted(known))}")
    for key, value in model_kwargs.items():
        problem = _problem(key, value, known[key])
        if problem:
            raise ValueError(f"{name}: {key}={brief(value)} (model_kwargs / --model-kwargs): {problem}")


def build_model(name, num_classes, model_kwargs=None):
    """``tm.models.<name>(num_classes=..., **model_kwargs)`` for a name in MODELS, its
    arguments checked first (``check_architecture``)."""
    from .. import models

    check_architecture(name, num_classes, model_kwargs)
    builder = getattr(models, name)
    # the architecture alone: weights are loaded afterwards (train --weights, a checkpoint), so
    # torchvision's ImageNet default for the backbone is not read here
    defaults = {"weights_backbone": None} if "weights_backbone" in inspect.signature(builder).parameters else {}
    return builder(num_classes=num_classes, **{**defaults, **(model_kwargs or {})})
