"""A model run over images: COCO evaluation of a dataset, and pictures of predictions."""
from pathlib import Path

from ..core.autograd import no_grad
from ..core.backend import to_numpy
from ..core.files import write_json_atomic
from ..data import DataLoader
from ..data.annotations import mask_to_rle


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


def prediction_record(prediction, image_size, class_names, score_threshold=0.5, mask_threshold=0.5):
    """What ``predict`` writes for one image as JSON: the detections scoring at least
    ``score_threshold``, as ``boxes`` (xyxy pixels), ``labels``, ``names``
    (``class_names[label]``), ``scores`` and ``masks``, each the compressed COCO RLE of the mask
    binarised at ``mask_threshold`` (``pycocotools.mask.decode`` reads it back), with
    ``image_size`` [H, W] and both thresholds. The picture shows the same detections."""
    from ..visualize import class_name, select_detections

    height, width = (int(n) for n in image_size)
    boxes, labels, scores, masks = select_detections(prediction["boxes"], prediction.get("labels"),
                                                     prediction.get("scores"), prediction.get("masks"),
                                                     (height, width), score_threshold, mask_threshold)
    return {"image_size": [height, width], "score_threshold": score_threshold, "mask_threshold": mask_threshold,
            "boxes": boxes.tolist(),
            "labels": [] if labels is None else [int(v) for v in labels],
            "names": [] if labels is None else [class_name(int(v), class_names) for v in labels],
            "scores": [] if scores is None else scores.tolist(),
            "masks": [] if masks is None else [mask_to_rle(m) for m in masks]}


def predict_images(model, images, class_names, out_dir, names, score_threshold=0.5):
    """Run ``model`` on each (3, H, W) image and write ``<name>.png`` (``save_prediction``) and
    ``<name>.json`` (``prediction_record``) into ``out_dir``; returns the list of written paths."""
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
                record = prediction_record(prediction, image.shape[-2:], class_names, score_threshold)
                written += [save_prediction(image, prediction, class_names, out_dir / f"{name}.png",
                                            score_threshold=score_threshold),
                            write_json_atomic(record, out_dir / f"{name}.json")]
    finally:
        model.train(was_training)
    return written
