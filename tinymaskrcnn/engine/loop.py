"""The training loop: ``train(TrainConfig(...))`` builds the data, model, optimizer and schedule,
runs the iterations (logging, evaluating and checkpointing as it goes) and ends with COCO
evaluation and prediction pictures of the final model."""
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from .. import optim, weights
from ..core import random as tm_random
from ..core.backend import check_cuda
from ..models.registry import build_model
from ..data import CocoDetection, Compose, DataLoader, RandomHorizontalFlip, SanitizeTarget
from ..data.coco import check_datasets
from . import data_parallel
from .data_parallel import DataParallel, RankFailedError
from .step import forward_backward
from ..core.files import write_json_atomic
from .checkpoint import CHECKPOINT, check_resumable, restore, run_config, save_checkpoint, truncate_metrics
from .config import default_out_dir, processes, resolve_data, shapes_model_defaults, uses_shapes, with_optimizer_defaults
from .evaluation import category_mapping, describe_mapping
from .inference import check_dataset_resizable, evaluate, predict_images
from .run_folder import RunLock, check_entries, check_run_folder, clear_run, remove_stale_temporaries


def build_optimizer(params, config):
    """The optimizer ``config.optimizer`` names, with the config's settings (None: the defaults)."""
    config = with_optimizer_defaults(config)
    if config.optimizer == "sgd":
        return optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(optimizer, config):
    """The warmup then cosine or step schedule ``config.schedule`` names, over ``config.iterations``."""
    if config.schedule == "cosine":
        return optim.WarmupCosineLR(optimizer, config.iterations, config.warmup_factor, config.warmup_iters)
    milestones = config.milestones or (2 * config.iterations // 3, 8 * config.iterations // 9)
    return optim.WarmupMultiStepLR(optimizer, milestones, config.gamma, config.warmup_factor, config.warmup_iters)


def _json_number(value):
    # JSON has no NaN: a statistic with nothing to measure (e.g. no positives) is written as null
    value = float(value)
    return value if math.isfinite(value) else None


def append_jsonl(path, record):
    """Add ``record`` to the metrics log at ``path`` as one JSON line."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _forever(loader):
    """Batches across epochs; the loader's own state says where it is."""
    while True:
        yield from loader


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; training stopped before updating the parameters."""


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
    prediction pictures. See the package docstring (engine/__init__.py) for what the run folder holds.

    With ``processes`` N > 1 (the default on a machine with several cores) each batch is split
    over N processes (data_parallel.py): called outside MPI, ``train`` starts ``mpiexec -n N``
    with this same call in every rank and returns rank 0's result; under ``mpiexec`` (started by
    the user, e.g. across machines) it is one of the ranks: rank 0 writes the run folder and
    returns the result, the others return None.

    An error (or interruption) once a checkpoint of this run exists gets a note naming the
    checkpoint and how to continue: ``resume_command`` (the command line passes its own), else
    the TrainConfig fields to set."""
    return _train(config, resume_command)


def _train(config, resume_command=None, checked=False):
    """``train``; ``checked``: in a rank that ``_launch`` started, which checked the data and
    reported on it already."""
    from tqdm import tqdm

    config = dataclasses.replace(config)
    config.validate()
    if config.device == "cuda":  # before any work: one clear error where there is no GPU
        check_cuda()
    config = with_optimizer_defaults(config)  # so config.json and the checkpoint say what was used
    if uses_shapes(config):
        config.model_kwargs = {**shapes_model_defaults(config.model), **config.model_kwargs}
    size = data_parallel.launched_size()
    comm = data_parallel.communicator() if size is not None else None
    lead = comm is None or comm.Get_rank() == 0  # the process that writes the run folder
    config.out_dir = str(config.out_dir or default_out_dir())
    if comm is not None:  # rank 0's folder for every rank (a default name holds the process id)
        config.out_dir = comm.bcast(config.out_dir, root=0)
    out_dir = Path(config.out_dir)
    checkpoint_path = out_dir / CHECKPOINT
    metrics_path = out_dir / "metrics.jsonl"
    state = None
    if lead:
        check_run_folder(out_dir, config.resume, config.overwrite)
        if config.resume:
            state = weights.load(checkpoint_path)
            recorded = run_config(checkpoint_path, state)
            if config.processes is None and isinstance(recorded, dict):  # a resume runs on the run's processes
                config.processes = recorded.get("processes")
            check_resumable(checkpoint_path, recorded, config)
    if comm is not None:  # the other ranks take the checkpoint from rank 0: no shared folder needed
        state, config.processes = comm.bcast((state, config.processes) if lead else None, root=0)
    config.processes = processes(config)  # recorded, so that a resume splits its batches the same way
    if size is None and config.processes > 1:
        return _launch(config, resume_command)
    if size is not None and size != config.processes:
        raise ValueError(f"processes={config.processes} but mpiexec started {size} processes: give the same number "
                         f"(or leave processes unset under mpiexec)")
    if comm is not None:
        data_parallel.use_local_resources(comm, config.device)
        if not lead:
            config.progress = False

    if comm is not None and not lead:
        comm.Barrier()  # rank 0 makes the shapes set first: the ranks never write it at once
    train_set, val_set, label_map, model = _prepare(config, report=lead and not checked)
    if comm is not None and lead:
        comm.Barrier()
    if config.weights and not config.resume:
        for line in weights.load_pretrained(model, config.weights):
            if lead:
                print(line)
    model.to(device=config.device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, config)
    # split over N processes, an epoch's last batch could have fewer images: dropped, as DDP's samplers do
    loader = DataLoader(train_set, config.batch_size, shuffle=True, seed=config.seed, drop_last=config.processes > 1,
                        transforms=Compose([RandomHorizontalFlip(config.hflip), SanitizeTarget(drop=True)]))

    scheduler = build_scheduler(optimizer, config)

    start = 0
    if config.resume:
        start = restore(checkpoint_path, state, config, model, optimizer, scheduler, loader)
        del state  # the arrays are in the model and optimizer now
    saved = {"iteration": start if config.resume else None}  # this run's checkpoint on disk

    def checkpoint(iteration):
        save_checkpoint(checkpoint_path, config, train_set, model, optimizer, scheduler, loader, iteration)
        saved["iteration"] = iteration

    def write_loss_curve():
        from ..visualize import plot_losses

        plot_losses(metrics_path, out_dir / "losses.png")

    def run_evaluation(iteration, folder):
        if not lead:
            return None
        metrics = evaluate(model, val_set, folder, progress=config.progress, verbose=False, label_map=label_map)
        append_jsonl(metrics_path, {"iteration": iteration, "eval": metrics})
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
    lock = RunLock(out_dir)
    parallel = DataParallel(model, comm) if comm is not None else None
    try:
        if lead:
            # everything has loaded: only now is the run folder made or touched
            out_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire()
            # under the lock, again: another process may have finished a run here meanwhile
            check_entries(out_dir, config.resume, config.overwrite)
            if config.overwrite:
                clear_run(out_dir)  # all of the old run: no picture or metric of it is left to mislead
            remove_stale_temporaries(out_dir)
            if config.resume:
                truncate_metrics(metrics_path, start, config.iterations)
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
            if lead:
                append_jsonl(metrics_path, record)
            for name, window in recent.items():
                window.append(record[name])
                del window[:-20]
            bar.set_postfix(loss=f"{np.mean(recent['loss']):.3f}", mask=f"{np.mean(recent['loss_mask']):.3f}",
                            lr=f"{lr:.2g}")
            if val_set is not None and config.eval_period and iteration % config.eval_period == 0 \
                    and iteration < config.iterations:
                run_evaluation(iteration, out_dir / "eval" / f"iter_{iteration:06d}")
                data_parallel.idle_barrier(comm)  # the other ranks sleep meanwhile, not spin
            if lead and (iteration == config.iterations or (config.checkpoint_period and
                                                            iteration % config.checkpoint_period == 0)):
                checkpoint(iteration)
                write_loss_curve()  # kept current, so a stopped run has its curve too
        bar.close()
        if not lead:
            data_parallel.idle_barrier(comm)  # until rank 0 has evaluated and drawn
            return None

        result = {"out_dir": str(out_dir), "checkpoint": str(checkpoint_path), "metrics_jsonl": str(metrics_path),
                  "loss_curve": str(out_dir / "losses.png"), "metrics": None, "predictions": []}
        if val_set is not None:
            result["metrics"] = run_evaluation(config.iterations, out_dir)
            result["metrics_json"] = str(out_dir / "metrics.json")
            picks = range(min(config.num_predictions, len(val_set)))
            samples = [val_set[i] for i in picks]
            result["predictions"] = predict_images(  # named by the model's own categories, the train set's
                model, [image for image, _ in samples], train_set.category_names, out_dir / "predictions",
                [f"val_{target['image_id']:06d}" for _, target in samples])
        data_parallel.idle_barrier(comm)
    except BaseException as e:
        if saved["iteration"] is not None:
            how = resume_command or f"train() with resume=True, out_dir={str(out_dir)!r} and the same settings"
            _add_note(e, f"the run's last checkpoint is {checkpoint_path} (iteration {saved['iteration']}); "
                         f"continue from it with: {how}")
        raise
    finally:
        lock.release()
    return result


def _prepare(config, report):
    """The data (made if it is the shapes set), checked, and the model built: (train set, val set,
    label map, model). ``report``: print how the val set's categories map to the model's."""
    splits = resolve_data(config)
    train_set = CocoDetection(*splits["train"], skip_empty=True)
    val_set = CocoDetection(*splits["val"]) if "val" in splits else None
    check_datasets({"train": train_set, "val": val_set})  # every image file, before any work
    label_map = _check_splits(train_set, val_set, config, report)
    tm_random.manual_seed(config.seed)
    model = build_model(config.model, train_set.num_classes, config.model_kwargs)
    for dataset in filter(None, (train_set, val_set)):
        check_dataset_resizable(model, dataset)
    return train_set, val_set, label_map, model


def _launch(config, resume_command):
    """``train(config)`` on ``config.processes`` MPI ranks started here (data_parallel.launch);
    what can be checked is checked before they start, and the shapes set is made here, once."""
    data_parallel.mpiexec()  # MPI is there, before any work
    data_parallel.communicator()
    _prepare(config, report=True)  # a mistake in the data is one line from here, not from a rank
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    started = time.time()
    try:
        return data_parallel.launch(_train, (config, resume_command, True), config.processes,
                                    threads=max(1, cores // config.processes))
    except RankFailedError as e:
        checkpoint_path = Path(config.out_dir) / CHECKPOINT
        # this run's checkpoint: the one it resumed from, or one it wrote
        if checkpoint_path.is_file() and (config.resume or checkpoint_path.stat().st_mtime >= started):
            iteration = weights.load(checkpoint_path)["iteration"]
            how = resume_command or f"train() with resume=True, out_dir={config.out_dir!r} and the same settings"
            raise RankFailedError(f"{e}; the run's last checkpoint is {checkpoint_path} (iteration {iteration}); "
                                  f"continue from it with: {how}") from None
        raise


def _check_splits(train_set, val_set, config, report=True):
    """Before any work: a train set with images to train on (enough for a batch split in two
    processes) and a val set with images, whose categories are the train set's. Returns the
    label map of ``evaluation.category_mapping`` (None: the same categories)."""
    if len(train_set) == 0:
        raise ValueError(f"the train set {train_set.ann_file} has no image with an object to train on")
    if config.processes > 1 and len(train_set) < config.batch_size:
        raise ValueError(f"the train set {train_set.ann_file} has {len(train_set)} images with objects, fewer than "
                         f"batch_size={config.batch_size}: with processes={config.processes} an epoch drops its "
                         "incomplete batch, so no batch would be left; use a smaller batch_size or processes=1")
    if val_set is None:
        return None
    if len(val_set) == 0:
        raise ValueError(f"the val set {val_set.ann_file} has no images: the run ends evaluating on it; give a val "
                         "set with images (or none)")
    label_map = category_mapping(train_set.category_names, train_set.category_ids, val_set,
                                 f"the model (the train set {train_set.ann_file})")
    if label_map is not None and report:
        print(describe_mapping(label_map, train_set.category_names, train_set.category_ids, val_set))
    return label_map
