"""Build a detector by name: what the training loop (engine) and its data-parallel worker
(data_parallel) both need, kept apart from either so that neither imports the other."""
import inspect

MODELS = ("maskrcnn_resnet18_fpn", "maskrcnn_resnet50_fpn")


def build_model(name, num_classes, model_kwargs=None):
    """``tm.models.<name>(num_classes=..., **model_kwargs)`` for a name in MODELS; a keyword
    that neither the builder nor MaskRCNN takes is a ValueError naming it."""
    from .. import models  # on first use: the detector's kernels are not needed before

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {MODELS}")
    builder = getattr(models, name)
    # the builders pass their **kwargs on to MaskRCNN
    known = (set(inspect.signature(builder).parameters) | set(inspect.signature(models.MaskRCNN).parameters)) \
        - {"kwargs", "backbone", "num_classes"}
    unknown = sorted(set(model_kwargs or {}) - known)
    if unknown:
        raise ValueError(f"{name} takes no keyword argument {', '.join(map(repr, unknown))} "
                         f"(model_kwargs / --model-kwargs); it takes: {', '.join(sorted(known))}")
    return builder(num_classes=num_classes, **(model_kwargs or {}))
