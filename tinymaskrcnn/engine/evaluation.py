"""COCO evaluation of the model's detections with the official tools (pycocotools' COCOeval).

The model answers each image with ``boxes`` (N, 4) xyxy pixels, contiguous ``labels`` 1..C,
``scores`` and ``masks`` (N, 1, H, W) probabilities. COCOeval wants something else: one dict
per detection with the original category id, an xywh box and a compressed-RLE mask. The steps:

    predictions ──coco_results──▶ result dicts ──evaluate_coco──▶ {"bbox": {"AP": ...}, "segm": ...}

``Evaluator`` does the same batch by batch inside an evaluation loop, keeping only the small
RLE results (not the full-size masks) between batches.

The twelve numbers per IoU type are COCO's standard summary: AP averaged over IoU 0.50:0.95,
AP at IoU 0.50 and 0.75, AP for small / medium / large objects (area under 32², up to 96²,
above), then AR with at most 1, 10 and 100 detections per image and AR by size. pycocotools
reports -1 for a number with nothing to measure (for example APl when no object is large).
"""
import contextlib
import copy
import io
import warnings
from pathlib import Path

import numpy as np

from ..core.backend import to_numpy
from ..data.coco import load_instances, pycocotools_index
from ..core.files import write_json_atomic
from ..ops.paste_masks import PastedMasks

IOU_TYPES = ("bbox", "segm")
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


# ---------------------------------------------------------------------------------------------
# Predictions to COCO result dicts
# ---------------------------------------------------------------------------------------------

def _checked_prediction(image_id, prediction, coco_gt, needs_masks):
    """The prediction for ``image_id`` as NumPy arrays, checked against the ground truth's
    image list and image size (a wrongly sized mask would be scored against the wrong pixels)."""
    where = f"prediction for image_id {image_id!r}"
    if image_id not in coco_gt.imgs:
        raise ValueError(f"{where}: no such image in the ground truth (its image ids run "
                         f"{min(coco_gt.imgs, default=None)}..{max(coco_gt.imgs, default=None)}); "
                         "use the image_id of the target the prediction was made for")
    if not isinstance(prediction, dict):
        raise TypeError(f"{where}: expected a dict with boxes, labels, scores (and masks), "
                        f"got {type(prediction).__name__}")
    required = ("boxes", "labels", "scores") + (("masks",) if needs_masks else ())
    missing = [k for k in required if k not in prediction]
    if missing:
        hint = " (mask AP needs masks: evaluate iou_types=('bbox',) for a box-only model)" if "masks" in missing else ""
        raise ValueError(f"{where} lacks {missing}; it has {sorted(prediction)}{hint}")
    # PastedMasks stay as they are: each mask is pasted when its RLE is made (to_coco_results)
    out = {k: v if isinstance(v, PastedMasks) else to_numpy(v) for k, v in prediction.items()
           if k in ("boxes", "labels", "scores", "masks")}
    n = out["scores"].shape[0] if out["scores"].ndim == 1 else None
    if n is None or out["boxes"].shape != (n, 4) or out["labels"].shape != (n,):
        raise ValueError(f"{where}: expected boxes (N, 4), labels (N,) and scores (N,), got "
                         f"{out['boxes'].shape}, {out['labels'].shape} and {out['scores'].shape}")
    if not (np.isfinite(out["boxes"]).all() and np.isfinite(out["scores"]).all()):
        raise ValueError(f"{where}: boxes or scores hold NaN or inf (did training diverge?)")
    if "masks" in out:
        info = coco_gt.imgs[image_id]
        size = (info["height"], info["width"])
        masks = out["masks"]
        if tuple(masks.shape) not in ((n, 1) + size, (n,) + size):
            raise ValueError(f"{where}: masks have shape {masks.shape} but image {image_id} is {size[0]}x{size[1]} "
                             f"(HxW): expected ({n}, 1, {size[0]}, {size[1]}); masks must be pasted at the "
                             "original image size, as the model's eval-mode output is")
    return out


def _coco_index_of(dataset):
    """The pycocotools index of a CocoDetection (which also holds the label mapping)."""
    if not (hasattr(dataset, "coco") and hasattr(dataset, "to_coco_results")):
        raise TypeError(f"dataset must be a tinymaskrcnn.data.CocoDetection (it maps labels back to COCO "
                        f"category ids), got {type(dataset).__name__}")
    return dataset.coco


def coco_results(predictions_by_image_id, dataset, mask_threshold=0.5):
    """COCO result dicts for ``{image_id: prediction}``, ready for ``evaluate_coco`` or a JSON file.

    Each detection becomes ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` and,
    when the prediction has ``masks``, ``"segmentation"``: the mask binarised at
    ``mask_threshold`` as compressed RLE with ``counts`` a str (JSON has no bytes). Labels
    are mapped back to the data set's category ids by ``CocoDetection.to_coco_results``.
    """
    coco_gt = _coco_index_of(dataset)
    if not isinstance(predictions_by_image_id, dict):
        raise TypeError("predictions_by_image_id must be a dict {image_id: prediction}, got "
                        f"{type(predictions_by_image_id).__name__}")
    results = []
    for image_id, prediction in predictions_by_image_id.items():
        prediction = _checked_prediction(image_id, prediction, coco_gt, needs_masks=False)
        results += dataset.to_coco_results(image_id, prediction, mask_threshold=mask_threshold)
    return results


def _listing(ids, names, limit=12):
    entries = [name if i is None else f"{i} {name}" for i, name in zip(ids or [None] * len(names), names)]
    more = f", ... ({len(entries)} in all)" if len(entries) > limit else ""
    return "[" + ", ".join(entries[:limit]) + more + "]"


def category_mapping(class_names, category_ids, dataset, source):
    """How a model's labels map to ``dataset``'s (a CocoDetection), from the ``class_names``
    (background first) and ``category_ids`` it was trained with (None when its checkpoint did
    not record them); ``source`` names the model in messages.

    None when the categories are the same (same names in the same order, same ids or none
    recorded): its labels are the data set's. An array ``label_map`` when the names are the data
    set's in another order or under other ids: ``label_map[label]`` is the data set's label of
    the same name. Anything else (a name that differs, a repeated one) is a ValueError showing
    both lists: labels scored against other categories give wrong numbers without a word.
    """
    names, data_names = list(class_names[1:]), dataset.category_names[1:]
    if names == data_names and (category_ids is None or list(category_ids) == dataset.category_ids):
        return None
    if sorted(names) == sorted(data_names) and len(set(names)) == len(names):
        label_of = {name: label for label, name in enumerate(data_names, start=1)}
        return np.array([0] + [label_of[name] for name in names], dtype=np.int64)
    raise ValueError(f"{source} was trained on the categories {_listing(category_ids, names)} but "
                     f"{dataset.ann_file} has {_listing(dataset.category_ids, data_names)}: evaluate on data with "
                     "the categories it was trained on")


def describe_mapping(label_map, class_names, category_ids, dataset):
    """One line saying how ``category_mapping``'s ``label_map`` matched the model's categories
    to the data set's: each name with the model's id and the data set's."""
    ids = category_ids or [None] * (len(class_names) - 1)
    pairs = [f"{name} ({'' if i is None else f'{i} '}-> {dataset.category_ids[label_map[label] - 1]})"
             for label, (i, name) in enumerate(zip(ids, class_names[1:]), start=1)]
    return "categories matched by name, not by id (model -> data): " + ", ".join(pairs)


# ---------------------------------------------------------------------------------------------
# COCOeval
# ---------------------------------------------------------------------------------------------

def _ground_truth(coco_gt):
    """A pycocotools COCO of its own from a COCO object, a CocoDetection or an annotation file
    path. COCOeval rewrites ground-truth annotations in place (polygons become RLE, flags are
    added), so a caller's object is copied rather than handed over."""
    from pycocotools.coco import COCO

    if isinstance(coco_gt, (str, Path)):
        return pycocotools_index(load_instances(coco_gt))
    if hasattr(coco_gt, "coco"):
        coco_gt = coco_gt.coco
    if isinstance(coco_gt, COCO):
        return pycocotools_index(copy.deepcopy(coco_gt.dataset))
    raise TypeError(f"coco_gt must be a pycocotools COCO, a CocoDetection or the path of a COCO instances file, "
                    f"got {type(coco_gt).__name__}")


# Only these fields go to COCOeval, per IoU type: loadRes fills in the rest from them. A
# segm result keeps no bbox, so its area (which sorts it into small/medium/large) is the
# mask's area, as for the ground truth, not the box's.
_RESULT_FIELDS = {"bbox": ("image_id", "category_id", "bbox", "score"),
                  "segm": ("image_id", "category_id", "segmentation", "score")}


def _checked_iou_types(iou_types):
    iou_types = (iou_types,) if isinstance(iou_types, str) else tuple(iou_types)
    if not iou_types or any(t not in IOU_TYPES for t in iou_types):
        raise ValueError(f"iou_types={iou_types!r}: choose from {IOU_TYPES}")
    return iou_types


def _check_results(results, coco_gt, iou_types):
    if not isinstance(results, list):
        raise TypeError(f"results must be a list of COCO result dicts (see coco_results), got {type(results).__name__}")
    known_images, known_categories = set(coco_gt.imgs), set(coco_gt.cats)
    needed = {f for t in iou_types for f in _RESULT_FIELDS[t]}
    for n, r in enumerate(results):
        missing = sorted(needed - set(r)) if isinstance(r, dict) else sorted(needed)
        if missing:
            hint = " (boxes only? pass iou_types=('bbox',))" if missing == ["segmentation"] else ""
            raise ValueError(f"result number {n} lacks {missing}{hint}")
        if r["image_id"] not in known_images:
            raise ValueError(f"result number {n} has image_id {r['image_id']!r}, which is not in the ground truth")
        if r["category_id"] not in known_categories:
            raise ValueError(f"result number {n} has category_id {r['category_id']!r}, not one of the ground "
                             f"truth's {sorted(known_categories)}: map contiguous labels back with coco_results")


def _detections(coco_gt, results, iou_type):
    """The results as a pycocotools COCO object; an empty one when there are none (loadRes
    cannot take an empty list), so COCOeval scores every ground-truth object as missed."""
    from pycocotools.coco import COCO

    fields = _RESULT_FIELDS[iou_type]
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            # fresh dicts: loadRes adds area, id and (for boxes) a polygon to what it is given
            return coco_gt.loadRes([{f: r[f] for f in fields} for r in results])
        empty = COCO()
        empty.dataset = {"images": list(coco_gt.dataset["images"]),
                         "categories": list(coco_gt.dataset["categories"]), "annotations": []}
        empty.createIndex()
        return empty


def evaluate_coco(results, coco_gt, iou_types=IOU_TYPES, out_dir=None, image_ids=None, verbose=True):
    """Run COCOeval on ``results`` for each IoU type; returns ``{iou_type: {metric: value}}``.

    ``results``: COCO result dicts (``coco_results``). ``coco_gt``: a pycocotools COCO, a
    CocoDetection or the path of the instances file. ``image_ids``: the images evaluated
    (default: every image of the ground truth, so an image without results counts as all
    missed). With ``verbose`` the standard twelve-line summary is printed per type. With
    ``out_dir``, ``results.json`` and ``metrics.json`` are written there atomically. No
    results at all is allowed: every metric is then 0 (or -1 where nothing is measured).
    """
    from pycocotools.cocoeval import COCOeval

    iou_types = _checked_iou_types(iou_types)
    coco_gt = _ground_truth(coco_gt)
    _check_results(results, coco_gt, iou_types)
    if image_ids is not None:
        image_ids = sorted(int(i) for i in image_ids)
        unknown_ids = sorted(set(image_ids) - set(coco_gt.imgs))
        if unknown_ids:
            raise ValueError(f"image_ids {unknown_ids[:5]} are not in the ground truth")
    if not results:
        warnings.warn("evaluate_coco: no detections at all; every ground-truth object counts as missed, "
                      "so the metrics are 0 (or -1 where there is nothing to measure)")
    metrics = {}
    for iou_type in iou_types:
        evaluator = COCOeval(coco_gt, _detections(coco_gt, results, iou_type), iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = image_ids
        summary = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' progress lines
            evaluator.evaluate()
            evaluator.accumulate()
        with contextlib.redirect_stdout(summary):
            evaluator.summarize()
        if verbose:
            print(f"IoU metric: {iou_type}\n{summary.getvalue()}", end="")
        metrics[iou_type] = {name: float(v) for name, v in zip(METRIC_NAMES, evaluator.stats)}
    if out_dir is not None:
        write_json_atomic(results, Path(out_dir) / "results.json")
        write_json_atomic(metrics, Path(out_dir) / "metrics.json")
    return metrics


class Evaluator:
    """COCO evaluation accumulated over an evaluation loop.

    >>> evaluator = Evaluator(val_set)
    >>> for images, targets in loader:
    ...     evaluator.update(targets, model(images))
    >>> metrics = evaluator.summarize(out_dir="runs/eval")

    Only the images passed to ``update`` are evaluated (so evaluating part of a data set
    scores that part). Each batch is turned into RLE results at once; the masks are not kept.
    """

    def __init__(self, dataset, iou_types=IOU_TYPES, mask_threshold=0.5):
        self.coco_gt = _coco_index_of(dataset)
        self.dataset = dataset
        self.iou_types = _checked_iou_types(iou_types)
        self.mask_threshold = mask_threshold
        self.results, self.image_ids = [], set()

    def update(self, targets, predictions):
        """Add one batch: ``targets`` (each with ``image_id``) and the model's ``predictions``,
        in the same order."""
        if isinstance(targets, dict) or isinstance(predictions, dict):
            raise TypeError("update takes lists (one dict per image) of targets and predictions; "
                            "wrap a single image's dicts in lists")
        targets, predictions = list(targets), list(predictions)
        if len(targets) != len(predictions):
            raise ValueError(f"update got {len(targets)} targets but {len(predictions)} predictions: "
                             "pass one prediction per target, in the same order")
        batch = {}
        for target, prediction in zip(targets, predictions):
            if not isinstance(target, dict) or "image_id" not in target:
                raise ValueError("every target needs its 'image_id' (CocoDetection targets have one)")
            image_id = int(to_numpy(target["image_id"]))
            if image_id in batch or image_id in self.image_ids:
                raise ValueError(f"image_id {image_id} was given twice: its detections would be counted twice")
            batch[image_id] = _checked_prediction(image_id, prediction, self.coco_gt, "segm" in self.iou_types)
        self.results += coco_results(batch, self.dataset, self.mask_threshold)
        self.image_ids.update(batch)

    def summarize(self, out_dir=None, verbose=True):
        """COCOeval over the images seen so far; see ``evaluate_coco``."""
        if not self.image_ids:
            raise ValueError("Evaluator.summarize before any update: there is nothing to evaluate")
        return evaluate_coco(self.results, self.coco_gt, self.iou_types, out_dir=out_dir,
                             image_ids=self.image_ids, verbose=verbose)
