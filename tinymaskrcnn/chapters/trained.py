"""The trained Mask R-CNN that the whole-model chapters (4, 11-14) show, and where it comes from.

The main job, `tinymaskrcnn train` with no arguments, trains `maskrcnn_resnet18_fpn` on the
shapes set (1900 iterations, 10 to 12 minutes on two cores) and leaves a run folder
`runs/<date-time>-<pid>/` with `checkpoint.npz`, `metrics.jsonl` (one record per iteration)
and `metrics.json` (the final COCOeval summary). `trained_model()` loads the newest such
folder of a shapes run, or the one `TINYMASKRCNN_TRAINED_RUN` names; in quick mode (the
tests, CI) it looks for none unless that variable is set, and builds the same model with
random weights. Either way its `title` says which the pictures show, so that no picture of
random weights can pass for a trained model's.

`departures()` lists where the shapes defaults leave the paper's and torchvision's settings,
with the values read from the code, so that the table chapter 11 prints cannot drift.
"""
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from . import QUICK

ROOT = Path(__file__).resolve().parents[2]   # the checkout: runs/ and data_cache/ sit beside notebooks/
RUN_VARIABLE = "TINYMASKRCNN_TRAINED_RUN"
MODEL = "maskrcnn_resnet18_fpn"
MAIN_JOB = "tinymaskrcnn train"
MAIN_JOB_MINUTES = 12      # docs/benchmarks.md: the default 1900 iterations, 2 MPI processes, 2-core VM (12.1 min)


@dataclass
class Trained:
    """A model for the chapters' pictures and what is known of its training.

    ``run`` is the run folder (None for random weights), ``iterations`` how many it was trained,
    ``metrics`` the final COCOeval summary ({"bbox": {...}, "segm": {...}}, None without a run)
    and ``title`` the words every picture of it carries.
    """
    model: object
    class_names: list
    run: Path
    iterations: int
    metrics: dict
    title: str

    @property
    def trained(self):
        return self.run is not None

    @property
    def metrics_jsonl(self):
        """The run's per-iteration records, or None for random weights."""
        return None if self.run is None else self.run / "metrics.jsonl"

    def mask_ap50(self):
        return None if self.metrics is None else self.metrics["segm"]["AP50"]


def _is_finished_shapes_run(folder):
    """A run folder whose training ended (metrics.json is written last) on the shapes set."""
    if not ((folder / "checkpoint.npz").is_file() and (folder / "metrics.json").is_file()):
        return False
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return config.get("train_ann") is None and config.get("data") is None and config.get("model") == MODEL


def find_run():
    """The run folder the chapters use: ``$TINYMASKRCNN_TRAINED_RUN`` when set (it must hold a
    finished run), else the newest finished shapes run under runs/, else None."""
    named = os.environ.get(RUN_VARIABLE)
    if named:
        folder = Path(named).expanduser()
        if not folder.is_absolute():
            folder = ROOT / folder
        if not _is_finished_shapes_run(folder):
            raise FileNotFoundError(f"{RUN_VARIABLE}={named}: {folder} does not hold a finished shapes run of {MODEL} "
                                    "(checkpoint.npz, config.json and metrics.json); train one with "
                                    f"`{MAIN_JOB} --out-dir {named}`")
        return folder
    runs = [f for f in (ROOT / "runs").glob("*") if f.is_dir() and _is_finished_shapes_run(f)]
    return max(runs, key=lambda f: (f / "metrics.json").stat().st_mtime) if runs else None


def shown_run():
    """The run folder whose model the chapters show: find_run()'s, except in quick mode without
    ``$TINYMASKRCNN_TRAINED_RUN`` (None: random weights)."""
    return find_run() if not QUICK or os.environ.get(RUN_VARIABLE) else None


def run_summary(run):
    """(iterations, final COCOeval metrics, title) of a finished run folder."""
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    iterations = int(config["iterations"])
    return iterations, metrics, f"trained, {iterations} iterations, mask AP50 {metrics['segm']['AP50']:.2f}"


def trained_model():
    """The trained model (see the module docstring), in eval mode; random weights, seeded, when
    there is no run to load or in quick mode without ``$TINYMASKRCNN_TRAINED_RUN``."""
    from ..core import random as tm_random
    from ..data.shapes import SHAPES
    from ..engine import build_model, load_model, shapes_model_defaults

    run = shown_run()
    if run is None:
        tm_random.manual_seed(0)
        names = ["__background__", *SHAPES]
        model = build_model(MODEL, len(names), shapes_model_defaults(MODEL)).eval()
        why = "quick mode" if QUICK else f"no trained run in {ROOT / 'runs'}: `{MAIN_JOB}` makes one"
        return Trained(model, names, None, 0, None, f"random weights ({why})")
    model, state = load_model(run / "checkpoint.npz")
    iterations, metrics, title = run_summary(run)
    print(f"the trained model of {run}: {title}")
    return Trained(model, list(state["class_names"]), run, iterations, metrics, title)


def ensure_trained_run():
    """The run folder find_run() gives, after training the main job into runs/chapters when
    there is none (``notebooks/build.py --full`` calls this before building)."""
    run = find_run()
    if run is not None:
        return run
    from ..engine import TrainConfig, train

    print(f"no finished shapes run under {ROOT / 'runs'}: training the main job first "
          f"(`{MAIN_JOB}`, about {MAIN_JOB_MINUTES} minutes on two cores)", flush=True)
    start = time.perf_counter()
    result = train(TrainConfig(out_dir=str(ROOT / "runs" / "chapters"), shapes_root=str(ROOT / "data_cache" / "shapes")))
    print(f"trained in {(time.perf_counter() - start) / 60:.1f} minutes: {result['out_dir']}", flush=True)
    return Path(result["out_dir"])


# Why each shapes default departs from the paper (He et al. 2017) and torchvision; the keys must
# be SHAPES_MODEL_DEFAULTS' own (departures() checks), so a new default cannot go unexplained.
_WHY = {
    "box_detections_per_img": "1-4 objects an image: 100 detections only slow the mask head and COCOeval",
    "mask_batch_size_per_image": "the RPN soon gives each object a dozen near-copies; 8 RoIs teach as much, for less time",
    "box_positive_fraction": "with 1-4 objects an image, more positives per batch let the classifier learn the classes sooner",
    "fpn_channels": "the FPN's and RPN's 3x3 convs at 256 channels would cost as much as half the ResNet-18",
    "norm": "trained from scratch on 1 image a process: each image is normalised by its own statistics, "
            "in training and inference alike",
}


def departures():
    """Rows (setting, shapes value, ResNet-18 builder default, torchvision's maskrcnn_resnet50_fpn
    value, why) for each SHAPES_MODEL_DEFAULTS entry, the values read from the code."""
    import inspect

    from ..engine import SHAPES_MODEL_DEFAULTS
    from ..models.backbone import resnet_fpn_backbone, resnet_fpn_extractor
    from ..models.registry import keywords
    from ..models.resnet import resnet18

    if set(_WHY) != set(SHAPES_MODEL_DEFAULTS):
        raise AssertionError(f"the departures table explains {sorted(_WHY)} but the shapes defaults are "
                             f"{sorted(SHAPES_MODEL_DEFAULTS)}: say why for each")
    ours, theirs = keywords(MODEL), keywords("maskrcnn_resnet50_fpn")
    # the two settings torchvision's builder does not take as keywords: its FPN width and norm layer
    norm_default = inspect.signature(resnet_fpn_backbone).parameters["norm_layer"].default
    fpn_width = resnet_fpn_extractor(resnet18(), trainable_layers=5).out_channels   # the same for any ResNet
    theirs = {**theirs, "fpn_channels": fpn_width, "norm": norm_default.__name__}

    def shown(key, value):
        if key == "mask_batch_size_per_image" and value is None:
            return "every positive RoI"
        return f"{value}"

    return [(key, shown(key, value), shown(key, ours[key]), shown(key, theirs[key]), _WHY[key])
            for key, value in SHAPES_MODEL_DEFAULTS.items()]


def departures_markdown():
    """departures() as a Markdown table (for IPython.display.Markdown)."""
    lines = ["| setting | shapes default | ResNet-18 builder | torchvision / paper | why |", "|---|---|---|---|---|"]
    lines += [f"| `{key}` | {a} | {b} | {c} | {why} |" for key, a, b, c, why in departures()]
    return "\n".join(lines)
