"""COCO instance data in the model's format, read with pycocotools.

``CocoDetection`` turns any COCO instances file (the official one, a subset, the synthetic
shapes set, your own) into ``(image, target)`` pairs: image (3, H, W) float32 in [0, 1],
target ``boxes`` (K, 4) float32 xyxy pixels, ``labels`` (K,) int64 in 1..C, ``masks``
(K, H, W) uint8 and ``image_id``. COCO category ids (1..90 with gaps in the official set)
become contiguous labels 1..C, and ``to_coco_results`` maps predictions back for COCOeval.
``coco_subset`` writes a small valid COCO file for training on a laptop.
"""
import contextlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np

REQUIRED_KEYS = {
    "file": ("images", "annotations", "categories"),
    "image": ("id", "file_name", "height", "width"),
    "annotation": ("id", "image_id", "category_id", "bbox"),
    "category": ("id", "name"),
}


def load_instances(ann_file):
    """Read and check a COCO instances file; returns the parsed dict.

    Every error names the file and what is wrong: a missing file, text that is not JSON, a
    missing top-level key or entry field, an annotation pointing at an unknown image or
    category, a repeated id.
    """
    path = Path(ann_file)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); expected a COCO instances file") from None
    missing = [k for k in REQUIRED_KEYS["file"] if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{path} is not a COCO instances file: missing {missing} (a COCO instances file is "
                         f"a JSON object with lists {list(REQUIRED_KEYS['file'])})")
    image_ids = _checked_ids(path, "image", data["images"])
    _checked_ids(path, "annotation", data["annotations"])
    category_ids = _checked_ids(path, "category", data["categories"])
    for ann in data["annotations"]:
        if ann["image_id"] not in image_ids:
            raise ValueError(f"{path}: annotation {ann['id']} refers to image_id {ann['image_id']}, "
                             "which is not in 'images'")
        if ann["category_id"] not in category_ids:
            raise ValueError(f"{path}: annotation {ann['id']} has category_id {ann['category_id']}, which is "
                             f"not in 'categories' (ids {sorted(category_ids)})")
    return data


def _checked_ids(path, kind, entries):
    """The ids of a list of COCO ``kind`` entries, each checked for the fields COCO requires."""
    if not isinstance(entries, list):
        key = REQUIRED_KEYS["file"][("image", "annotation", "category").index(kind)]
        raise ValueError(f"{path}: '{key}' must be a list, got {type(entries).__name__}")
    ids = set()
    for n, entry in enumerate(entries):
        lacking = [k for k in REQUIRED_KEYS[kind] if not isinstance(entry, dict) or k not in entry]
        if lacking:
            raise ValueError(f"{path}: {kind} number {n} lacks {lacking} (a COCO {kind} has "
                             f"{list(REQUIRED_KEYS[kind])})")
        if entry["id"] in ids:
            raise ValueError(f"{path}: {kind} id {entry['id']} appears more than once")
        ids.add(entry["id"])
    return ids


def _pycocotools_index(data):
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


def load_image(path, height=None, width=None):
    """(3, H, W) float32 in [0, 1] from an image file; checks the size the annotations expect."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path} (check image_dir and the file_name in the "
                                "annotation file)")
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    if height is not None and pixels.shape[:2] != (height, width):
        raise ValueError(f"{path} is {pixels.shape[0]}x{pixels.shape[1]} (HxW) but the annotation file says "
                         f"{height}x{width}: the masks would not line up; fix the file's 'height'/'width'")
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32) / np.float32(255)


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
        self.coco = _pycocotools_index(data)
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.category_ids = [c["id"] for c in categories]
        self.category_names = ["__background__"] + [c["name"] for c in categories]
        self._label_of = {cat_id: label for label, cat_id in enumerate(self.category_ids, start=1)}

        # which annotations become targets, decided once from the boxes alone
        self._targets, degenerate = {}, []
        for image_id, info in self.coco.imgs.items():
            keep = []
            for ann in self.coco.imgToAnns.get(image_id, []):
                if ann.get("iscrowd", 0):
                    continue
                x1, y1, x2, y2 = _xywh_to_clamped_xyxy(ann["bbox"], info["height"], info["width"])
                (keep if x2 > x1 and y2 > y1 else degenerate).append(ann)
            self._targets[image_id] = keep
        if degenerate:
            warnings.warn(f"{ann_file}: left out {len(degenerate)} annotation(s) whose box is empty inside the "
                          f"image (ids {[a['id'] for a in degenerate[:5]]}{' ...' if len(degenerate) > 5 else ''})")
        self.ids = sorted(i for i, anns in self._targets.items() if anns or not skip_empty)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a data set of {len(self)} images")
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        height, width = info["height"], info["width"]
        image = load_image(self.image_dir / info["file_name"], height, width)
        anns = self._targets[image_id]
        boxes = np.array([_xywh_to_clamped_xyxy(a["bbox"], height, width) for a in anns], dtype=np.float32)
        masks = np.zeros((len(anns), height, width), dtype=np.uint8)
        for k, ann in enumerate(anns):
            if "segmentation" not in ann:
                raise ValueError(f"{self.ann_file}: annotation {ann['id']} has no 'segmentation'; "
                                 "instance masks need one (a polygon list or an RLE)")
            masks[k] = self.coco.annToMask(ann)  # polygons and both RLE forms, decoded by pycocotools
        target = {"boxes": boxes.reshape(-1, 4),
                  "labels": np.array([self._label_of[a["category_id"]] for a in anns], dtype=np.int64),
                  "masks": masks, "image_id": int(image_id)}
        return image, target

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
        ``masks`` (N, 1, H, W) or (N, H, W) probabilities, binarised at ``mask_threshold``
        and written as compressed RLE.
        """
        from pycocotools import mask as mask_utils

        boxes = np.asarray(prediction["boxes"], dtype=np.float64).reshape(-1, 4)
        category_ids = self.label_to_category_id(np.asarray(prediction["labels"]).reshape(-1))
        scores = np.asarray(prediction["scores"], dtype=np.float64).reshape(-1)
        masks = prediction.get("masks")
        if masks is not None:
            masks = np.asarray(masks)
            masks = masks.reshape(masks.shape[0], *masks.shape[-2:]) > mask_threshold
        results = []
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            result = {"image_id": int(image_id), "category_id": int(category_ids[k]),
                      "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(scores[k])}
            if masks is not None:
                rle = mask_utils.encode(np.asfortranarray(masks[k].astype(np.uint8)))
                result["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            results.append(result)
        return results


def _resolve_categories(categories, available, path):
    """Names or ids → the set of category ids they denote (all when ``categories`` is None)."""
    by_name = {c["name"]: c["id"] for c in available}
    ids = {c["id"] for c in available}
    if categories is None:
        return ids
    if isinstance(categories, (str, int)):
        categories = [categories]
    chosen = set()
    for c in categories:
        if isinstance(c, str) and c in by_name:
            chosen.add(by_name[c])
        elif not isinstance(c, str) and c in ids:
            chosen.add(c)
        else:
            raise ValueError(f"category {c!r} is not in {path}: use one of the names {sorted(by_name)} "
                             f"or ids {sorted(ids)}")
    return chosen


def write_json_atomic(data, out_file):
    """Write JSON to a temporary file beside ``out_file`` and rename it into place, so a reader
    never sees half a file."""
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, out_file)
    finally:
        if tmp.exists():
            tmp.unlink()
    return str(out_file)


def coco_subset(ann_file, out_file, num_images, categories=None, seed=0):
    """Write a COCO instances file holding ``num_images`` images that show the chosen categories.

    ``categories``: names or ids (None: all). The images are a seeded random choice among
    those with at least one non-crowd annotation of a chosen category (``num_images`` None:
    all of them); only the chosen categories and their annotations (crowd ones included, as
    COCOeval needs them) are kept. Image entries and file names are unchanged, so the subset
    uses the original image folder. Written atomically; returns ``out_file``.
    """
    if Path(out_file).resolve() == Path(ann_file).resolve():
        raise ValueError(f"out_file is the input file {ann_file}: write the subset to another file")
    data = load_instances(ann_file)
    chosen = _resolve_categories(categories, data["categories"], ann_file)
    candidates = sorted({a["image_id"] for a in data["annotations"]
                         if a["category_id"] in chosen and not a.get("iscrowd", 0)})
    if num_images is None:
        num_images = len(candidates)
    if not isinstance(num_images, (int, np.integer)) or not 0 < num_images <= len(candidates):
        raise ValueError(f"num_images={num_images!r}: {ann_file} has {len(candidates)} images with the chosen "
                         f"categories; ask for 1..{len(candidates)}")
    picked = set(np.random.default_rng(seed).choice(candidates, size=num_images, replace=False).tolist())
    subset = {key: data[key] for key in ("info", "licenses") if key in data}
    subset["images"] = [im for im in data["images"] if im["id"] in picked]
    subset["annotations"] = [a for a in data["annotations"] if a["image_id"] in picked and a["category_id"] in chosen]
    subset["categories"] = [c for c in data["categories"] if c["id"] in chosen]
    return write_json_atomic(subset, out_file)
