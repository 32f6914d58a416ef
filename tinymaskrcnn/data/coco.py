"""COCO instance data in the model's format, read with pycocotools.

``CocoDetection`` turns any COCO instances file (the official one, a subset, the synthetic
shapes set, your own) into ``(image, target)`` pairs: image (3, H, W) float32 in [0, 1],
target ``boxes`` (K, 4) float32 xyxy pixels, ``labels`` (K,) int64 in 1..C, ``masks``
(K, H, W) uint8 and ``image_id``. COCO category ids (1..90 with gaps in the official set)
become contiguous labels 1..C, and ``to_coco_results`` maps predictions back for COCOeval.
``load_instances`` reads and checks the file (its annotations through ``annotations.py``),
``check_datasets`` the image files (``images.py``) before any work.
"""
import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np

from ..core.files import UnreadableFileError, brief
from .annotations import mask_to_rle, usable_annotations
from .images import IMAGE_READ_ERRORS, MAX_PIXELS, image_size, load_image

REQUIRED_KEYS = {
    "file": ("images", "annotations", "categories"),
    "image": ("id", "file_name", "height", "width"),
    "annotation": ("id", "image_id", "category_id", "bbox"),
    "category": ("id", "name"),
}


def load_instances(ann_file):
    """Read and check a COCO instances file; returns the parsed dict.

    Every error names the file and what is wrong (an ``UnreadableFileError``, a ValueError; a
    missing file is a FileNotFoundError): text that is not JSON (or nested too deeply, or with
    an integer of thousands of digits), a missing top-level key or entry field, an id that is
    not an integer, an image size that is not two positive integers or has more than
    ``images.MAX_PIXELS`` pixels, a file name that is not one, an annotation pointing at an
    unknown image or category, a repeated id. Annotations that
    pycocotools cannot use (a polygon of fewer than three points, an RLE that does not fit its
    image, ...) are left out with a warning naming each; ``iscrowd`` and ``area``, which
    COCOeval reads, are filled in where missing.
    """
    path = Path(ann_file)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # not UTF-8, not JSON, an integer past Python's 4300-digit limit
        raise UnreadableFileError(f"{path} is not valid JSON ({str(e)[:200]}); expected a COCO instances "
                                  "file") from None
    except RecursionError:
        raise UnreadableFileError(f"{path} nests lists or objects too deeply to read (thousands of levels): it is "
                                  "not a COCO instances file") from None
    missing = [k for k in REQUIRED_KEYS["file"] if not isinstance(data, dict) or k not in data]
    if missing:
        raise UnreadableFileError(f"{path} is not a COCO instances file: missing {missing} (a COCO instances file "
                                  f"is a JSON object with lists {list(REQUIRED_KEYS['file'])})")
    image_ids = _checked_ids(path, "image", data["images"])
    _checked_ids(path, "annotation", data["annotations"])
    category_ids = _checked_ids(path, "category", data["categories"])
    for image in data["images"]:
        size = (image["height"], image["width"])
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
            raise UnreadableFileError(f"{path}: image {image['id']} has height, width {brief(size)}: both must be "
                                      "positive integers")
        if size[0] * size[1] > MAX_PIXELS:  # before pycocotools rasterises a mask of that size
            raise UnreadableFileError(f"{path}: image {image['id']} is {size[0]}x{size[1]} (HxW), more than the "
                                      f"{MAX_PIXELS} pixels an image may have (images.MAX_PIXELS)")
        name = image["file_name"]
        if not (isinstance(name, str) and name and "\0" not in name and len(name) <= 4096
                and all(len(part.encode("utf-8", "surrogatepass")) <= 255 for part in name.split("/"))):
            raise UnreadableFileError(f"{path}: image {image['id']} has file_name {brief(name)}: expected the "
                                      "image file's name (a path relative to the image folder)")
    for ann in data["annotations"]:
        for key in ("image_id", "category_id"):
            if not _is_id(ann[key]):
                raise UnreadableFileError(f"{path}: annotation {ann['id']} has {key} {brief(ann[key])}: COCO ids are "
                                          "integers")
        if ann["image_id"] not in image_ids:
            raise UnreadableFileError(f"{path}: annotation {ann['id']} refers to image_id {ann['image_id']}, "
                                      "which is not in 'images'")
        if ann["category_id"] not in category_ids:
            raise UnreadableFileError(f"{path}: annotation {ann['id']} has category_id {ann['category_id']}, which "
                                      f"is not in 'categories' (ids {brief(sorted(category_ids))})")
    data["annotations"] = usable_annotations(path, data)
    return data


def _checked_ids(path, kind, entries):
    """The ids of a list of COCO ``kind`` entries, each checked for the fields COCO requires."""
    if not isinstance(entries, list):
        key = REQUIRED_KEYS["file"][("image", "annotation", "category").index(kind)]
        raise UnreadableFileError(f"{path}: '{key}' must be a list, got {type(entries).__name__}")
    ids = set()
    for n, entry in enumerate(entries):
        lacking = [k for k in REQUIRED_KEYS[kind] if not isinstance(entry, dict) or k not in entry]
        if lacking:
            raise UnreadableFileError(f"{path}: {kind} number {n} lacks {lacking} (a COCO {kind} has "
                                      f"{list(REQUIRED_KEYS[kind])})")
        if not _is_id(entry["id"]):
            raise UnreadableFileError(f"{path}: {kind} number {n} has id {brief(entry['id'])}: COCO ids are integers")
        if entry["id"] in ids:
            raise UnreadableFileError(f"{path}: {kind} id {entry['id']} appears more than once")
        ids.add(entry["id"])
    return ids


def _is_id(value):
    return isinstance(value, int) and not isinstance(value, bool)


def pycocotools_index(data):
    """A pycocotools COCO object over already-loaded data (its progress prints silenced)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _xywh_to_clamped_xyxy(bbox, height, width):
    x, y, w, h = (float(v) for v in bbox)
    return [min(max(x, 0.0), width), min(max(y, 0.0), height),
            min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)]


class CocoDetection:
    """A COCO instances file and its image folder as ``(image, target)`` pairs.

    Crowd annotations (``iscrowd`` 1) are not training targets and are left out, as are
    annotations whose box is empty once clamped to the image (a warning counts them).
    Images with nothing left are kept unless ``skip_empty``. Labels are contiguous: the
    sorted category ids map to 1..C (0 is background); ``category_names[label]`` names them.
    """

    def __init__(self, ann_file, image_dir, skip_empty=False):
        self.ann_file, self.image_dir = str(ann_file), Path(image_dir)
        data = load_instances(ann_file)
        self.coco = pycocotools_index(data)
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.category_ids = [c["id"] for c in categories]
        self.category_names = ["__background__"] + [c["name"] for c in categories]
        self._label_of = {cat_id: label for label, cat_id in enumerate(self.category_ids, start=1)}

        # which annotations become targets, decided once from the boxes alone
        self._targets, degenerate, unmasked = {}, [], []
        for image_id, info in self.coco.imgs.items():
            keep = []
            for ann in self.coco.imgToAnns.get(image_id, []):
                if "segmentation" not in ann:
                    unmasked.append(ann["id"])
                if ann.get("iscrowd", 0):
                    continue
                x1, y1, x2, y2 = _xywh_to_clamped_xyxy(ann["bbox"], info["height"], info["width"])
                (keep if x2 > x1 and y2 > y1 else degenerate).append(ann)
            self._targets[image_id] = keep
        if unmasked:
            raise UnreadableFileError(f"{ann_file}: {len(unmasked)} of {len(self.coco.anns)} annotations have no "
                                      f"'segmentation' (ids {sorted(unmasked)[:5]}{' ...' if len(unmasked) > 5 else ''}"
                                      "); instance masks need one (a polygon list or an RLE)")
        if degenerate:
            warnings.warn(f"{ann_file}: left out {len(degenerate)} annotation(s) whose box is empty inside the "
                          f"image (ids {[a['id'] for a in degenerate[:5]]}{' ...' if len(degenerate) > 5 else ''})")
        self.ids = sorted(i for i, anns in self._targets.items() if anns or not skip_empty)

    def __len__(self):
        return len(self.ids)

    def image(self, index):
        """The (3, H, W) image of item ``index`` alone (its size checked against the annotation
        file), without its target: what inference reads, with no full-size mask built per object."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a data set of {len(self)} images")
        info = self.coco.imgs[self.ids[index]]
        return load_image(self.image_dir / info["file_name"], info["height"], info["width"])

    def __getitem__(self, index):
        image = self.image(index)
        image_id = self.ids[index]
        height, width = self.coco.imgs[image_id]["height"], self.coco.imgs[image_id]["width"]
        anns = self._targets[image_id]
        boxes = np.array([_xywh_to_clamped_xyxy(a["bbox"], height, width) for a in anns], dtype=np.float32)
        masks = np.zeros((len(anns), height, width), dtype=np.uint8)
        for k, ann in enumerate(anns):
            masks[k] = self.coco.annToMask(ann)  # polygons and both RLE forms, checked by load_instances
        target = {"boxes": boxes.reshape(-1, 4),
                  "labels": np.array([self._label_of[a["category_id"]] for a in anns], dtype=np.int64),
                  "masks": masks, "image_id": int(image_id)}
        return image, target

    def image_problems(self, examples=3):
        """What is wrong with the image files this data set needs, as a list of lines (empty
        when nothing is): files missing, files Pillow cannot identify, and files whose size
        differs from the annotation file's. Reads only each file's header (no decoding), so a
        truncated file is found when it is loaded; up to ``examples`` names per kind."""
        missing, unreadable, misfit = [], [], []
        for image_id in self.ids:
            info = self.coco.imgs[image_id]
            path = self.image_dir / info["file_name"]
            try:
                if not path.is_file():
                    missing.append(info["file_name"])
                    continue
                height, width = image_size(path)
            except IMAGE_READ_ERRORS as e:
                unreadable.append(f"{info['file_name']} ({str(e)[:200]})")
                continue
            if (height, width) != (info["height"], info["width"]):
                misfit.append(f"{info['file_name']} is {height}x{width}, the file says {info['height']}x{info['width']}")

        def line(found, what):
            more = f", and {len(found) - examples} more" if len(found) > examples else ""
            return f"{len(found)} of {len(self.ids)} {what}: {', '.join(found[:examples])}{more}"
        lines = []
        if missing:
            lines.append(line(missing, f"image files are missing from {self.image_dir}"))
        if unreadable:
            lines.append(line(unreadable, "image files are not images Pillow can read"))
        if misfit:
            lines.append(line(misfit, "images differ in size (HxW) from the annotation file"))
        return lines

    @property
    def num_classes(self):
        """Number of classes including background: the model's ``num_classes``."""
        return len(self.category_ids) + 1

    def category_id_to_label(self, category_id):
        """COCO category id → contiguous label in 1..C."""
        try:
            return self._label_of[category_id]
        except (KeyError, TypeError):
            raise ValueError(f"category id {category_id!r} is not in {self.ann_file} "
                             f"(ids {self.category_ids})") from None

    def label_to_category_id(self, labels):
        """Contiguous label(s) in 1..C → COCO category id(s); an int or an array of them."""
        labels = np.asarray(labels)
        if labels.size and (labels.min() < 1 or labels.max() > len(self.category_ids)):
            raise ValueError(f"labels must lie in 1..{len(self.category_ids)} (0 is background), got "
                             f"{labels.min()}..{labels.max()}")
        ids = np.asarray(self.category_ids, dtype=np.int64)[labels.astype(np.int64) - 1]
        return int(ids) if ids.ndim == 0 else ids

    def to_coco_results(self, image_id, prediction, mask_threshold=0.5):
        """The model's output for one image as COCO result dicts (for ``COCO.loadRes``).

        ``prediction``: ``boxes`` (N, 4) xyxy, ``labels`` (N,), ``scores`` (N,) and optionally
        ``masks`` (N, 1, H, W) or (N, H, W) probabilities (or anything that gives mask k as
        ``masks[k]``, as ``ops.PastedMasks`` does), binarised at ``mask_threshold`` one at a
        time and written as compressed RLE.
        """
        boxes = np.asarray(prediction["boxes"], dtype=np.float64).reshape(-1, 4)
        category_ids = self.label_to_category_id(np.asarray(prediction["labels"]).reshape(-1))
        scores = np.asarray(prediction["scores"], dtype=np.float64).reshape(-1)
        masks = prediction.get("masks")
        results = []
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            result = {"image_id": int(image_id), "category_id": int(category_ids[k]),
                      "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(scores[k])}
            if masks is not None:
                # one mask at a time: a lazily pasted stack (ops.PastedMasks) pastes only this one
                mask = np.asarray(masks[k])
                result["segmentation"] = mask_to_rle(mask.reshape(mask.shape[-2:]) > mask_threshold)
            results.append(result)
        return results


def check_datasets(datasets):
    """Check the image files of every data set in ``{split name: CocoDetection}`` (None values
    are skipped) before any work is done with them; raise one ValueError that reports all
    that is wrong in all of them (``CocoDetection.image_problems``), or return None.

    Annotations pycocotools cannot use were already left out, with a warning, when each data
    set was read (``load_instances``)."""
    report = []
    for split, dataset in datasets.items():
        if dataset is not None:
            report += [f"  {split} ({dataset.ann_file}): {line}" for line in dataset.image_problems()]
    if report:
        raise UnreadableFileError("the data has problems (found before any work was done):\n" + "\n".join(report)
                                  + "\nFix the image folder or the annotation file's file_name/height/width entries")
