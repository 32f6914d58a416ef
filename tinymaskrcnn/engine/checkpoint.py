"""A run's checkpoint and what resuming needs: saving the whole training state, putting it back,
loading the model a run saved, and clearing what a killed run left half written."""
import dataclasses
import json

from ..core import random as tm_random
from .. import weights
from ..core.backend import check_cuda
from ..models.registry import build_model
from ..core.files import atomic_write

CHECKPOINT = "checkpoint.npz"
CHECKPOINT_FORMAT = "tinymaskrcnn-train"


def save_checkpoint(path, config, train_set, model, optimizer, scheduler, loader, iteration):
    """Write everything ``restore`` needs to continue after ``iteration`` bit for bit, and what
    ``load_model`` needs to rebuild the model, to ``path``."""
    weights.save(path, {
        "format": CHECKPOINT_FORMAT, "model_name": config.model, "model_kwargs": config.model_kwargs,
        "num_classes": train_set.num_classes, "class_names": train_set.category_names,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "loader": loader.state_dict(), "rng": tm_random.get_state(), "iteration": iteration,
        "config": dataclasses.asdict(config)})


def restore(path, config, model, optimizer, scheduler, loader):
    """Put back the state saved at ``path`` into the freshly built training objects; returns the
    iteration it was saved after."""
    state = weights.load(path)
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


def truncate_metrics(path, iteration, final_iteration):
    """Keep the lines up to ``iteration``: a resumed run re-does (and re-logs) the iterations
    after its checkpoint, and always the final evaluation (logged at ``final_iteration``)."""
    if not path.is_file():
        return

    def kept(record):
        if "eval" in record and record.get("iteration", 0) >= final_iteration:
            return False
        return record.get("iteration", 0) <= iteration

    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and kept(json.loads(line))]
    text = "".join(line + "\n" for line in lines).encode("utf-8")
    atomic_write(path, lambda f: f.write(text))


# the files a run folder's writers replace through files.atomic_write, whose temporary file beside
# each is the hidden .<name>.<random>.tmp
RUN_FILES = (CHECKPOINT, "metrics.jsonl", "config.json", "metrics.json", "results.json")


def remove_stale_temporaries(out_dir):
    """Delete the hidden ``.<file>...tmp`` files that a run killed while writing left behind
    (a checkpoint's can be 150 MB); an interrupted write that is not killed removes its own."""
    for name in RUN_FILES:
        for tmp in out_dir.glob(f".{name}*.tmp"):
            tmp.unlink(missing_ok=True)


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
