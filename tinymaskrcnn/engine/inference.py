"""A model run over images: COCO evaluation of a dataset, and pictures of predictions.

Memory is bounded by the image, not by what is found in it or how it is drawn: the model hands
back each mask as its M x M probabilities in its box (``paste_masks=False``), and the masks are
pasted into the full image one at a time, binarised and encoded (``ops.PastedMasks``);
pictures are drawn at a bounded size (``visualize.save_prediction``); evaluation reads the
images alone, not their ground-truth masks (COCOeval reads those from the annotation file).
"""
import math
from pathlib import Path

from ..core.autograd import no_grad
from ..core.backend import to_numpy
from ..core.files import write_json_atomic
from ..data.annotations import mask_to_rle
from ..ops.paste_masks import PastedMasks


def check_resizable(model, height, width, what):
    """Refuse an image that the model's transform would shrink to nothing: it resizes by
    min(min_size / short side, max_size / long side) and floors each side (models/transform.py),
    so a strip thin enough (20 x 5000 pixels with max_size 256, say) loses a side. The
    ValueError names ``what`` (the file), its size and what it would become."""
    transform = model.transform
    if transform.fixed_size is not None:
        return
    min_size = min(transform.min_size)  # training draws among the choices: the smallest shrinks most
    scale = min(min_size / min(height, width), transform.max_size / max(height, width))
    resized = (math.floor(height * scale), math.floor(width * scale))
    if min(resized) < 1:
        raise ValueError(f"{what} is {height}x{width} (HxW): the model resizes it to a short side of min_size "
                         f"{min_size} with the long side at most max_size {transform.max_size}, which leaves "
                         f"{resized[0]}x{resized[1]} pixels; crop it into less elongated pieces")


def check_dataset_resizable(model, dataset):
    """``check_resizable`` for every image of ``dataset`` (a CocoDetection), by the sizes its
    annotation file gives: before any work, without reading an image."""
    for image_id in dataset.ids:
        info = dataset.coco.imgs[image_id]
        check_resizable(model, info["height"], info["width"],
                        f"image {image_id} ({info['file_name']} of {dataset.ann_file})")


def detections(output, image_size, label_map=None):
    """One image's model output, taken with ``paste_masks=False``, as NumPy arrays whose masks
    are ``PastedMasks`` (pasted into the (H, W) ``image_size`` one at a time, when used) and
    whose labels, with ``label_map``, are ``label_map[label]``."""
    out = {k: to_numpy(v) for k, v in output.items()}
    if "masks" in out:
        out["masks"] = PastedMasks(out["masks"], out["boxes"], image_size)
    if label_map is not None:
        out["labels"] = label_map[out["labels"]]
    return out


def evaluate(model, dataset, out_dir=None, batch_size=1, progress=True, verbose=True, label_map=None):
    """Run ``model`` over ``dataset`` (a CocoDetection) and score it with COCOeval.

    One image at a time by default: a batch pads its images to the largest one, and the padding
    enters the statistics of a per-image normalisation (the shapes model's InstanceNorm2d), so
    an image would be scored differently beside another than alone, and than in training.
    ``label_map`` (an array, ``evaluation.category_mapping``) turns the model's labels into the
    data set's when their categories match by name only.

    Writes ``results.json`` and ``metrics.json`` into ``out_dir`` (when given) and returns
    ``{"bbox": {"AP": ..., ...}, "segm": {...}}``. The model's train/eval mode is restored.
    """
    from tqdm import tqdm

    from .evaluation import Evaluator

    was_training = model.training
    model.eval()
    evaluator = Evaluator(dataset)
    check_dataset_resizable(model, dataset)
    batches = [range(i, min(i + batch_size, len(dataset))) for i in range(0, len(dataset), batch_size)]
    try:
        with no_grad():
            for batch in tqdm(batches, desc="evaluate", unit="batch", disable=not progress, leave=False):
                images = [dataset.image(i) for i in batch]
                outputs = model(images, paste_masks=False)
                evaluator.update([{"image_id": dataset.ids[i]} for i in batch],
                                 [detections(out, image.shape[-2:], label_map) for out, image in zip(outputs, images)])
    finally:
        model.train(was_training)
    return evaluator.summarize(out_dir=out_dir, verbose=verbose)


def prediction_record(prediction, image_size, class_names, score_threshold=0.5, mask_threshold=0.5):
    """What ``predict`` writes for one image as JSON: the detections scoring at least
    ``score_threshold``, as ``boxes`` (xyxy pixels), ``labels``, ``names``
    (``class_names[label]``), ``scores`` and ``masks``, each the compressed COCO RLE of the mask
    binarised at ``mask_threshold`` (``pycocotools.mask.decode`` reads it back), with
    ``image_size`` [H, W] and both thresholds. The picture shows the same detections."""
    from ..visualize import binary_masks, class_name, select_detections

    height, width = (int(n) for n in image_size)
    boxes, labels, scores, masks = select_detections(prediction["boxes"], prediction.get("labels"),
                                                     prediction.get("scores"), prediction.get("masks"),
                                                     (height, width), score_threshold)
    return {"image_size": [height, width], "score_threshold": score_threshold, "mask_threshold": mask_threshold,
            "boxes": boxes.tolist(),
            "labels": [] if labels is None else [int(v) for v in labels],
            "names": [] if labels is None else [class_name(int(v), class_names) for v in labels],
            "scores": [] if scores is None else scores.tolist(),
            "masks": [] if masks is None else [mask_to_rle(m) for m in binary_masks(masks, mask_threshold)]}


def predict_images(model, images, class_names, out_dir, names, score_threshold=0.5):
    """Run ``model`` on each (3, H, W) image and write ``<name>.png`` (``save_prediction``) and
    ``<name>.json`` (``prediction_record``) into ``out_dir``; returns the list of written paths.
    An image the model would shrink to nothing is a ValueError (``check_resizable``) naming it."""
    from ..visualize import save_prediction

    if not 0 <= score_threshold <= 1:  # NaN too: nothing compares true with it
        raise ValueError(f"score_threshold={score_threshold!r}: expected a number from 0 to 1 (scores are "
                         "probabilities)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    written = []
    try:
        with no_grad():
            for image, name in zip(images, names):
                check_resizable(model, *image.shape[-2:], f"image {name}")
                prediction = detections(model([image], paste_masks=False)[0], image.shape[-2:])
                record = prediction_record(prediction, image.shape[-2:], class_names, score_threshold)
                written += [save_prediction(image, prediction, class_names, out_dir / f"{name}.png",
                                            score_threshold=score_threshold),
                            write_json_atomic(record, out_dir / f"{name}.json")]
    finally:
        model.train(was_training)
    return written
