"""Build a detector by name: what the training loop (engine) and its data-parallel worker
(data_parallel) both need, kept apart from either so that neither imports the other."""
MODELS = ("maskrcnn_resnet18_fpn", "maskrcnn_resnet50_fpn")


def build_model(name, num_classes, model_kwargs=None):
    """``tm.models.<name>(num_classes=..., **model_kwargs)`` for a name in MODELS."""
    from . import models  # on first use: the detector's kernels are not needed before

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {MODELS}")
    return getattr(models, name)(num_classes=num_classes, **(model_kwargs or {}))
