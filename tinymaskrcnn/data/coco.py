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
import math
import struct
import warnings
from pathlib import Path

import numpy as np

from ..core.files import write_json_atomic

REQUIRED_KEYS = {
    "file": ("images", "annotations", "categories"),
    "image": ("id", "file_name", "height", "width"),
    "annotation": ("id", "image_id", "category_id", "bbox"),
    "category": ("id", "name"),
}


def load_instances(ann_file):
    """Read and check a COCO instances file; returns the parsed dict.

    Every error names the file and what is wrong: a missing file, text that is not JSON, a
    missing top-level key or entry field, an image size that is not two positive integers, an
    annotation pointing at an unknown image or category, a repeated id. Annotations that
    pycocotools cannot use (a polygon of fewer than three points, an RLE that does not fit its
    image, ...) are left out with a warning naming each; ``iscrowd`` and ``area``, which
    COCOeval reads, are filled in where missing.
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
    for image in data["images"]:
        size = (image["height"], image["width"])
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
            raise ValueError(f"{path}: image {image['id']} has height, width {size}: both must be positive integers")
        if not isinstance(image["file_name"], str) or not image["file_name"]:
            raise ValueError(f"{path}: image {image['id']} has file_name {image['file_name']!r}: expected the "
                             "image file's name (a path relative to the image folder)")
    for ann in data["annotations"]:
        if ann["image_id"] not in image_ids:
            raise ValueError(f"{path}: annotation {ann['id']} refers to image_id {ann['image_id']}, "
                             "which is not in 'images'")
        if ann["category_id"] not in category_ids:
            raise ValueError(f"{path}: annotation {ann['id']} has category_id {ann['category_id']}, which is "
                             f"not in 'categories' (ids {sorted(category_ids)})")
    data["annotations"] = _usable_annotations(path, data)
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


# pycocotools' C code trusts its input: a polygon of fewer than three points fails with "input type
# is not supported" (or, with two points, is read as a box), a NaN or huge coordinate exhausts
# memory or crashes the interpreter, and RLE runs that do not cover H*W pixels are decoded from
# memory past the array. So every segmentation is checked here, in Python, before it gets there.

def _polygon_problem(polygon, height, width):
    """Why ``polygon`` (flat [x1, y1, x2, y2, ...]) is unusable in an HxW image, or None."""
    if not isinstance(polygon, list):
        return f"is {type(polygon).__name__} {_short(polygon)}, not a list of coordinates"
    problem = _number_problem(polygon)
    if problem:
        return problem
    if len(polygon) < 6 or len(polygon) % 2:
        return (f"has {len(polygon)} coordinate(s): a polygon is x1, y1, x2, y2, ... "
                "with 3 or more points (an even count of 6 or more)")
    xs, ys = polygon[0::2], polygon[1::2]
    # one image size of slack each side: points just outside are common and harmless, far-away
    # ones make pycocotools rasterise an enormous outline
    if -width <= min(xs) and max(xs) <= 2 * width and -height <= min(ys) and max(ys) <= 2 * height:
        return None
    return f"reaches far outside the {height}x{width} image (x {min(xs):g}..{max(xs):g}, y {min(ys):g}..{max(ys):g})"


def _number_problem(values):
    """Why ``values`` are not all finite numbers, or None. (One ``sum``: quick, it refuses
    whatever is not a number and carries a NaN or infinity through; a sum too large for a
    float means a value far beyond any image.)"""
    try:
        if math.isfinite(sum(values)):
            return None
    except TypeError:
        return f"holds {_short(next(v for v in values if not isinstance(v, (int, float))))}, which is not a number"
    except OverflowError:
        pass
    return "holds a value that is not a finite number"


def mask_to_rle(mask, compressed=True):
    """COCO run-length encoding of a boolean mask: ``{"size": [h, w], "counts": ...}``.

    Runs go down the columns (Fortran order) and start with a run of zeros. ``compressed``
    gives pycocotools' string form; otherwise counts is the plain list of run lengths.
    """
    from pycocotools import mask as mask_utils

    height, width = mask.shape
    if compressed:
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": [height, width], "counts": rle["counts"].decode("ascii")}
    flat = mask.ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1  # positions where a new run starts
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts  # the first run counts zeros, so it is empty here
    return {"size": [height, width], "counts": counts}


def compressed_rle_runs(counts):
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString`` read in
    Python), or None when the string is malformed.

    Each run is a signed number written 5 bits per character (character = 48 + bits, bit 0x20:
    another character follows, bit 0x10 of the last one: negative); from the third run on the
    number is the difference from the run two places back.
    """
    runs, value, k = [], 0, 0
    for char in counts:
        c = ord(char) - 48
        if not 0 <= c < 64:
            return None
        value |= (c & 0x1F) << (5 * k)
        k += 1
        if c & 0x20:
            continue
        if c & 0x10:
            value |= -1 << (5 * k)
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            return None
        runs.append(value)
        value, k = 0, 0
    return None if k else runs


def _rle_problem(rle, height, width):
    """Why the RLE dict ``rle`` is unusable as an HxW mask, or None."""
    size, counts = rle.get("size"), rle.get("counts")
    if not isinstance(size, list) or size != [height, width]:
        return f"RLE size {_short(size)} is not the image's [height, width] [{height}, {width}]"
    if isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
            return "RLE counts must be non-negative integers (run lengths)"
        runs = counts
    elif isinstance(counts, str):
        runs = compressed_rle_runs(counts)
        if runs is None:
            return f"RLE counts {_short(counts)} is not a valid compressed RLE string"
    else:
        return f"RLE counts is {type(counts).__name__}: expected a list of run lengths or a compressed string"
    if sum(runs) != height * width:
        return f"RLE runs cover {sum(runs)} pixels, but the image has {height}x{width} = {height * width}"
    return None


def _short(value, limit=40):
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def segmentation_problems(segmentation, height, width):
    """What is wrong with an annotation's ``segmentation`` for an HxW image.

    Returns (problems, usable): ``problems`` a list of strings (empty when all is well) and
    ``usable`` the segmentation with its unusable polygons removed (None when nothing usable
    is left). A polygon list keeps its good polygons; an RLE is usable or not as a whole.
    """
    if isinstance(segmentation, dict):
        problem = _rle_problem(segmentation, height, width)
        return ([problem], None) if problem else ([], segmentation)
    if not isinstance(segmentation, list):
        return [f"segmentation is {type(segmentation).__name__} {_short(segmentation)}: expected a list of "
                "polygons or an RLE dict"], None
    if not segmentation:
        return ["segmentation is an empty list of polygons"], None
    problems, kept = [], []
    for n, polygon in enumerate(segmentation):
        problem = _polygon_problem(polygon, height, width)
        if problem:
            problems.append(f"polygon {n} {problem}")
        else:
            kept.append(polygon)
    return problems, (kept or None)


def _bbox_problem(bbox):
    if not isinstance(bbox, list) or len(bbox) != 4 or _number_problem(bbox):
        return f"bbox {_short(bbox)} is not four finite numbers [x, y, width, height]"
    return None


def _usable_annotations(path, data):
    """``data``'s annotations without those pycocotools cannot use, and with unusable polygons
    taken out of the others; a warning names each annotation changed, with the reason.

    Left out, an annotation is neither a training target nor evaluation ground truth, as if
    the file never had it (the rule for boxes that are empty in the image is milder: those
    stay ground truth, see CocoDetection)."""
    sizes = {image["id"]: (image["height"], image["width"]) for image in data["images"]}
    kept, dropped, trimmed = [], [], []
    for ann in data["annotations"]:
        bbox_problem = _bbox_problem(ann["bbox"])
        problems, usable = [bbox_problem] if bbox_problem else [], None
        if "segmentation" in ann:
            seg_problems, usable = segmentation_problems(ann["segmentation"], *sizes[ann["image_id"]])
            problems += seg_problems
        if problems and (bbox_problem or usable is None):
            dropped.append((ann["id"], problems))
            continue
        if problems:
            ann = {**ann, "segmentation": usable}
            trimmed.append((ann["id"], problems))
        kept.append(_completed(ann, *sizes[ann["image_id"]]))
    if dropped or trimmed:
        def listing(entries):
            shown = "; ".join(f"id {i}: {', '.join(problems)}" for i, problems in entries[:5])
            return shown + (f"; and {len(entries) - 5} more" if len(entries) > 5 else "")
        parts = []
        if dropped:
            parts.append(f"left out {len(dropped)} annotation(s) that pycocotools cannot use ({listing(dropped)})")
        if trimmed:
            parts.append(f"removed the unusable polygons of {len(trimmed)} annotation(s), keeping their other "
                         f"polygons ({listing(trimmed)})")
        warnings.warn(f"{path}: " + "; ".join(parts) + ". Fix these annotations to use them")
    return kept


def _completed(ann, height, width):
    """``ann`` with the fields COCOeval reads that COCO files made by other tools may lack:
    ``iscrowd`` (0) and ``area`` (the mask's pixel count, as COCO defines it; the box's without
    a segmentation). Unchanged when it has both."""
    from pycocotools import mask as mask_utils

    area = ann.get("area")
    if "iscrowd" in ann and isinstance(area, (int, float)) and math.isfinite(area):
        return ann
    ann = {"iscrowd": 0, **ann}
    if not (isinstance(area, (int, float)) and math.isfinite(area)):
        segmentation = ann.get("segmentation")
        if segmentation is None:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
        else:
            if isinstance(segmentation, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            elif isinstance(segmentation["counts"], list):
                rle = mask_utils.frPyObjects(segmentation, height, width)
            else:
                rle = segmentation
            ann["area"] = float(mask_utils.area(rle))
    return ann


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


def load_image(path, height=None, width=None, upright=False):
    """(3, H, W) float32 in [0, 1] from an image file; checks the size the annotations expect.

    ``upright``: turn the image as its EXIF orientation says (a phone's portrait photo is
    stored on its side), as viewers show it. Off for data sets, whose annotations are drawn
    over the pixels as stored.

    Images come as their files have them: 8-bit ones in any mode become RGB (grey repeated,
    a palette looked up); an alpha channel (RGBA, LA, a palette with transparency) is laid
    over white, as a viewer on a white page shows it; 16-bit greyscale ones (PNG, TIFF) are
    divided by 65535, their full range, rather than clipped to 8 bits (16-bit colour PNGs
    Pillow itself reads at 8 bits a channel, scaled right). Errors name the file: missing,
    damaged or truncated, or of a kind that has no sensible RGB (32-bit integers outside the
    16-bit range, floats outside [0, 1]).
    """
    from PIL import Image, ImageOps

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path} (check image_dir and the file_name in the "
                                "annotation file)")
    try:
        with Image.open(path) as im:
            im.load()  # decodes now, so a damaged file fails here, where its name is known
            pixels = _unit_rgb(ImageOps.exif_transpose(im) if upright else im, path)
    except (OSError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError) as e:
        # Pillow's messages ("image file is truncated", "broken PNG file") do not say which file
        raise OSError(f"{path}: cannot read the image ({e}); the file is damaged, truncated or not an image") from None
    if height is not None and pixels.shape[1:] != (height, width):
        raise ValueError(f"{path} is {pixels.shape[1]}x{pixels.shape[2]} (HxW) but the annotation file says "
                         f"{height}x{width}: the masks would not line up; fix the file's 'height'/'width'")
    return pixels


def _unit_rgb(im, path):
    """A decoded Pillow image as (3, H, W) float32 in [0, 1] (see ``load_image``)."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N") or im.mode == "I":
        grey = np.asarray(im)
        if im.mode == "I" and grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise ValueError(f"{path} holds 32-bit integer pixels from {grey.min()} to {grey.max()}: there is no "
                             "standard way to show them; save the image with 8 or 16 bits per channel")
        grey = grey.astype(np.float32) / np.float32(65535)
    elif im.mode == "F":
        grey = np.asarray(im, dtype=np.float32)
        if grey.size and not (np.isfinite(grey).all() and grey.min() >= 0 and grey.max() <= 1):
            raise ValueError(f"{path} holds floating-point pixels outside [0, 1] (from {np.nanmin(grey):g} to "
                             f"{np.nanmax(grey):g}): scale them to [0, 1], or save 8 or 16 bits per channel")
    else:
        if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
            rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / np.float32(255)
            alpha = rgba[..., 3:]
            rgb = rgba[..., :3] * alpha + (1 - alpha)  # over white
        else:
            try:
                rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / np.float32(255)
            except ValueError as e:  # a mode Pillow cannot turn into RGB (e.g. LAB)
                raise ValueError(f"{path}: images of mode {im.mode} cannot be shown as RGB ({e}); "
                                 "save it as an RGB or greyscale image") from None
        return np.ascontiguousarray(rgb.transpose(2, 0, 1))
    return np.ascontiguousarray(np.broadcast_to(grey, (3, *grey.shape)))


def image_paths(inputs):
    """The image files that ``inputs`` (files and folders) name, in order: a folder stands for
    the image files directly inside it (by extension, sorted by name). Every path is checked
    before any is read, so a typo fails before any work."""
    from PIL import Image

    extensions = set(Image.registered_extensions())
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir()
                           if p.suffix.lower() in extensions and not p.name.startswith(".") and p.is_file())
            if not found:
                raise FileNotFoundError(f"{item} is a folder with no image files in it (looked for "
                                        ".png, .jpg, .jpeg, .tif, .bmp, ... directly inside it)")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"image file not found: {item}")
    return paths


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
            raise ValueError(f"{ann_file}: {len(unmasked)} of {len(self.coco.anns)} annotations have no 'segmentation' "
                             f"(ids {sorted(unmasked)[:5]}{' ...' if len(unmasked) > 5 else ''}); instance masks "
                             "need one (a polygon list or an RLE)")
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
        from PIL import Image

        missing, unreadable, misfit = [], [], []
        for image_id in self.ids:
            info = self.coco.imgs[image_id]
            path = self.image_dir / info["file_name"]
            if not path.is_file():
                missing.append(info["file_name"])
                continue
            try:
                with Image.open(path) as im:
                    width, height = im.size
            except (OSError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError) as e:
                unreadable.append(f"{info['file_name']} ({e})")
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
        ``masks`` (N, 1, H, W) or (N, H, W) probabilities, binarised at ``mask_threshold``
        and written as compressed RLE.
        """
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
                result["segmentation"] = mask_to_rle(masks[k])
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
        raise ValueError("the data has problems (found before any work was done):\n" + "\n".join(report)
                         + "\nFix the image folder or the annotation file's file_name/height/width entries")


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
