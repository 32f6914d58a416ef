"""The ``tinymaskrcnn`` command line.

    tinymaskrcnn demo                      check every layer's gradients, train a small conv net
    tinymaskrcnn shapes                    write the synthetic shapes set (COCO format)
    tinymaskrcnn train                     train Mask R-CNN (no arguments: on the shapes set, CPU)
    tinymaskrcnn evaluate CHECKPOINT       COCO AP of a trained model on a val set
    tinymaskrcnn predict CHECKPOINT IMG... one PNG and one JSON of detections per image
    tinymaskrcnn coco-subset ANN OUT       a smaller COCO instances file (some images/categories)

Each subcommand has ``--help``. The work itself lives in ``tinymaskrcnn.engine`` and
``tinymaskrcnn.data`` (the demo's in ``demo.py``); this file only turns flags into their calls
and prints reports.
"""
import argparse
import gc
import hashlib
import json
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np

from .. import engine
from ..core.backend import CUDAUnavailableError
from ..core.random import manual_seed
from ..data import CocoDetection, coco_subset, ensure_shapes_dataset, image_paths, load_image
from ..data.shapes import SHAPES, classification_set
from ..engine import MODELS, OPTIMIZER_DEFAULTS, TrainConfig
from ..engine import data_parallel
from ..engine.data_parallel import MPIUnavailableError, RankFailedError
from . import demo


def demo_command(args):
    for flag in ("steps", "batch_size", "train_images", "test_images"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected a positive integer")
    if not (np.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr {args.lr}: expected a finite positive learning rate")
    if args.seed < 0:
        raise ValueError(f"--seed {args.seed}: expected 0 or more")
    print("tinymaskrcnn demo: hand-written gradients, then a small conv net on synthetic shapes\n")
    t0 = time.perf_counter()
    rows = demo.gradient_report()
    print(f"{'layer':36s} {'relative error vs finite differences':>36s}")
    for name, err in rows:
        print(f"{name:36s} {err:36.2e}")
    worst = max(e for _, e in rows)
    print(f"(float64, central differences; worst {worst:.1e}; {time.perf_counter() - t0:.1f} s)\n")
    if worst > 1e-6:
        print("error: a gradient disagrees with finite differences", file=sys.stderr)
        return 1

    manual_seed(args.seed)
    train_x, train_y = classification_set(args.train_images, 32, seed=args.seed)
    test_x, test_y = classification_set(args.test_images, 32, seed=args.seed + 1)
    model = demo.small_conv_net(num_classes=len(SHAPES))
    n_params = sum(p.size for p in model.parameters())
    print(f"training {n_params} parameters on {len(train_x)} images of {', '.join(SHAPES)} "
          f"({args.steps} steps, batch {args.batch_size}, float32)")
    t0 = time.perf_counter()
    losses = demo.train_classifier(model, train_x, train_y, args.steps, args.batch_size, args.lr, seed=args.seed)
    train_time = time.perf_counter() - t0
    accuracy = {split: demo.accuracy(model, x, y) for split, (x, y) in
                {"train": (train_x, train_y), "test": (test_x, test_y)}.items()}
    print("\nreport")
    print(f"  loss: first 20 steps {np.mean(losses[:20]):.3f} -> last 20 steps {np.mean(losses[-20:]):.3f}")
    print(f"  accuracy: train {accuracy['train']:.1%}, held-out {accuracy['test']:.1%} (chance {1 / len(SHAPES):.1%})")
    print(f"  time: {train_time:.1f} s ({1000 * train_time / args.steps:.0f} ms/step)")
    return 0


def _print_metrics(metrics):
    for iou_type, values in metrics.items():
        name = {"bbox": "box", "segm": "mask"}.get(iou_type, iou_type)
        print(f"  {name:4s} AP {values['AP']:.3f}   AP50 {values['AP50']:.3f}   AP75 {values['AP75']:.3f}")


def _config_from_args(args, recorded=None):
    """The TrainConfig the train flags ask for: each flag given, over ``recorded`` (the resumed
    run's configuration) when resuming, else over the defaults."""
    fields = {f for f in TrainConfig.__dataclass_fields__}
    values = {k: v for k, v in (recorded or {}).items() if k in fields}
    # --model-kwargs is JSON text: read below, over the recorded keywords
    values.update({k: v for k, v in vars(args).items() if k in fields - {"model_kwargs"} and v is not None})
    kwargs = dict(values.get("model_kwargs") or {})
    if args.model_kwargs:
        try:
            given = json.loads(args.model_kwargs)
        except json.JSONDecodeError as e:
            raise ValueError(f"--model-kwargs {args.model_kwargs!r:.80} is not JSON ({e}); "
                             "write e.g. '{\"fpn_channels\": 64}'") from None
        except RecursionError:
            raise ValueError("--model-kwargs nests lists or objects too deeply to read") from None
        if not isinstance(given, dict):
            raise ValueError(f"--model-kwargs must be a JSON object of keyword arguments, got {args.model_kwargs!r:.80}")
        kwargs.update(given)
    kwargs.update({k: getattr(args, k) for k in ("min_size", "max_size") if getattr(args, k) is not None})
    # JSON has no tuples; the model builders take tuples (e.g. anchor_sizes)
    values["model_kwargs"] = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    values["progress"] = not args.no_progress
    return TrainConfig(**values)


def _resume_command(args, out_dir):
    """The command line that continues this run exactly: its train flags as given (each flag's
    dest is its name), then --out-dir and --resume."""
    words = ["tinymaskrcnn", "train"]
    for name, value in vars(args).items():
        if name in ("command", "func", "out_dir", "resume", "overwrite") or value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        words += [flag] if value is True else [flag, str(value)]
    return shlex.join(words + ["--out-dir", str(out_dir), "--resume"])


def train_command(args):
    if args.resume and not args.out_dir:
        raise ValueError("--resume continues the run in a folder: name it with --out-dir (a run folder holding "
                         "checkpoint.npz)")
    if args.resume:  # the run's own settings are the base, and a flag given must agree with them
        recorded = engine.recorded_config(args.out_dir)
        config = _config_from_args(args, recorded)
        engine.check_resumable(Path(args.out_dir) / engine.CHECKPOINT, recorded, config)
    else:
        config = _config_from_args(args)
    config.out_dir = config.out_dir or engine.default_out_dir()  # named now, for the resume command
    t0 = time.perf_counter()
    result = engine.train(config, resume_command=_resume_command(args, config.out_dir))
    if result is None:  # a rank other than 0 under mpiexec: rank 0 reports
        return 0
    minutes = (time.perf_counter() - t0) / 60
    print(f"\nreport ({config.iterations} iterations, {minutes:.1f} min)")
    if result["metrics"] is not None:
        _print_metrics(result["metrics"])
    print(f"  run folder:  {result['out_dir']}")
    print(f"  checkpoint:  {result['checkpoint']}")
    print(f"  metrics:     {result['metrics_jsonl']}" + (f", {result['metrics_json']}" if result["metrics"] else ""))
    if "loss_curve" in result:
        print(f"  loss curve:  {result['loss_curve']}")
    if result["predictions"]:
        print(f"  predictions: {os.path.dirname(result['predictions'][0])} ({len(result['predictions']) // 2} images)")
    return 0


def _evaluation_folder(checkpoint, ann_file):
    """Where ``evaluate`` writes without --out-dir: beside the run's own files, in a folder named
    after the data (evaluate/<annotation file>-<hash of its path>/), so that evaluating other
    data never replaces the run's metrics.json and results.json."""
    ann_file = os.path.abspath(ann_file)
    tag = hashlib.sha1(ann_file.encode()).hexdigest()[:8]
    stem = os.path.splitext(os.path.basename(ann_file))[0]
    return os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "evaluate", f"{stem}-{tag}")


def _val_split(args, saved_config):
    """(ann_file, image_dir) to evaluate on: the flags, else the val split the run trained with
    (its shapes set looked up, never generated: evaluating creates nothing where a run's
    configuration points)."""
    if args.val_ann or args.val_images:
        if not (args.val_ann and args.val_images):
            raise ValueError("give --val-ann and --val-images together")
        return args.val_ann, args.val_images
    if args.data:
        splits = engine.coco_layout(args.data)
    else:
        if not isinstance(saved_config, dict):
            raise ValueError(f"{args.checkpoint} records no configuration to find the run's val split in: pass --data, "
                             "or --val-ann with --val-images")
        known = TrainConfig.__dataclass_fields__
        config = TrainConfig(**{k: v for k, v in saved_config.items() if k in known})
        try:
            splits = engine.resolve_data(config, create=False)
        except TypeError as e:  # a value of another type than training records (an edited file)
            raise ValueError(f"{args.checkpoint}: its recorded configuration does not name a val split ({e}): pass "
                             "--data, or --val-ann with --val-images") from None
        except FileNotFoundError as e:
            (height, width) = (list(map(str, side)) for side in config.shapes_size)
            command = shlex.join(["tinymaskrcnn", "shapes", "--root", str(config.shapes_root), "--num-train",
                                  str(config.shapes_train), "--num-val", str(config.shapes_val), "--height", *height,
                                  "--width", *width, "--seed", str(config.seed)])
            raise FileNotFoundError(f"the run's val split is not there: {e}; make it again with: {command}, "
                                    "or evaluate on other data (--data, or --val-ann with --val-images)") from None
    if "val" not in splits:
        raise ValueError("no val split to evaluate on: pass --val-ann and --val-images (or --data DIR)")
    return splits["val"]


def _check_writable(folder):
    """Fail now, not after the evaluation, when ``folder`` (or the folders it would be made in)
    cannot be written: a file is made and removed in its nearest existing ancestor."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise OSError(f"cannot write the evaluation into {folder} ({e.strerror or e}): choose a writable --out-dir") \
            from None


def evaluate_command(args):
    model, state = engine.load_model(args.checkpoint, device=args.device or "cpu")
    ann_file, image_dir = _val_split(args, state.get("config"))
    out_dir = args.out_dir or _evaluation_folder(args.checkpoint, ann_file)
    _check_writable(out_dir)
    dataset = CocoDetection(ann_file, image_dir)
    label_map = engine.category_mapping(state["class_names"], state.get("category_ids"), dataset, args.checkpoint)
    metrics = engine.evaluate(model, dataset, out_dir, progress=not args.no_progress, verbose=False,
                              label_map=label_map)
    print(f"evaluation of {args.checkpoint} on {len(dataset)} images")
    if label_map is not None:
        print("  " + engine.describe_mapping(label_map, state["class_names"], state.get("category_ids"), dataset))
    _print_metrics(metrics)
    print(f"  written: {os.path.join(out_dir, 'metrics.json')}, {os.path.join(out_dir, 'results.json')}")
    return 0


def predict_command(args):
    if not 0 <= args.score_threshold <= 1:  # NaN too
        raise ValueError(f"--score-threshold {args.score_threshold}: expected a number from 0 to 1 (scores are "
                         "probabilities)")
    paths = image_paths(args.images)  # folders expanded; a missing file fails before any work
    names = [p.stem for p in paths]
    if len(set(names)) != len(names):
        repeated = sorted({str(p) for p in paths if names.count(p.stem) > 1})
        raise ValueError(f"images {repeated} share a file name; their outputs would overwrite each other")
    out_dir = Path(args.out_dir)
    overwritten = {p.resolve() for p in paths} & {(out_dir / f"{n}.{ext}").resolve() for n in names
                                                    for ext in ("png", "json")}
    if overwritten:
        raise ValueError(f"the outputs in {out_dir} would overwrite the input images {sorted(map(str, overwritten))}: "
                         "choose another --out-dir")
    model, state = engine.load_model(args.checkpoint, device=args.device or "cpu")
    skipped = []
    for path, name in zip(paths, names):
        # the previous picture's matplotlib Figure (and the image copies it drew) sits in
        # reference cycles, which Python frees only when its cycle collector runs: memory does
        # not grow with the number of images
        gc.collect()
        try:
            image = load_image(path, upright=True)  # a phone's portrait photo as the user sees it
            engine.check_resizable(model, *image.shape[-2:], str(path))
            written = engine.predict_images(model, [image], state["class_names"], out_dir, [name],
                                            score_threshold=args.score_threshold)
        except (OSError, ValueError) as e:  # this image's (unreadable, too thin; the message names it)
            skipped.append(path)
            print(f"tinymaskrcnn predict: error: {e}", file=sys.stderr)
            continue
        for written_path in written:
            print(written_path)
    if skipped and len(paths) > 1:
        print(f"tinymaskrcnn predict: {len(skipped)} of {len(paths)} images skipped (the errors above); the others' "
              f"outputs are in {out_dir}", file=sys.stderr)
    return 2 if skipped else 0


def shapes_command(args):
    paths = ensure_shapes_dataset(args.root, num_train=args.num_train, num_val=args.num_val,
                                  image_size=(tuple(args.height), tuple(args.width)), seed=args.seed, progress=True)
    for split, (ann_file, image_dir) in paths.items():
        print(f"{split}: {ann_file} ({image_dir})")
    return 0


def coco_subset_command(args):
    categories = None
    if args.categories:
        categories = [int(c) if c.isdigit() else c for c in args.categories.split(",")]
    print(coco_subset(args.ann_file, args.out_file, args.num_images, categories, seed=args.seed))
    return 0


def _add_data_flags(p):
    p.add_argument("--data", help="a folder in COCO layout (annotations/instances_{train,val}.json + images/{train,val})")
    p.add_argument("--val-ann", help="COCO instances file of the val split")
    p.add_argument("--val-images", help="image folder of the val split")


def _add_device_flag(p):
    p.add_argument("--device", choices=("cpu", "cuda"), help="cuda: run on the GPU through CuPy and the "
                   "Numba-CUDA kernels (pip install 'tinymaskrcnn[gpu-cuda13]'); default cpu")


def build_parser():
    d = TrainConfig()

    def per_optimizer(name):
        return ", ".join(f"{settings[name]:g} with {opt}" for opt, settings in OPTIMIZER_DEFAULTS.items())
    parser = argparse.ArgumentParser(prog="tinymaskrcnn", description="Mask R-CNN from scratch in NumPy and Numba.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="check every layer's gradients and train a small conv net on synthetic shapes")
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--train-images", type=int, default=1024)
    p.add_argument("--test-images", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=demo_command)

    p = sub.add_parser("shapes", help="write the synthetic shapes data set in COCO format")
    p.add_argument("--root", default=d.shapes_root, help="the folder of shapes sets: each set of settings in a "
                   f"subfolder of its own, as train finds it with --shapes-root (default {d.shapes_root})")
    p.add_argument("--num-train", type=int, default=d.shapes_train)
    p.add_argument("--num-val", type=int, default=d.shapes_val)
    p.add_argument("--height", type=int, nargs=2, default=d.shapes_size[0], metavar=("MIN", "MAX"))
    p.add_argument("--width", type=int, nargs=2, default=d.shapes_size[1], metavar=("MIN", "MAX"))
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=shapes_command)

    p = sub.add_parser("train", help="train Mask R-CNN (no arguments: the shapes set on the CPU, ~15 min)",
                       description="Train Mask R-CNN. Without data flags the synthetic shapes set is generated "
                                   f"once under {d.shapes_root} and used.")
    _add_data_flags(p)
    p.add_argument("--train-ann", help="COCO instances file of the train split")
    p.add_argument("--train-images", help="image folder of the train split")
    p.add_argument("--shapes-root", help=f"where the shapes set is cached (default {d.shapes_root})")
    p.add_argument("--shapes-train", type=int, help=f"shapes training images (default {d.shapes_train})")
    p.add_argument("--shapes-val", type=int, help=f"shapes val images (default {d.shapes_val})")
    p.add_argument("--model", choices=MODELS, help=f"architecture (default {d.model})")
    p.add_argument("--min-size", type=int, help="short side the model resizes images to (model default if unset)")
    p.add_argument("--max-size", type=int, help="long side limit of the resize (model default if unset)")
    p.add_argument("--model-kwargs", help="more keyword arguments of the model builder, as a JSON object "
                                          "(e.g. '{\"fpn_channels\": 64, \"anchor_sizes\": [8, 16, 32, 64, 128]}')")
    p.add_argument("--weights", help="start from a torchvision detector .pth or a run's checkpoint.npz (heads "
                                     "that do not fit stay as built), or an ImageNet ResNet .pth for the backbone")
    p.add_argument("--iterations", type=int, help=f"training iterations (default {d.iterations})")
    p.add_argument("--batch-size", type=int, help=f"images per iteration, all processes together (default "
                   f"{d.batch_size})")
    p.add_argument("--processes", type=int, metavar="N", help="split each batch over N single-threaded processes "
                   "through MPI (data parallel; started here with mpiexec, or give the processes yourself: "
                   "mpiexec -n N -hosts a,b tinymaskrcnn train ... runs on several machines); default: under mpiexec "
                   "its number, else one per core up to --batch-size")
    p.add_argument("--optimizer", choices=tuple(OPTIMIZER_DEFAULTS), help=f"(default {d.optimizer})")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default: {per_optimizer('lr')})")
    p.add_argument("--momentum", type=float, help=f"SGD's momentum (default {d.momentum})")
    p.add_argument("--weight-decay", type=float, help=f"(default: {per_optimizer('weight_decay')})")
    p.add_argument("--warmup-iters", type=int, help="linear warmup length (default 50, or a quarter of a shorter run)")
    p.add_argument("--schedule", choices=("cosine", "step"), help=f"lr schedule after warmup (default {d.schedule})")
    p.add_argument("--clip-grad-norm", type=float, help=f"max gradient norm, 0 for no clipping (default "
                   f"{d.clip_grad_norm})")
    p.add_argument("--eval-period", type=int, help="evaluate every N iterations (default: only at the end)")
    p.add_argument("--checkpoint-period", type=int, help=f"checkpoint every N iterations (default {d.checkpoint_period})")
    p.add_argument("--num-predictions", type=int, help=f"val images drawn at the end (default {d.num_predictions})")
    p.add_argument("--seed", type=int, help=f"(default {d.seed})")
    p.add_argument("--out-dir", help="run folder (default runs/<timestamp>-<process id>)")
    p.add_argument("--resume", action="store_true", default=None, help="continue the run in --out-dir exactly, with "
                   "its recorded settings (flags that would change them are refused)")
    p.add_argument("--overwrite", action="store_true", default=None, help="--out-dir holds a run: delete its files and "
                   "start afresh (without this, or --resume, a folder holding a run is refused)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_device_flag(p)
    p.set_defaults(func=train_command)

    p = sub.add_parser("evaluate", help="COCO box and mask AP of a checkpoint on a val set")
    p.add_argument("checkpoint", help="a run's checkpoint.npz")
    _add_data_flags(p)
    p.add_argument("--out-dir", help="where metrics.json and results.json go (default: a folder named after the "
                                      "data under the run's evaluate/, never over the run's own files)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_device_flag(p)
    p.set_defaults(func=evaluate_command)

    p = sub.add_parser("predict", help="detect objects in images: one PNG and one JSON per image")
    p.add_argument("checkpoint", help="a run's checkpoint.npz")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...) or folders of them "
                                                                  "(every image file directly inside)")
    p.add_argument("--out-dir", default="predictions", help="where the PNG and JSON files go (default predictions/)")
    p.add_argument("--score-threshold", type=float, default=0.5, help="lowest score drawn and listed (default 0.5)")
    _add_device_flag(p)
    p.set_defaults(func=predict_command)

    p = sub.add_parser("coco-subset", help="write a COCO instances file with fewer images or categories")
    p.add_argument("ann_file", help="the COCO instances file to take from")
    p.add_argument("out_file", help="the file to write")
    p.add_argument("--num-images", type=int, help="how many images (default: all that show the categories)")
    p.add_argument("--categories", help="comma-separated names or ids (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=coco_subset_command)
    return parser


# what to try when memory runs out, by command
_MEMORY_ADVICE = {
    "train": "try smaller images (--min-size/--max-size), a smaller --batch-size, or fewer --processes "
             "(each holds a copy of the model and its activations)",
    "evaluate": "the model resizes images to the min_size/max_size it was trained with; close other programs "
                "or evaluate on a machine with more memory",
    "predict": "try smaller images or close other programs",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM (what `kill`, a job scheduler or a container's stop sends), raised where the
    program is, as Ctrl-C's KeyboardInterrupt is: atomic writes clean up and a stopped training
    names the checkpoint it can resume from."""


def _terminated(signum, frame):
    raise Terminated


def main(argv=None):
    args = build_parser().parse_args(argv)

    size = data_parallel.launched_size()
    # a rank of a job the user started with mpiexec: its messages say which, and its failure ends the job
    rank = f" (rank {os.environ.get('PMI_RANK', os.environ.get('OMPI_COMM_WORLD_RANK', '?'))} of {size})" \
        if size and size > 1 else ""

    def fail(message, error, code=2):
        # one line naming the file, key or flag and the fix (a traceback would only bury it), then
        # any notes (e.g. the checkpoint a stopped run can resume from)
        print(f"tinymaskrcnn {args.command}{rank}: {message}", file=sys.stderr)
        for note in getattr(error, "__notes__", ()):
            print(f"  {note}", file=sys.stderr)
        if rank:  # the other ranks wait for this one in a collective: MPI_Abort ends them all
            sys.stderr.flush()
            data_parallel.communicator().Abort(code)
        return code

    # only the main thread may set a handler; the previous one is put back (None, one set outside Python: the default)
    handles = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if handles else None
    try:
        return args.func(args)
    # errors a user can cause; a TypeError or the like is a bug in tinymaskrcnn and keeps its traceback
    except (ValueError, OSError, FloatingPointError, RankFailedError, MPIUnavailableError, CUDAUnavailableError) as e:
        return fail(f"error: {e}", e)
    except MemoryError as e:
        what = str(e) or "an allocation did not fit"  # NumPy's says what: its size, shape and dtype
        return fail(f"error: out of memory: {what}; "
                    f"{_MEMORY_ADVICE.get(args.command, 'close other programs or use smaller inputs')}", e)
    except Terminated as e:
        return fail("terminated (SIGTERM)", e, code=128 + signal.SIGTERM)
    except KeyboardInterrupt as e:
        return fail("interrupted", e, code=130)
    except Exception:
        if rank:  # a bug in one rank: its traceback, then the job ends rather than waits
            traceback.print_exc()
            sys.stderr.flush()
            data_parallel.communicator().Abort(1)
        raise
    finally:
        if handles:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
