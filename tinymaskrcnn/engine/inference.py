"""A model run over images: COCO evaluation of a dataset, and pictures of predictions."""
from pathlib import Path

from ..core.autograd import no_grad
from ..core.backend import to_numpy
from ..data import DataLoader


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
    from ..visualize import save_prediction

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
