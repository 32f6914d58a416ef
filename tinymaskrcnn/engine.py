"""The training loop and the evaluation loop.

``train(TrainConfig(...))`` is the whole recipe in one place: data (the synthetic shapes set or
any COCO-format set), the model, AdamW (or SGD with momentum) and weight decay, a warmup then step or
cosine learning-rate schedule, optional gradient clipping, a progress bar with running losses,
one JSON line of metrics per iteration, a loss-curve picture, periodic COCO evaluation and
atomic checkpoints from which ``resume=True`` continues bit for bit.

What a run folder holds when training ends::

    checkpoint.npz     model, optimizer, schedule, loader and RNG state, iteration, config
    config.json        the TrainConfig
    metrics.jsonl      one line per iteration (losses, total, training stats, gradient norm
                       before clipping, lr, seconds) and one per evaluation
                       ({"iteration": ..., "eval": {...}})
    losses.png         the loss curves
    results.json, metrics.json   COCO results and the COCOeval summary of the final model on val
    predictions/       a PNG and a JSON of the detections for a few val images

The folder is made only once everything has loaded (data, model, weights, the checkpoint to
resume, the data-parallel worker): a run that cannot start leaves nothing behind. Each start or
resume removes the hidden temporary files of writes that a killed run left half done.
"""
import dataclasses
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import optim, random as tm_random, weights
from .autograd import no_grad
from .backend import check_cuda, to_numpy
from .build import MODELS, build_model
from .data import CocoDetection, Compose, DataLoader, RandomHorizontalFlip, SanitizeTarget, ensure_shapes_dataset
from .data.coco import check_datasets
from .files import atomic_write, write_json_atomic
from .data_parallel import DataParallel, forward_backward

CHECKPOINT = "checkpoint.npz"
CHECKPOINT_FORMAT = "tinymaskrcnn-train"
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
# each choice: docs/benchmarks.md, "Figures behind design choices".
SHAPES_MODEL_DEFAULTS = {"box_detections_per_img": 20, "mask_batch_size_per_image": 8, "box_positive_fraction": 0.5,
                         "fpn_channels": 64, "norm": "instance"}
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
    weights: str = None                # a torchvision .pth to start from (mismatched heads stay as built)
    device: str = "cpu"                # "cuda": the model's arrays in CuPy, the kernels kernels/cuda (one process)
    # optimisation
    iterations: int = 1900             # the main job: about 14 minutes on 2 cores
    batch_size: int = 2
    processes: int = None              # 2: each batch split with a worker process (data_parallel.py); None: 2 where
                                       # there are 2+ cores and batch_size >= 2, else 1
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
    out_dir: str = None                # None: runs/<timestamp>
    resume: bool = False               # continue from out_dir/checkpoint.npz
    progress: bool = True

    def validate(self):
        """Raise ValueError naming the first field that cannot work."""
        if self.model not in MODELS:
            raise ValueError(f"model={self.model!r}: choose one of {MODELS}")
        for name in ("iterations", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected a positive integer")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device={self.device!r}: expected 'cpu' or 'cuda'")
        if self.processes not in (None, 1, 2):
            raise ValueError(f"processes={self.processes!r}: expected 1 or 2 (2 splits each batch with a worker process)")
        if self.processes == 2 and self.batch_size < 2:
            raise ValueError(f"processes=2 splits each batch in two: batch_size={self.batch_size} needs to be at least 2")
        for name in ("eval_period", "checkpoint_period", "num_predictions", "warmup_iters", "seed"):
            if name == "warmup_iters" and self.warmup_iters is None:
                continue
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected a non-negative integer")
        if self.optimizer not in OPTIMIZER_DEFAULTS:
            raise ValueError(f"optimizer={self.optimizer!r}: choose one of {tuple(OPTIMIZER_DEFAULTS)}")
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"schedule={self.schedule!r}: choose 'cosine' or 'step'")
        if self.schedule == "cosine" and self.warmup_iters is not None and self.warmup_iters >= self.iterations:
            raise ValueError(f"warmup_iters ({self.warmup_iters}) must be below iterations ({self.iterations})")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr={self.lr!r}: expected a positive learning rate")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise ValueError(f"weight_decay={self.weight_decay!r}: expected a non-negative number")
        if self.resume and self.out_dir is None:
            raise ValueError("resume=True needs out_dir: the run folder holding checkpoint.npz")
        if (self.train_ann is None) != (self.train_images is None) or (self.val_ann is None) != (self.val_images is None):
            raise ValueError("give annotation files and image folders in pairs: train_ann with train_images, "
                             "val_ann with val_images")


# ---------------------------------------------------------------------------------------------
# Data and model
# ---------------------------------------------------------------------------------------------

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


def resolve_data(config):
    """{"train": (ann_file, image_dir), "val": (ann_file, image_dir) or absent} for ``config``."""
    if config.train_ann is not None:
        splits = {"train": (config.train_ann, config.train_images)}
    elif not uses_shapes(config):
        splits = coco_layout(config.data)
    else:
        paths = ensure_shapes_dataset(config.shapes_root, num_train=config.shapes_train, num_val=config.shapes_val,
                                      image_size=config.shapes_size, seed=config.seed, progress=config.progress)
        splits = {s: tuple(p) for s, p in paths.items()}
    if config.val_ann is not None:
        splits["val"] = (config.val_ann, config.val_images)
    return splits


def load_model(checkpoint, device="cpu"):
    """The model saved in a training checkpoint, in eval mode on ``device``, and the checkpoint dict.

    Errors name the file: not a checkpoint, a checkpoint not written by ``train``, or one
    whose arrays do not fit the architecture it names."""
    if device == "cuda":
        check_cuda()
    state = weights.load(checkpoint)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{checkpoint} is a tinymaskrcnn checkpoint but not one written by training "
                         f"(no '{CHECKPOINT_FORMAT}' format tag): pass the checkpoint.npz of a run folder")
    missing = [key for key in ("model_name", "num_classes", "model_kwargs", "model") if key not in state]
    if missing:
        raise ValueError(f"{checkpoint} is a training checkpoint without {', '.join(missing)}: it was cut short "
                         "or edited; use another checkpoint of the run")
    model = build_model(state["model_name"], state["num_classes"], state["model_kwargs"])
    try:
        model.load_state_dict(state["model"])
    except ValueError as e:
        raise ValueError(f"{checkpoint} does not fit {state['model_name']}(num_classes={state['num_classes']}, "
                         f"**{state['model_kwargs']}): it holds another architecture\n{e}") from None
    return model.to(device=device).eval(), state


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

def evaluate(model, dataset, out_dir=None, batch_size=1, progress=True, verbose=True):
    """Run ``model`` over ``dataset`` (a CocoDetection) and score it with COCOeval.

    One image at a time by default: a batch pads its images to the largest one, and the padding
    enters the statistics of a per-image normalisation (the shapes model's InstanceNorm2d), so
    an image would be scored differently beside another than alone, and than in training.

    Writes ``results.json`` and ``metrics.json`` into ``out_dir`` (when given) and returns
    ``{"bbox": {"AP": ..., ...}, "segm": {...}}``. The model's train/eval mode is restored.
    """
    from tqdm import tqdm

    from .evaluation import Evaluator

    was_training = model.training
    model.eval()
    evaluator = Evaluator(dataset)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    try:
        with no_grad():
            for images, targets in tqdm(loader, desc="evaluate", unit="batch", disable=not progress, leave=False):
                evaluator.update(targets, [{k: to_numpy(v) for k, v in out.items()} for out in model(images)])
    finally:
        model.train(was_training)
    return evaluator.summarize(out_dir=out_dir, verbose=verbose)


def predict_images(model, images, class_names, out_dir, names, score_threshold=0.5):
    """Run ``model`` on each (3, H, W) image and write ``<name>.png`` and ``<name>.json`` into
    ``out_dir`` (``save_prediction``); returns the list of written paths."""
    from .visualize import save_prediction

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    written = []
    try:
        with no_grad():
            for image, name in zip(images, names):
                prediction = {k: to_numpy(v) for k, v in model([image])[0].items()}
                written += save_prediction(image, prediction, class_names, out_dir / f"{name}.png",
                                           out_dir / f"{name}.json", score_threshold=score_threshold)
    finally:
        model.train(was_training)
    return written


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

def with_optimizer_defaults(config):
    """A copy of ``config`` whose lr and weight decay left None are its optimizer's defaults, and
    whose warmup left None is 50 iterations, or a quarter of a run shorter than 200 (so that
    ``--iterations 20`` works as typed)."""
    defaults = {name: value for name, value in OPTIMIZER_DEFAULTS[config.optimizer].items()
                if getattr(config, name) is None}
    if config.warmup_iters is None:
        defaults["warmup_iters"] = min(50, config.iterations // 4)
    return dataclasses.replace(config, **defaults)


def build_optimizer(params, config):
    """The optimizer ``config.optimizer`` names, with the config's settings (None: the defaults)."""
    config = with_optimizer_defaults(config)
    if config.optimizer == "sgd":
        return optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def processes(config):
    """How many processes share each batch: ``config.processes``, or when None 2 on a machine
    with 2 or more cores and a batch to split: small ops parallelise better across images than
    inside one (data_parallel.py)."""
    if config.processes is not None:
        return config.processes
    if config.device == "cuda":
        return 1  # one GPU, one process
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 2 if cores >= 2 and config.batch_size >= 2 else 1


def _scheduler(optimizer, config):
    if config.schedule == "cosine":
        return optim.WarmupCosineLR(optimizer, config.iterations, config.warmup_factor, config.warmup_iters)
    milestones = config.milestones or (2 * config.iterations // 3, 8 * config.iterations // 9)
    return optim.WarmupMultiStepLR(optimizer, milestones, config.gamma, config.warmup_factor, config.warmup_iters)


def _json_number(value):
    # JSON has no NaN: a statistic with nothing to measure (e.g. no positives) is written as null
    value = float(value)
    return value if math.isfinite(value) else None


def _append_jsonl(path, record):
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path, iteration):
    """Keep the lines up to ``iteration``: a resumed run re-does (and re-logs) the iterations
    after its checkpoint."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip() and json.loads(line).get("iteration", 0) <= iteration]
    text = "".join(line + "\n" for line in lines).encode("utf-8")
    atomic_write(path, lambda f: f.write(text))


def _forever(loader):
    """Batches across epochs; the loader's own state says where it is."""
    while True:
        yield from loader


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; training stopped before updating the parameters."""


def default_out_dir():
    """The run folder when none is given: runs/<date-time>."""
    return str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))


# the files a run folder's writers replace through files.atomic_write, whose temporary file beside
# each is the hidden .<name>.<random>.tmp
_RUN_FILES = (CHECKPOINT, "metrics.jsonl", "config.json", "metrics.json", "results.json")


def _remove_stale_temporaries(out_dir):
    """Delete the hidden ``.<file>...tmp`` files that a run killed while writing left behind
    (a checkpoint's can be 150 MB); an interrupted write that is not killed removes its own."""
    for name in _RUN_FILES:
        for tmp in out_dir.glob(f".{name}*.tmp"):
            tmp.unlink(missing_ok=True)


def _add_note(error, note):
    """``error.add_note(note)`` (Python 3.11+), or the same attribute on older versions, where
    the command line still prints it."""
    if hasattr(error, "add_note"):
        error.add_note(note)
    else:
        error.__notes__ = [*getattr(error, "__notes__", []), note]


def train(config, resume_command=None):
    """Train a Mask R-CNN as ``config`` (a TrainConfig) says; returns a dict with the run
    folder, the checkpoint path, the final COCO metrics (None without a val split) and the
    prediction pictures. See the module docstring for what the run folder holds.

    An error (or interruption) once a checkpoint of this run exists gets a note naming the
    checkpoint and how to continue: ``resume_command`` (the command line passes its own), else
    the TrainConfig fields to set."""
    from tqdm import tqdm

    config = dataclasses.replace(config)
    config.validate()
    if config.device == "cuda":  # before any work: one clear error where there is no GPU
        check_cuda()
        if processes(config) == 2:
            raise ValueError("processes=2 (data parallel) runs on CPU processes: use processes=1 with device='cuda'")
    config = with_optimizer_defaults(config)  # so config.json and the checkpoint say what was used
    if uses_shapes(config):
        config.model_kwargs = {**SHAPES_MODEL_DEFAULTS, **config.model_kwargs}
    out_dir = Path(config.out_dir or default_out_dir())
    checkpoint_path = out_dir / CHECKPOINT
    metrics_path = out_dir / "metrics.jsonl"
    if config.resume and not checkpoint_path.is_file():
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {checkpoint_path}")

    splits = resolve_data(config)
    train_set = CocoDetection(*splits["train"], skip_empty=True)
    val_set = CocoDetection(*splits["val"]) if "val" in splits else None
    check_datasets({"train": train_set, "val": val_set})  # every image file, before any work
    tm_random.manual_seed(config.seed)
    model = build_model(config.model, train_set.num_classes, config.model_kwargs)
    if config.weights and not config.resume:
        for line in weights.load_pretrained(model, config.weights):
            print(line)
    model.to(device=config.device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, config)
    # split in two, an epoch's last batch could be a single image: drop the remainder, as DDP's samplers do
    loader = DataLoader(train_set, config.batch_size, shuffle=True, seed=config.seed, drop_last=processes(config) == 2,
                        transforms=Compose([RandomHorizontalFlip(config.hflip), SanitizeTarget(drop=True)]))

    scheduler = _scheduler(optimizer, config)

    start = 0
    if config.resume:
        state = weights.load(checkpoint_path)
        try:
            model.load_state_dict(state["model"])
        except ValueError as e:
            raise ValueError(f"{checkpoint_path} was saved from another architecture than {config.model} "
                             f"with {config.model_kwargs}; resume with the run's own configuration\n{e}") from None
        # after the schedule is built: building it sets the lr of iteration 0, loading puts back the saved one
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        loader.load_state_dict(state["loader"])
        tm_random.set_state(state["rng"])
        start = int(state["iteration"])
    saved = {"iteration": start if config.resume else None}  # this run's checkpoint on disk

    def save_checkpoint(iteration):
        weights.save(checkpoint_path, {
            "format": CHECKPOINT_FORMAT, "model_name": config.model, "model_kwargs": config.model_kwargs,
            "num_classes": train_set.num_classes, "class_names": train_set.category_names,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "loader": loader.state_dict(), "rng": tm_random.get_state(), "iteration": iteration,
            "config": dataclasses.asdict(config)})
        saved["iteration"] = iteration

    def write_loss_curve():
        from .visualize import plot_losses

        plot_losses(metrics_path, out_dir / "losses.png")

    def run_evaluation(iteration, folder):
        metrics = evaluate(model, val_set, folder, progress=config.progress, verbose=False)
        _append_jsonl(metrics_path, {"iteration": iteration, "eval": metrics})
        return metrics

    def stop(iteration, what):
        where = f"last good checkpoint: {checkpoint_path}" if saved["iteration"] is not None else "no checkpoint yet"
        clip = config.clip_grad_norm
        tries = [f"a lower lr (peak {config.lr:g}, {optimizer.param_groups[0]['lr']:.3g} at this iteration)",
                 f"a longer warmup (warmup_iters {config.warmup_iters})",
                 f"a lower clip_grad_norm (gradients were clipped at norm {clip:g})" if clip else
                 "gradient clipping (clip_grad_norm, e.g. 10; it was off)"]
        raise NonFiniteLossError(f"iteration {iteration}: {what}; training stopped before the update ({where}). "
                                 f"Try {', '.join(tries[:-1])} or {tries[-1]}")

    batches = _forever(loader)
    recent = {"loss": [], "loss_mask": []}  # the last 20 values of what the progress bar shows
    build = (config.model, train_set.num_classes, config.model_kwargs)
    try:
        with DataParallel(model, build) if processes(config) == 2 else nullcontext() as parallel:
            # everything has loaded and the worker runs: only now is the run folder made or touched
            out_dir.mkdir(parents=True, exist_ok=True)
            _remove_stale_temporaries(out_dir)
            if config.resume:
                _truncate_metrics(metrics_path, start)
            elif metrics_path.exists():
                metrics_path.unlink()  # a fresh run in an old folder starts a fresh log
            write_json_atomic(dataclasses.asdict(config), out_dir / "config.json")
            bar = tqdm(range(start, config.iterations), desc="train", unit="it", disable=not config.progress,
                       initial=start, total=config.iterations)
            for it in bar:
                iteration = it + 1  # iterations completed once this one is done
                t0 = time.perf_counter()
                images, targets = next(batches)
                values, stats = parallel.step(images, targets) if parallel else forward_backward(model, images, targets)
                bad = [name for name, v in values.items() if not math.isfinite(v)]
                if bad:
                    stop(iteration, ", ".join(f"{n} = {values[n]}" for n in bad))
                norm = None
                if config.clip_grad_norm:
                    norm = optim.clip_grad_norm_(params, config.clip_grad_norm)
                    if not math.isfinite(norm):
                        stop(iteration, f"the gradient norm is {norm}")
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                record = {"iteration": iteration, **values, "loss": float(sum(values.values())),
                          **{k: _json_number(v) for k, v in stats.items()}, "grad_norm": norm, "lr": lr,
                          "time": time.perf_counter() - t0}
                _append_jsonl(metrics_path, record)
                for name, window in recent.items():
                    window.append(record[name])
                    del window[:-20]
                bar.set_postfix(loss=f"{np.mean(recent['loss']):.3f}", mask=f"{np.mean(recent['loss_mask']):.3f}",
                                lr=f"{lr:.2g}")
                if val_set is not None and config.eval_period and iteration % config.eval_period == 0 \
                        and iteration < config.iterations:
                    run_evaluation(iteration, out_dir / "eval" / f"iter_{iteration:06d}")
                if iteration == config.iterations or (config.checkpoint_period and iteration % config.checkpoint_period == 0):
                    save_checkpoint(iteration)
                    write_loss_curve()  # kept current, so a stopped run has its curve too
            bar.close()

        result = {"out_dir": str(out_dir), "checkpoint": str(checkpoint_path), "metrics_jsonl": str(metrics_path),
                  "loss_curve": str(out_dir / "losses.png"), "metrics": None, "predictions": []}
        if val_set is not None:
            result["metrics"] = run_evaluation(config.iterations, out_dir)
            result["metrics_json"] = str(out_dir / "metrics.json")
            picks = range(min(config.num_predictions, len(val_set)))
            samples = [val_set[i] for i in picks]
            result["predictions"] = predict_images(
                model, [image for image, _ in samples], val_set.category_names, out_dir / "predictions",
                [f"val_{target['image_id']:06d}" for _, target in samples])
    except BaseException as e:
        if saved["iteration"] is not None:
            how = resume_command or f"train() with resume=True, out_dir={str(out_dir)!r} and the same settings"
            _add_note(e, f"the run's last checkpoint is {checkpoint_path} (iteration {saved['iteration']}); "
                         f"continue from it with: {how}")
        raise
    return result
