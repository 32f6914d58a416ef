"""A run's checkpoint and what resuming needs: saving the whole training state, checking that a
resume asks for the run as it was recorded, putting the state back, and loading the model a
run saved (its recorded architecture checked before anything is built)."""
import dataclasses
import json
from pathlib import Path

from ..core import random as tm_random
from .. import weights
from ..core.backend import check_cuda
from ..models.registry import build_model, check_architecture
from ..core.files import UnreadableFileError, atomic_write, brief, parse_json
from .run_folder import CHECKPOINT

CHECKPOINT_FORMAT = "tinymaskrcnn-train"
# what a resumed run may set differently from the run it continues: none of it changes what is computed
RESUME_MAY_CHANGE = ("out_dir", "resume", "overwrite", "progress")


def save_checkpoint(path, config, train_set, model, optimizer, scheduler, loader, iteration):
    """Write everything ``restore`` needs to continue after ``iteration`` bit for bit, and what
    ``load_model`` needs to rebuild the model, to ``path``."""
    weights.save(path, {
        "format": CHECKPOINT_FORMAT, "model_name": config.model, "model_kwargs": config.model_kwargs,
        "num_classes": train_set.num_classes, "class_names": train_set.category_names,
        "category_ids": train_set.category_ids,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "loader": loader.state_dict(), "rng": tm_random.get_state(), "iteration": iteration,
        "config": dataclasses.asdict(config)})


def _plain(value):
    """``value`` as JSON has it (tuples become lists), so that two configurations compare by content."""
    return json.loads(json.dumps(value))


def check_resumable(path, recorded, config):
    """Refuse to resume the run whose checkpoint at ``path`` recorded the configuration
    ``recorded`` (a dict) with a ``config`` (a TrainConfig) that differs from it in anything
    but RESUME_MAY_CHANGE: the resumed iterations would follow another schedule than
    config.json records, or the schedule recorded while the new one is written. The message
    names every differing setting with both values."""
    given, recorded = _plain(dataclasses.asdict(config)), _plain(recorded)
    changed = []
    for name in given:
        if name in recorded and name not in RESUME_MAY_CHANGE and given[name] != recorded[name]:
            if isinstance(given[name], dict) and isinstance(recorded[name], dict):  # model_kwargs: the keys that differ
                a, b = given[name], recorded[name]
                changed += [f"{name}.{key} {a.get(key)!r} (recorded: {b.get(key)!r})"
                            for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
            else:
                changed.append(f"{name} {given[name]!r} (recorded: {recorded[name]!r})")
    if changed:
        raise ValueError(f"{path}: a resumed run continues as it was recorded, but these settings differ: "
                         f"{'; '.join(changed)}. Resume without them (the command line reads the run's own settings "
                         "from its checkpoint, as engine.recorded_config does), or start a new run in another out_dir "
                         "(--out-dir) or over this one (--overwrite)")


def run_config(path, state):
    """The configuration (a dict of TrainConfig fields) recorded in the training checkpoint
    ``state`` read from ``path``."""
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a checkpoint written by training (no '{CHECKPOINT_FORMAT}' format tag): "
                         "resume a run folder that train wrote")
    if not isinstance(state.get("config"), dict):
        raise ValueError(f"{path} is a training checkpoint without its configuration: it was cut short or edited; "
                         "use another checkpoint of the run")
    return state["config"]


def recorded_config(out_dir):
    """The configuration (a dict of TrainConfig fields) recorded in ``out_dir``'s checkpoint."""
    path = Path(out_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"resume: there is no checkpoint at {path}; --out-dir names the run folder to continue")
    return run_config(path, weights.load(path))


def restore(path, state, config, model, optimizer, scheduler, loader):
    """Put back the ``state`` read from the checkpoint at ``path`` into the freshly built
    training objects; returns the iteration it was saved after."""
    try:
        model.load_state_dict(state["model"])
    except ValueError as e:
        raise ValueError(f"{path} was saved from another architecture than {config.model} "
                         f"with {config.model_kwargs}; resume with the run's own configuration\n{e}") from None
    # after the schedule is built: building it sets the lr of iteration 0, loading puts back the saved one
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    loader.load_state_dict(state["loader"])
    tm_random.set_state(state["rng"])
    return int(state["iteration"])


def _metrics_records(path):
    """The (line, record) pairs of the metrics log at ``path``, one at a time (a log's records
    together take tens of times its size), each record a JSON object with a numeric
    ``iteration`` (0 where absent). A last line cut short without its newline (a crash
    while it was appended) is left out; any other line that is not such a record is an
    UnreadableFileError naming the file and the line."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UnreadableFileError(f"{path} is not UTF-8 text ({e}): not a metrics log training wrote") from None
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = parse_json(line, path, f"line {number}")
        except UnreadableFileError:
            if number == len(lines):  # no newline after it: the append that a crash cut short
                break
            raise
        step = record.get("iteration", 0) if isinstance(record, dict) else None
        if not isinstance(step, (int, float)) or isinstance(step, bool):
            raise UnreadableFileError(f"{path}: line {number} is not a metrics record (a JSON object with a numeric "
                                      "'iteration'): the file was edited or is not a metrics log training wrote")
        yield line, record


def truncate_metrics(path, iteration, final_iteration):
    """Keep the lines up to ``iteration``: a resumed run re-does (and re-logs) the iterations
    after its checkpoint, and always the final evaluation (logged at ``final_iteration``)."""
    if not path.is_file():
        return

    def kept(record):
        if "eval" in record and record.get("iteration", 0) >= final_iteration:
            return False
        return record.get("iteration", 0) <= iteration

    text = "".join(line + "\n" for line, record in _metrics_records(path) if kept(record)).encode("utf-8")
    atomic_write(path, lambda f: f.write(text))


def load_model(checkpoint, device="cpu"):
    """The model saved in a training checkpoint, in eval mode on ``device``, and the checkpoint dict.

    Errors name the file: not a checkpoint, a checkpoint not written by ``train``, one whose
    recorded architecture is malformed or out of range (checked before anything is built, so a
    crafted file cannot make the model take gigabytes), or one whose arrays do not fit it."""
    if device == "cuda":
        check_cuda()
    state = weights.load(checkpoint)
    error = weights.CheckpointError
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise error(f"{checkpoint} is a tinymaskrcnn checkpoint but not one written by training "
                    f"(no '{CHECKPOINT_FORMAT}' format tag): pass the checkpoint.npz of a run folder")
    missing = [key for key in ("model_name", "num_classes", "model_kwargs", "model", "class_names") if key not in state]
    if missing:
        raise error(f"{checkpoint} is a training checkpoint without {', '.join(missing)}: it was cut short "
                    "or edited; use another checkpoint of the run")
    name, num_classes, kwargs, arrays = (state[k] for k in ("model_name", "num_classes", "model_kwargs", "model"))
    # a checkpoint holds its own weights: a path or name to load others from is not read from a file
    named = [k for k in ("weights", "weights_backbone") if isinstance(kwargs, dict) and kwargs.get(k) is not None]
    if named:
        raise error(f"{checkpoint} records model_kwargs {named} naming weights to load: a checkpoint carries its own "
                    "weights and names no other file; the file was edited")
    try:
        check_architecture(name, num_classes, kwargs)
    except ValueError as e:
        raise error(f"{checkpoint} records an architecture that cannot be built: {e}") from None
    names, ids = state["class_names"], state.get("category_ids")  # ids: recorded since issue 22
    if not (isinstance(names, list) and len(names) == num_classes and all(isinstance(n, str) for n in names)):
        raise error(f"{checkpoint}: class_names {brief(names)} is not a list of {num_classes} names "
                    "(background first), one per class of num_classes: the file was edited")
    if ids is not None and not (isinstance(ids, list) and len(ids) == num_classes - 1
                                and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
        raise error(f"{checkpoint}: category_ids {brief(ids)} is not a list of {num_classes - 1} integer "
                    "ids, one per class: the file was edited")
    # the class count fixes the predictors' shapes: a mismatch is refused before the heads are built
    scores = arrays.get("roi_heads.box_predictor.cls_score.weight") if isinstance(arrays, dict) else None
    if not hasattr(scores, "shape") or scores.shape[:1] != (num_classes,):
        raise error(f"{checkpoint} records num_classes={num_classes} but its box predictor "
                         f"(roi_heads.box_predictor.cls_score.weight) has shape {getattr(scores, 'shape', None)}: "
                         "the file was edited or cut short")
    model = build_model(name, num_classes, kwargs)
    try:
        model.load_state_dict(arrays)
    except ValueError as e:
        raise error(f"{checkpoint} does not fit {name}(num_classes={num_classes}, "
                         f"**{kwargs}): it holds another architecture\n{e}") from None
    return model.to(device=device).eval(), state
