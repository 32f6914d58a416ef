"""COCO annotations checked before pycocotools sees them, and COCO's RLE mask format.

pycocotools' C code trusts its input: a polygon of fewer than three points fails with "input
type is not supported" (or, with two points, is read as a box), a NaN or huge coordinate
exhausts memory or crashes the interpreter, and RLE runs that do not cover H*W pixels are
decoded from memory past the array. So every box and segmentation is checked here, in Python,
before it gets there: ``usable_annotations`` (which ``coco.load_instances`` applies to every
file it reads) leaves out what cannot be used and takes unusable polygons out of the rest, with
a warning naming each annotation and why, and fills in the fields COCOeval reads (``iscrowd``,
``area``) where a file lacks them. ``segmentation_problems`` says what is wrong with one.

RLE is COCO's run-length encoding of a mask: ``mask_to_rle`` writes it (the shapes set, the
results COCOeval reads), ``compressed_rle_runs`` reads pycocotools' compressed string in
Python, so that it can be checked before pycocotools decodes it.
"""
import math
import warnings

import numpy as np

# The longest outline pycocotools may trace for one annotation, summed over its polygons, in
# pixels: it rasterises each edge at 5 points a pixel and keeps every run its outline crosses,
# so a zigzag polygon of a few kilobytes inside an allowed image would take gigabytes. A real
# outline runs a few thousand pixels.
MAX_OUTLINE = 1_000_000
# Characters of one number in a compressed RLE string: 5 bits each, so 7 hold any run of an
# image of up to 2^34 pixels; pycocotools' C decoder keeps no more in its 64-bit integer.
_MAX_RLE_CHARS = 7


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
    number is the difference from the run two places back. A number longer than
    ``_MAX_RLE_CHARS`` characters is malformed (and refused at once: each character of a
    longer one would shift an ever larger integer, quadratic time in the string's length).
    """
    runs, value, k = [], 0, 0
    for char in counts:
        c = ord(char) - 48
        if not 0 <= c < 64 or k == _MAX_RLE_CHARS:
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
    outline = sum(map(_outline, kept))
    if outline > MAX_OUTLINE:
        return problems + [f"its polygons' outlines run {outline:.0f} pixels, more than the {MAX_OUTLINE} an "
                           "annotation may have (annotations.MAX_OUTLINE)"], None
    return problems, (kept or None)


def _outline(polygon):
    """The pixels pycocotools steps through to trace ``polygon`` (flat x, y, ...; closed):
    each edge takes as many as its longer side."""
    points = np.asarray(polygon, np.float64).reshape(-1, 2)
    return float(np.abs(points - np.roll(points, 1, axis=0)).max(axis=1).sum())


def _bbox_problem(bbox):
    if not isinstance(bbox, list) or len(bbox) != 4 or _number_problem(bbox):
        return f"bbox {_short(bbox)} is not four finite numbers [x, y, width, height]"
    return None


def usable_annotations(path, data):
    """``data``'s annotations without those pycocotools cannot use, and with unusable polygons
    taken out of the others; a warning names each annotation changed, with the reason.

    Left out, an annotation is neither a training target nor evaluation ground truth, as if
    the file never had it (the rule for boxes that are empty in the image is milder: those
    stay ground truth, see ``coco.CocoDetection``)."""
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
