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

Every setting is checked before any work, and the folder is made only once everything has
loaded (data, model, weights, the checkpoint to resume, the data-parallel ranks): a run that
cannot start leaves nothing behind. A folder that holds a run is never reused silently: a new
run there is refused unless it resumes the run (with the run's recorded settings: a resume
that asks for others is refused, so config.json always says what ran) or overwrites it
(deleting all of the old run's files); a lock file keeps a second training out of a folder in
use. Each start or resume removes the hidden temporary files of writes that a killed run left
half done.

The package in parts, each readable alone: ``config`` (TrainConfig, its defaults and what it
resolves to), ``run_folder`` (when a folder holds a run, its lock, clearing it),
``checkpoint`` (saving, checking a resume against, restoring and loading a run's state),
``inference`` (evaluation and prediction pictures, their memory bounded by the image),
``evaluation`` (COCOeval; a model's categories matched to the data's) and ``loop`` (``train``).
"""
from ..models.registry import MODELS, build_model
from .checkpoint import CHECKPOINT, CHECKPOINT_FORMAT, check_resumable, load_model, recorded_config
from .config import OPTIMIZER_DEFAULTS, SHAPES_MODEL_DEFAULTS, TrainConfig, coco_layout, default_out_dir, processes, resolve_data, shapes_model_defaults, with_optimizer_defaults
from .evaluation import category_mapping, describe_mapping
from .inference import check_resizable, evaluate, predict_images
from .run_folder import RUN_ENTRIES, RunLock, remove_stale_temporaries
from .loop import NonFiniteLossError, append_jsonl, build_optimizer, build_scheduler, train
