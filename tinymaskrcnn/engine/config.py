"""What a training run is told: TrainConfig with its validation, the defaults it falls back to,
and what it resolves to (the data's files, the lr and warmup, the number of processes, the run folder)."""
import dataclasses
import importlib.util
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..models.registry import MODELS, check_architecture, keywords
from ..data import ensure_shapes_dataset, find_shapes_dataset
from .data_parallel import launched_size

# The shapes set has at most a handful of objects per image: 100 detections (COCO's setting)
# would only make the mask head and evaluation slower, not the AP higher. The mask head trains
# on at most 8 positive RoIs per image: the RPN soon gives each object a dozen near-copies, so
# more RoIs cost time and teach nothing new. Half of each image's 128 sampled RoIs may be
# positives (torchvision: a quarter): with 1-4 objects an image, the box classifier then learns
# the classes sooner. A 64-channel FPN: its 3x3 convs and the RPN's at 40x60 would otherwise cost
# as much as half the ResNet-18. InstanceNorm2d in the ResNet-18: each image is normalised by its
# own statistics, in training (where data-parallel training gives each process one image, so
# BatchNorm2d's statistics would be one image's anyway) and in inference (where BatchNorm2d's
# running averages of one-image statistics are far from any one image's). The figures behind
# each choice: docs/benchmarks.md, "Figures behind design choices". A model gets the ones it
# takes (shapes_model_defaults): ResNet-50 has no fpn_channels or norm.
SHAPES_MODEL_DEFAULTS = {"box_detections_per_img": 20, "mask_batch_size_per_image": 8, "box_positive_fraction": 0.5,
                         "fpn_channels": 64, "norm": "instance"}
# The shapes images at about their own scale: ResNet-18's builder defaults, which a model whose
# defaults differ gets (ResNet-50's 800/1333 would upsample them five-fold).
SHAPES_IMAGE_SIZE = {"min_size": 160, "max_size": 256}
# lr and weight decay when TrainConfig leaves them None. AdamW is the default: from scratch on
# the shapes set it reaches twice SGD's mask AP in the same iterations (docs/benchmarks.md).
# SGD's are torchvision's reference recipe (lr 0.02, weight decay 1e-4).
OPTIMIZER_DEFAULTS = {"adamw": {"lr": 5e-4, "weight_decay": 0.05}, "sgd": {"lr": 0.02, "weight_decay": 1e-4}}


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved in every checkpoint and in config.json).

    Data (first that applies): ``train_ann``/``train_images`` (and ``val_ann``/``val_images``)
    COCO files; ``data``, a folder in COCO layout (``annotations/instances_{train,val}.json``
    with ``images/{train,val}/``, or COCO 2017's ``annotations/instances_train2017.json`` with
    ``train2017/``); otherwise the synthetic shapes set, generated once under ``shapes_root``
    with ``shapes_train``/``shapes_val`` images of ``shapes_size`` (H, W) pixels.
    """
    # data
    data: str = None
    train_ann: str = None
    train_images: str = None
    val_ann: str = None
    val_images: str = None
    shapes_root: str = "data_cache/shapes"
    shapes_train: int = 256
    shapes_val: int = 64
    shapes_size: tuple = ((128, 192), (128, 192))
    hflip: float = 0.5                 # probability of a horizontal flip per training image
    # model: a name from MODELS and its keyword arguments (num_classes comes from the data)
    model: str = "maskrcnn_resnet18_fpn"
    model_kwargs: dict = field(default_factory=dict)  # on the shapes set SHAPES_MODEL_DEFAULTS come first
    weights: str = None                # a torchvision .pth or a run's checkpoint.npz to start from (mismatched heads stay as built)
    device: str = "cpu"                # "cuda": the model's arrays in CuPy, the kernels kernels/cuda (one process)
    # optimisation
    iterations: int = 1900             # the main job: 10 to 12 minutes on 2 cores
    batch_size: int = 2
    processes: int = None              # N > 1: each batch split over N MPI processes (data_parallel.py); None: under
                                       # mpiexec its number, else one per core up to batch_size (1 without MPI)
    optimizer: str = "adamw"           # "adamw" or "sgd" (with momentum); see OPTIMIZER_DEFAULTS
    lr: float = None                   # None: the optimizer's default in OPTIMIZER_DEFAULTS
    momentum: float = 0.9              # SGD only
    weight_decay: float = None         # None: the optimizer's default in OPTIMIZER_DEFAULTS
    warmup_iters: int = None           # None: 50, or a quarter of a shorter run
    warmup_factor: float = 1e-3
    schedule: str = "cosine"           # "cosine" (to zero at the end) or "step" (x gamma at milestones)
    milestones: tuple = None           # for "step"; None: at 2/3 and 8/9 of the iterations
    gamma: float = 0.1
    clip_grad_norm: float = 10.0       # None or 0: no clipping
    # bookkeeping
    eval_period: int = 0               # evaluate on val every N iterations (0: only at the end)
    checkpoint_period: int = 100       # write checkpoint.npz every N iterations (and at the end)
    num_predictions: int = 4           # val images drawn into predictions/ at the end
    seed: int = 0
    out_dir: str = None                # None: runs/<timestamp>-<process id>
    resume: bool = False               # continue from out_dir/checkpoint.npz, with its recorded settings
    overwrite: bool = False            # out_dir holds a run: delete its files and start afresh
    progress: bool = True

    def validate(self):
        """Raise ValueError naming the first field that cannot work. Every setting is checked
        here, before any data is read or any model built: a run never fails after its work on
        a value it could have refused at once."""
        if self.model not in MODELS:
            raise ValueError(f"model={self.model!r}: choose one of {MODELS}")
        for name in ("iterations", "batch_size"):
            _check(self, name, _is_int(getattr(self, name)) and getattr(self, name) >= 1, "a positive integer")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device={self.device!r}: expected 'cpu' or 'cuda'")
        if self.processes is not None and not (_is_int(self.processes) and self.processes >= 1):
            raise ValueError(f"processes={self.processes!r}: expected a positive integer (N > 1 splits each batch over "
                             "N processes)")
        if self.processes is not None and self.batch_size < self.processes:
            raise ValueError(f"processes={self.processes} splits each batch over {self.processes} processes: "
                             f"batch_size={self.batch_size} needs to be at least {self.processes}")
        for name in ("eval_period", "checkpoint_period", "num_predictions", "warmup_iters", "seed"):
            if name == "warmup_iters" and self.warmup_iters is None:
                continue
            _check(self, name, _is_int(getattr(self, name)) and getattr(self, name) >= 0, "a non-negative integer")
        if uses_shapes(self):
            for name in ("shapes_train", "shapes_val"):
                # the run ends with an evaluation on val: an empty val set would fail after all the training
                _check(self, name, _is_int(getattr(self, name)) and getattr(self, name) >= 1,
                       "a positive integer (the run trains on the first and ends evaluating on the second)")
        if self.optimizer not in OPTIMIZER_DEFAULTS:
            raise ValueError(f"optimizer={self.optimizer!r}: choose one of {tuple(OPTIMIZER_DEFAULTS)}")
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"schedule={self.schedule!r}: choose 'cosine' or 'step'")
        if self.schedule == "cosine" and self.warmup_iters is not None and self.warmup_iters >= self.iterations:
            raise ValueError(f"warmup_iters ({self.warmup_iters}) must be below iterations ({self.iterations})")
        _check(self, "lr", self.lr is None or _is_finite(self.lr) and self.lr > 0, "a finite positive learning rate")
        _check(self, "weight_decay", self.weight_decay is None or _is_finite(self.weight_decay) and self.weight_decay >= 0,
               "a finite non-negative number")
        _check(self, "momentum", _is_finite(self.momentum) and 0 <= self.momentum < 1, "a number in [0, 1)")
        # min(max_norm / norm, 1) scales the gradient: a negative max_norm would flip it and train uphill
        _check(self, "clip_grad_norm", self.clip_grad_norm is None or _is_finite(self.clip_grad_norm)
               and self.clip_grad_norm >= 0, "a finite non-negative maximum gradient norm (0 or None: no clipping)")
        _check(self, "warmup_factor", _is_finite(self.warmup_factor) and 0 < self.warmup_factor <= 1,
               "a number in (0, 1]: the first iteration's fraction of the lr")
        _check(self, "gamma", _is_finite(self.gamma) and 0 < self.gamma <= 1, "a number in (0, 1]")
        _check(self, "hflip", _is_finite(self.hflip) and 0 <= self.hflip <= 1, "a probability in [0, 1]")
        _check(self, "milestones", self.milestones is None or isinstance(self.milestones, (list, tuple))
               and all(_is_int(m) and m >= 1 for m in self.milestones), "a list of positive iterations")
        if self.resume and self.out_dir is None:
            raise ValueError("resume=True needs out_dir: the run folder holding checkpoint.npz")
        if self.resume and self.overwrite:
            raise ValueError("resume=True continues the run in out_dir and overwrite=True deletes it: give one of them")
        if (self.train_ann is None) != (self.train_images is None) or (self.val_ann is None) != (self.val_images is None):
            raise ValueError("give annotation files and image folders in pairs: train_ann with train_images, "
                             "val_ann with val_images")
        check_architecture(self.model, model_kwargs=self.model_kwargs)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check(config, name, ok, expected):
    if not ok:
        raise ValueError(f"{name}={getattr(config, name)!r}: expected {expected}")


def shapes_model_defaults(model):
    """What ``model`` (a name in MODELS) is given on the shapes set: the SHAPES_MODEL_DEFAULTS
    it takes, and SHAPES_IMAGE_SIZE where its own defaults differ."""
    accepted = keywords(model)
    defaults = {k: v for k, v in SHAPES_MODEL_DEFAULTS.items() if k in accepted}
    return {**defaults, **{k: v for k, v in SHAPES_IMAGE_SIZE.items() if accepted[k] != v}}


def with_optimizer_defaults(config):
    """A copy of ``config`` whose lr and weight decay left None are its optimizer's defaults, and
    whose warmup left None is 50 iterations, or a quarter of a run shorter than 200 (so that
    ``--iterations 20`` works as typed)."""
    defaults = {name: value for name, value in OPTIMIZER_DEFAULTS[config.optimizer].items()
                if getattr(config, name) is None}
    if config.warmup_iters is None:
        defaults["warmup_iters"] = min(50, config.iterations // 4)
    return dataclasses.replace(config, **defaults)


def processes(config):
    """How many processes share each batch: ``config.processes``; when None, under mpiexec the
    number it started, else one per core up to one image each (small ops parallelise better
    across images than inside one: data_parallel.py), or 1 on one GPU or without mpi4py."""
    if config.processes is not None:
        return config.processes
    size = launched_size()
    if size is not None:
        return size
    if config.device == "cuda" or importlib.util.find_spec("mpi4py") is None:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, config.batch_size))


def coco_layout(root):
    """{split: (ann_file, image_dir)} of a folder in COCO layout; an error lists what was looked for."""
    root = Path(root)
    layouts = [(root / "annotations" / f"instances_{s}.json", root / "images" / s) for s in ("train", "val")], \
              [(root / "annotations" / f"instances_{s}2017.json", root / f"{s}2017") for s in ("train", "val")]
    for layout in layouts:
        if layout[0][0].is_file():
            return {split: (str(a), str(i)) for split, (a, i) in zip(("train", "val"), layout) if a.is_file()}
    raise FileNotFoundError(f"{root} is not in COCO layout: expected annotations/instances_train.json with "
                            "images/train/ (or annotations/instances_train2017.json with train2017/)")


def uses_shapes(config):
    return config.train_ann is None and config.data is None


def resolve_data(config, create=True):
    """{"train": (ann_file, image_dir), "val": (ann_file, image_dir) or absent} for ``config``.
    The shapes set is generated when missing; with ``create`` False it must be there already
    (a FileNotFoundError otherwise), so that reading a run's data creates nothing."""
    if config.train_ann is not None:
        splits = {"train": (config.train_ann, config.train_images)}
    elif not uses_shapes(config):
        splits = coco_layout(config.data)
    else:
        settings = dict(num_train=config.shapes_train, num_val=config.shapes_val, image_size=config.shapes_size,
                        seed=config.seed)
        paths = ensure_shapes_dataset(config.shapes_root, progress=config.progress, **settings) if create else \
            find_shapes_dataset(config.shapes_root, **settings)
        splits = {s: tuple(p) for s, p in paths.items()}
    if config.val_ann is not None:
        splits["val"] = (config.val_ann, config.val_images)
    return splits


_NAMED = set()  # the run folders default_out_dir has handed out in this process


def default_out_dir():
    """The run folder when none is given: runs/<date-time>-<process id>. Two processes started
    in the same second get two folders; a name this process handed out before, or one already
    on disk, gets a -2, -3, ... suffix."""
    base = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    folder, n = base, 1
    while str(folder) in _NAMED or folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    _NAMED.add(str(folder))
    return str(folder)
