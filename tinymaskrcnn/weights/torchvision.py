"""torchvision's weights into our modules: what knows the detector's key layout.

Our parameter and buffer names are torchvision's state_dict keys, so loading is the identity
mapping, up to a ``prefix`` (ImageNet ResNet weights into ``model.backbone.body.``), keys to
leave out (``exclude``, e.g. the ImageNet classifier ``fc.``) and the names checkpoints older
than torchvision 0.13 gave two blocks. ``load_torchvision`` loads by name and reports missing,
unexpected and mis-shaped keys together, with shapes. ``load_pretrained`` is what ``train
--weights`` needs: it tells a detector's checkpoint from an ImageNet ResNet by the keys and
insists that the whole backbone is loaded.

A path is read with ``read_pth`` (``pth.py``), without torch; a mapping may hold NumPy arrays,
our Tensors or torch tensors.

``resolve_weights`` is what the builders' ``weights=`` and ``weights_backbone=`` arguments go
through: a path, or one of torchvision's weight names ("DEFAULT", "COCO_V1",
"ResNet50_Weights.IMAGENET1K_V1", or the enum member itself), found as the file torchvision would
have downloaded in torch's cache folder, so a machine that has run torchvision has them already.
"""
import collections
import collections.abc
import os
import re

import numpy as np

from ..core.autograd import Tensor
from ..core.backend import is_cupy
from ..core.files import brief
from ..nn.module import format_state_mismatch, is_optional_state_key
from .downloads import WEIGHT_URLS
from .npz import load as npz_load
from .pth import CheckpointError, read_pth

__all__ = ["state_dict_from", "LoadResult", "load_torchvision", "load_pretrained", "TORCHVISION_WEIGHTS",
           "torch_hub_checkpoints", "resolve_weights", "read_weights", "num_classes_in"]

# Where training scripts tuck the state_dict inside a bigger checkpoint dict.
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "model_state", "net")


def _as_array(value):
    """The array in ``value`` (an array, one of our Tensors, or a torch tensor, duck-typed so
    torch is not imported), or None when it holds none."""
    if isinstance(value, Tensor):
        return value.data
    if isinstance(value, np.ndarray) or is_cupy(value):
        return value
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        return value.detach().cpu().numpy()
    return None


def state_dict_from(obj):
    """The state_dict inside ``obj``: ``obj`` itself when it maps names (strings) to arrays,
    else the mapping under 'model', 'state_dict', 'model_state_dict', 'model_state' or 'net'
    (searched in that order, level after level, each mapping once)."""
    if not isinstance(obj, collections.abc.Mapping):
        raise TypeError(f"expected a state_dict mapping of name -> array, got {type(obj).__name__}")
    seen = set()
    while id(obj) not in seen:
        seen.add(id(obj))
        if all(_as_array(v) is not None for v in obj.values()):
            odd = next((k for k in obj if not isinstance(k, str)), None)
            if odd is not None:
                raise ValueError(f"the state_dict's keys must be names (strings), found {type(odd).__name__} "
                                 f"{brief(odd)}")
            return obj
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), collections.abc.Mapping)), None)
        if inner is None:
            break
        obj = inner
    raise ValueError(f"no state_dict found: the mapping holds non-array values (keys {brief(list(obj)[:10])}) and "
                     f"none of {_WRAPPER_KEYS} holds one; pass the state_dict mapping itself")


LoadResult = collections.namedtuple("LoadResult", ["missing", "unexpected", "mismatched"])
LoadResult.__doc__ = """What ``load_torchvision`` did not load: ``missing`` and ``unexpected`` are
lists of (key, shape), ``mismatched`` of (key, checkpoint shape, module shape). Keys are the
module's for missing/mismatched and the checkpoint's for unexpected."""


def _ignored_keys(module):
    """Module keys a state may carry and the module drops: FrozenBatchNorm2d's
    num_batches_tracked (ImageNet checkpoints are saved from BatchNorm2d)."""
    return {f"{name}.{key}" if name else key
            for name, m in module.named_modules() for key in getattr(m, "_ignored_state_keys", ())}


# Checkpoints saved before torchvision 0.13 (the published COCO Mask R-CNN among them) name two
# blocks that were later wrapped in Conv2dNormActivation by their old names.
_LEGACY_NAMES = [
    (re.compile(r"^(.*rpn\.head\.conv)\.(weight|bias)$"), r"\1.0.0.\2"),
    (re.compile(r"^(.*mask_head)\.mask_fcn(\d+)\.(weight|bias)$"),
     lambda m: f"{m.group(1)}.{int(m.group(2)) - 1}.0.{m.group(3)}"),
]


def _current_name(key, known):
    """``key`` itself, or its post-0.13 name when only that one is known to the module."""
    if key in known:
        return key
    for pattern, new in _LEGACY_NAMES:
        renamed = pattern.sub(new, key)
        if renamed != key and renamed in known:
            return renamed
    return key


def _match(module, state, prefix, exclude):
    """Pair the arrays of ``state`` with ``module``'s keys (``prefix`` + key, under its
    post-0.13 name where only that one is known): (the matched arrays by module key, a
    LoadResult of the rest, missing counted among the module keys under ``prefix``)."""
    own = module.state_dict()
    ignored = _ignored_keys(module)
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)  # not 'f', 'c', '.'
    matched, unexpected, mismatched = collections.OrderedDict(), [], []
    for key, value in state.items():
        if exclude and key.startswith(exclude):
            continue
        target = _current_name(prefix + key, own)
        value = _as_array(value)
        if target not in own:
            if target not in ignored:
                unexpected.append((key, tuple(value.shape)))
        elif tuple(value.shape) != tuple(own[target].shape):
            mismatched.append((target, tuple(value.shape), tuple(own[target].shape)))
        else:
            matched[target] = value
    shaped = {k for k, _, _ in mismatched}
    missing = [(k, tuple(v.shape)) for k, v in own.items()
               if k.startswith(prefix) and k not in matched and k not in shaped and not is_optional_state_key(k)]
    return matched, LoadResult(missing, unexpected, mismatched)


def _state_of(source):
    """The state_dict in ``source``: a mapping, a .pth file read without torch, or one of our
    own checkpoints (a path ending in .npz, ``npz.load``; its model state sits under 'model'),
    so a run's checkpoint.npz can start another training. A file holding no state_dict is a
    CheckpointError naming it."""
    if not isinstance(source, (str, os.PathLike)):
        return state_dict_from(source)
    read = npz_load if os.fspath(source).endswith(".npz") else read_pth
    try:
        return state_dict_from(read(source))
    except (TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{os.fspath(source)}: {e}") from None


def load_torchvision(module, source, strict=True, prefix="", exclude=()):
    """Load torchvision weights into ``module`` by name.

    Args:
        module: one of our modules (a ResNet, BackboneWithFPN, MaskRCNN, ...).
        source: path to a .pth file (read without torch), or a mapping of name -> array (our
            Tensors and CPU torch tensors accepted), possibly wrapped as {'model': state_dict, ...}.
        strict: with True (default), any missing, unexpected or mis-shaped key raises a
            ValueError listing them all (with shapes) and nothing is loaded. With False the
            matching keys are loaded and the rest returned.
        prefix: prepended to every state key to give the module key, and only module keys
            starting with it are expected. ImageNet ResNet weights into a Mask R-CNN:
            ``load_torchvision(model, 'resnet50-0676ba61.pth', prefix='backbone.body.',
            exclude=('fc.',))`` (or into ``model.backbone.body`` with no prefix).
        exclude: a prefix or tuple of prefixes; state keys starting with one are skipped (e.g.
            the ImageNet classifier 'fc.').

    Arrays are converted to each parameter's dtype (and device). A num_batches_tracked for a
    FrozenBatchNorm2d is dropped, as torchvision's FrozenBatchNorm2d drops it, and the pre-0.13
    names of the RPN conv and the mask head convs are read as today's.

    Returns a ``LoadResult(missing, unexpected, mismatched)`` (all empty after a strict load).
    """
    matched, result = _match(module, _state_of(source), prefix, exclude)
    if strict and (result.missing or result.unexpected or result.mismatched):
        raise ValueError(format_state_mismatch(
            f"torchvision state does not match {type(module).__name__}"
            + (f" under prefix {prefix!r}" if prefix else ""), *result,
            fix="build the module with the configuration the weights were saved from; load ImageNet weights into "
                "a backbone with prefix='backbone.body.' and exclude=('fc.',); or pass strict=False to load what "
                "matches"))
    module.load_state_dict(matched, strict=False)  # converts dtype and device in place
    return result


_BODY = "backbone.body."  # where a detector keeps its ResNet, in torchvision's names


def _examples(keys, n=3):
    keys = list(keys)
    return ", ".join(map(str, keys[:n])) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def load_pretrained(model, source):
    """Start a detector from published weights, as ``train --weights`` does; returns the lines
    of a report (what was loaded, what stays as built, what the file has that was ignored).

    Two kinds of checkpoint are told apart by their keys:

    * a detector's (torchvision's ``maskrcnn_resnet50_fpn_coco``, or one of the same
      architecture, such as our own run's ``checkpoint.npz``): keys as the model's. Every array
      whose name and shape fit is loaded; heads shaped for another number of classes stay as
      built, which is fine-tuning's new predictor.
    * an ImageNet classifier's (torchvision's ``resnet18``, ``resnet50``: ``conv1.weight``,
      ``layer1.0.conv1.weight``, ..., ``fc.weight``): loaded into the model's ResNet under
      ``backbone.body.``, the classifier ``fc.`` left out. Running statistics a model has no
      place for (its InstanceNorm2d normalises each image by its own) are ignored.

    Either way the model's whole ResNet body must be loaded. A file that fits nothing, or only
    part of the backbone (another depth or architecture), raises CheckpointError with the
    counts and example keys, and nothing is loaded.
    """
    is_path = isinstance(source, (str, os.PathLike))
    name = os.fspath(source) if is_path else "the state"
    state = _state_of(source)
    own = model.state_dict()
    body = [k for k in own if k.startswith(_BODY)]
    layouts = [("", ())] + ([(_BODY, ("fc.",))] if body else [])
    fits = [(prefix, *_match(model, state, prefix, exclude)) for prefix, exclude in layouts]
    # the layout under which more of the file's names are the model's, shapes aside
    prefix, matched, result = max(fits, key=lambda fit: len(fit[1]) + len(fit[2].mismatched))
    what = f"{name} ({len(state)} arrays) into {type(model).__name__} ({len(own)} arrays)"
    if not matched and not result.mismatched:
        raise CheckpointError(
            f"{what}: no name matches, as they are or under {_BODY!r}. The file's: {_examples(state)}; the model's: "
            f"{_examples(own)}. Pass torchvision weights of this architecture (a detector's checkpoint, or an "
            "ImageNet ResNet of the backbone's depth)")
    reshaped = {k for k, _, _ in result.mismatched}
    body_loaded = sum(k in matched for k in body)
    if any(k not in matched and not is_optional_state_key(k) for k in body):
        mis = [f"{k} file {a} model {b}" for k, a, b in result.mismatched if k.startswith(_BODY)]
        lacking = [k for k in body if k not in matched and k not in reshaped]
        raise CheckpointError(
            f"{what}: only {body_loaded} of the backbone's {len(body)} arrays fit"
            + (f"; mis-shaped ({len(mis)}): {_examples(mis)}" if mis else "")
            + (f"; not in the file ({len(lacking)}): {_examples(lacking)}" if lacking else "")
            + ". The weights are for another backbone (resnet50 weights for a resnet18 model?): pass weights of "
              "the model's own backbone, or train the --model they were made for")
    model.load_state_dict(matched, strict=False)  # converts dtype and device in place
    kind = f"an ImageNet ResNet into {_BODY}, fc left out" if prefix else "a detector's checkpoint"
    lines = [f"weights {name} ({kind}): loaded {len(matched)} of {len(own)} arrays, the backbone's "
             f"{body_loaded} of {len(body)}"]
    if result.mismatched:
        lines.append("  kept as built (shape differs): " + ", ".join(
            f"{k} {theirs}->{ours}" for k, theirs, ours in result.mismatched))
    kept = [k for k in own if k not in matched and k not in reshaped]
    if kept:
        lines.append(f"  kept as built (not in the file): {len(kept)} arrays, e.g. {_examples(kept, 5)}")
    if result.unexpected:
        lines.append(f"  in the file but not in the model (ignored): {len(result.unexpected)} arrays, e.g. "
                     + _examples((k for k, _ in result.unexpected), 5))
    return lines


# ----- torchvision's weights by name ---------------------------------------------------------------

# builder -> (torchvision's enum of its weights, {member: key of WEIGHT_URLS}, the member DEFAULT means)
TORCHVISION_WEIGHTS = {
    "resnet18": ("ResNet18_Weights", {"IMAGENET1K_V1": "resnet18"}, "IMAGENET1K_V1"),
    "resnet34": ("ResNet34_Weights", {"IMAGENET1K_V1": "resnet34"}, "IMAGENET1K_V1"),
    "resnet50": ("ResNet50_Weights", {"IMAGENET1K_V1": "resnet50", "IMAGENET1K_V2": "resnet50_v2"}, "IMAGENET1K_V2"),
    "resnet101": ("ResNet101_Weights", {"IMAGENET1K_V1": "resnet101", "IMAGENET1K_V2": "resnet101_v2"},
                  "IMAGENET1K_V2"),
    "resnet152": ("ResNet152_Weights", {"IMAGENET1K_V1": "resnet152", "IMAGENET1K_V2": "resnet152_v2"},
                  "IMAGENET1K_V2"),
    "maskrcnn_resnet50_fpn": ("MaskRCNN_ResNet50_FPN_Weights", {"COCO_V1": "maskrcnn_resnet50_fpn_coco"}, "COCO_V1"),
}


def torch_hub_checkpoints():
    """The folder where torch.hub keeps downloaded weights, as torch decides it:
    ``$TORCH_HOME/hub/checkpoints``, with TORCH_HOME defaulting to ``$XDG_CACHE_HOME/torch`` and
    that to ``~/.cache/torch``."""
    cache = os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    home = os.path.expanduser(os.environ.get("TORCH_HOME", os.path.join(cache, "torch")))
    return os.path.join(home, "hub", "checkpoints")


def _file_name(key):
    return WEIGHT_URLS[key].rsplit("/", 1)[1]


def resolve_weights(weights, builder):
    """``(path, name)`` of the file that ``weights`` means for ``builder`` (a key of
    TORCHVISION_WEIGHTS), or ``(None, None)`` for None. ``name`` is torchvision's member name
    ('COCO_V1', 'IMAGENET1K_V1' ...) when the file is one of its published ones, else None.

    ``weights`` is a path to a .pth file, or a name as torchvision takes it: 'DEFAULT', a member
    ('IMAGENET1K_V1'), the member with its enum ('ResNet50_Weights.IMAGENET1K_V1'), or the
    enum member itself (read by its class and member names; torchvision is not imported). A
    name is looked up in ``torch_hub_checkpoints()``. A missing file is a FileNotFoundError
    naming the file, where to put it and where torchvision gets it.
    """
    if weights is None:
        return None, None
    enum, members, default = TORCHVISION_WEIGHTS[builder]
    if hasattr(weights, "url") and hasattr(weights, "name"):  # torchvision's enum member
        if type(weights).__name__ != enum:
            raise ValueError(f"{builder} takes {enum} (or their names), got {type(weights).__name__}.{weights.name}")
        weights = weights.name
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"{builder}: weights must be None, a path to a .pth file or one of torchvision's names "
                        f"({', '.join(['DEFAULT', *members])}), got {type(weights).__name__}")
    member = weights[len(enum) + 1:] if isinstance(weights, str) and weights.startswith(enum + ".") else weights
    member = default if member == "DEFAULT" else member
    if member not in members:  # a path
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{builder}: weights {path!r} is neither a file nor one of torchvision's names "
                                    f"({', '.join(['DEFAULT', *members])}, of {enum})")
        names = {_file_name(key): name for name, key in members.items()}
        return path, names.get(os.path.basename(path))
    folder, file = torch_hub_checkpoints(), _file_name(members[member])
    path = os.path.join(folder, file)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{builder} weights {enum}.{member}: {file} is not in {folder}; put it there (torchvision downloads it "
            f"from {WEIGHT_URLS[members[member]]}; tm.weights.download({members[member]!r}, {folder!r}) fetches it "
            "and checks its hash), or pass the file's path")
    return path, member


def read_weights(weights, builder):
    """``(state_dict, name)`` for the builders: the arrays of the file ``resolve_weights``
    finds (read once, without torch), and torchvision's member name or None; ``(None, None)``
    for None."""
    path, name = resolve_weights(weights, builder)
    if path is None:
        return None, None
    return state_dict_from(read_pth(path)), name


def num_classes_in(state, key, num_classes, builder):
    """The number of classes of the weights in ``state``: the rows of the classifier ``key``.
    A ``num_classes`` the caller gave must agree (torchvision's rule: weights fix the classes;
    replace the predictor afterwards to fine-tune on others)."""
    if key not in state:
        raise ValueError(f"{builder}: the weights have no {key!r}, so they are not {builder}'s; their keys begin "
                         f"{_examples(state)}")
    found = int(_as_array(state[key]).shape[0])
    if num_classes is not None and num_classes != found:
        raise ValueError(f"{builder}: num_classes={num_classes} but the weights have {found} classes; leave "
                         "num_classes out and replace the predictor after building (as torchvision's fine-tuning "
                         "tutorial does)")
    return found
