"""Weights in and out: torchvision's ``.pth`` files without torch, and our own checkpoints.

One job per file:

- ``pth.py``: ``read_pth``, the reader of untrusted ``.pth`` files (a restricted unpickler,
  every size checked against the file); its docstring states the threat model and the
  guarantees. ``CheckpointError`` is raised by every reader here.
- ``npz.py``: ``save`` and ``load``, the project's checkpoints (nested dicts as ``.npz``).
- ``torchvision.py``: ``load_torchvision`` and ``load_pretrained``, torchvision's names into our
  modules (``state_dict_from``, ``LoadResult``); ``resolve_weights``, torchvision's weight names
  ("DEFAULT", "COCO_V1" ...) found in torch's cache folder (``torch_hub_checkpoints``), what the
  builders' ``weights=`` and ``weights_backbone=`` take.
- ``downloads.py``: ``download``, torchvision's published files (``WEIGHT_URLS``) checked by
  ``verify_sha256``.
"""
from .downloads import WEIGHT_URLS, download, verify_sha256
from .npz import load, save
from .pth import CheckpointError, SafeUnpickler, read_pth
from .torchvision import (TORCHVISION_WEIGHTS, LoadResult, load_pretrained, load_torchvision, num_classes_in,
                          read_weights, resolve_weights, state_dict_from, torch_hub_checkpoints)

__all__ = ["CheckpointError", "SafeUnpickler", "read_pth", "state_dict_from", "load_torchvision", "load_pretrained",
           "LoadResult", "save", "load", "WEIGHT_URLS", "download", "verify_sha256", "TORCHVISION_WEIGHTS",
           "torch_hub_checkpoints", "resolve_weights", "read_weights", "num_classes_in"]
