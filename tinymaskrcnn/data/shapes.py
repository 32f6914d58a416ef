"""Synthetic shapes: circles, squares and triangles drawn as exact pixel masks.

The masks are computed analytically on the pixel grid (pixel centres at integer + 0.5), so a
shape's mask, box and area agree by construction. The detection data set of later chapters
(``make_shapes_dataset``, a COCO-format set on disk) and the classification set of the demo
both draw with ``shape_mask``.

On disk a set writes and deletes only its own files (its stamp is its manifest), and the cache
that training uses (``ensure_shapes_dataset``) keeps one folder per set of settings and never
regenerates a set: a run of other settings never redraws the images under a running one.
"""
import hashlib
import inspect
import json
import os
import shutil
import tempfile
from collections import namedtuple
from pathlib import Path

import numpy as np

from .annotations import mask_to_rle

SHAPES = ("circle", "square", "triangle")
CATEGORIES = tuple({"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES))
STAMP = "shapes_dataset.json"  # written last inside the temporary folder: its presence means complete
_PARTIAL = ".partial-"  # in the hidden name of the temporary folder a set is written in
FORMAT_VERSION = 1  # bump when the drawing changes, so cached sets are regenerated
SPLITS = ("train", "val")

SplitPaths = namedtuple("SplitPaths", ["ann_file", "image_dir"])


def shape_mask(kind, cx, cy, size, height, width, angle=0.0):
    """Boolean (height, width) mask of a shape centred at (cx, cy) with half-extent ``size``.

    circle: radius ``size``; square: half side ``size`` rotated by ``angle`` radians;
    triangle: equilateral with circumradius ``size``, rotated by ``angle``.
    """
    ys, xs = np.mgrid[0:height, 0:width]
    x, y = xs + 0.5 - cx, ys + 0.5 - cy
    if kind == "circle":
        return x * x + y * y <= size * size
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * x + s * y, -s * x + c * y  # coordinates in the shape's own frame
    if kind == "square":
        return (np.abs(u) <= size) & (np.abs(v) <= size)
    if kind == "triangle":
        # inside all three half-planes whose outward normals point at 90°, 210° and 330°
        inside = np.ones_like(u, dtype=bool)
        for a in (np.pi / 2, np.pi * 7 / 6, np.pi * 11 / 6):
            inside &= u * np.cos(a) + v * np.sin(a) <= size / 2
        return inside
    raise ValueError(f"unknown shape {kind!r}: expected one of {SHAPES}")


def classification_set(n, size=32, seed=0, dtype=np.float32):
    """``n`` images (n, 3, size, size) in [0, 1], each one random shape on a noisy background,
    and their labels (index into SHAPES)."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, size, size), dtype=dtype)
    labels = rng.integers(0, len(SHAPES), n)
    for i, label in enumerate(labels):
        background = rng.uniform(0, 0.5, 3)
        colour = rng.uniform(0.5, 1.0, 3)
        r = rng.uniform(size * 0.15, size * 0.3)
        cx, cy = rng.uniform(r + 1, size - r - 1, 2)
        mask = shape_mask(SHAPES[label], cx, cy, r, size, size, angle=rng.uniform(0, 2 * np.pi))
        img = background[:, None, None] + rng.normal(0, 0.05, (3, size, size))
        img = np.where(mask[None], colour[:, None, None], img)
        images[i] = np.clip(img, 0, 1)
    return images, labels


# ---------------------------------------------------------------------------------------------
# Masks to COCO segmentations
# ---------------------------------------------------------------------------------------------

def mask_to_polygons(mask):
    """COCO polygons ([[x0, y0, x1, y1, ...], ...]) tracing a boolean mask, or None.

    The 0.5 level line of the zero-padded mask, sampled at pixel centres, runs between inside
    and outside pixel centres, so pycocotools' rasteriser (which tests pixel centres) gives the
    mask back. Polygons cannot express holes (pycocotools unions them), so the result is
    decoded and compared; None means "not representable: use RLE".
    """
    import contourpy
    from pycocotools import mask as mask_utils

    height, width = mask.shape
    z = np.pad(mask, 1).astype(np.float64)
    lines = contourpy.contour_generator(z=z, name="serial", line_type=contourpy.LineType.Separate).lines(0.5)
    polygons = []
    for loop in lines:
        loop = loop[:-1] - 1.0 + 0.5  # drop the repeated closing point; padded index → pixel centre
        # keep corners only: a point where the direction does not change adds nothing
        before, after = loop - np.roll(loop, 1, axis=0), np.roll(loop, -1, axis=0) - loop
        loop = loop[before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0] != 0]
        if len(loop) >= 3:
            polygons.append([float(c) for c in loop.ravel()])
    if not polygons:
        return None
    decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width)))
    return polygons if np.array_equal(decoded.astype(bool), mask) else None


# ---------------------------------------------------------------------------------------------
# Drawing one image
# ---------------------------------------------------------------------------------------------

def _distinct_colour(rng, others, min_distance=0.35, tries=100):
    """A random RGB colour at least ``min_distance`` from every colour in ``others`` (so each
    object stands out from the background and from the objects it may touch)."""
    for _ in range(tries):
        colour = rng.uniform(0, 1, 3)
        if all(np.linalg.norm(colour - o) >= min_distance for o in others):
            break
    return colour


def _background(rng, height, width):
    """(height, width, 3) plain colour or linear gradient, and the colours used (to avoid)."""
    a = rng.uniform(0, 1, 3)
    if rng.random() < 0.5:
        return np.broadcast_to(a, (height, width, 3)).copy(), [a]
    b = rng.uniform(0, 1, 3)
    theta = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width]
    t = xs * np.cos(theta) + ys * np.sin(theta)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    return a * (1 - t[..., None]) + b * t[..., None], [a, b]


def draw_scene(rng, height, width, max_objects, min_visible=0.3, min_area=20):
    """One image and its objects: (uint8 (height, width, 3), [(category_id, visible mask)]).

    Objects are drawn in order, so later ones occlude earlier ones; an object whose visible
    part is under ``min_visible`` of its own area or under ``min_area`` pixels is left out of
    the picture entirely (so nothing visible goes unannotated). Leaving one out only uncovers
    the others, so one pass of checks suffices, and the last object drawn always survives.
    """
    image, used_colours = _background(rng, height, width)
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        kind = int(rng.integers(len(SHAPES)))
        size = rng.uniform(0.08, 0.25) * min(height, width)
        extent = size * (np.sqrt(2) if SHAPES[kind] == "square" else 1.0)  # reach from the centre
        cx = rng.uniform(extent + 1, width - extent - 1)
        cy = rng.uniform(extent + 1, height - extent - 1)
        mask = shape_mask(SHAPES[kind], cx, cy, size, height, width, angle=rng.uniform(0, 2 * np.pi))
        colour = _distinct_colour(rng, used_colours + [o[2] for o in objects])
        objects.append((kind + 1, mask, colour))
    objects = [o for o, vis in zip(objects, _visible_masks([o[1] for o in objects]))
               if vis.sum() >= max(min_area, min_visible * o[1].sum())]
    for _, mask, colour in objects:
        image[mask] = colour
    image = image + rng.normal(0, 0.03, image.shape)
    image = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    visible = _visible_masks([o[1] for o in objects])
    return image, [(o[0], v) for o, v in zip(objects, visible)]


def _visible_masks(masks):
    """Each mask minus the union of the masks drawn after it."""
    covered = np.zeros_like(masks[0]) if masks else None
    visible = []
    for mask in reversed(masks):
        visible.append(mask & ~covered)
        covered = covered | mask
    return visible[::-1]


def tight_box(mask):
    """The xyxy box whose edges are the outer pixel edges of a non-empty mask (pixel j spans [j, j+1))."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def scene(seed, height=128, width=192, max_objects=4, dtype=np.float32):
    """One seeded shapes image and its target, as the detector takes them, without a data set
    on disk: ((3, H, W) ``dtype`` in [0, 1], {"boxes": (K, 4) tight xyxy ``dtype``, "labels":
    (K,) int64 category ids, "masks": (K, H, W) uint8}). What the chapters draw on."""
    pixels, objects = draw_scene(np.random.default_rng(seed), height, width, max_objects)
    masks = np.stack([mask for _, mask in objects]).astype(np.uint8)
    target = {"boxes": np.array([tight_box(m) for m in masks], dtype=dtype),
              "labels": np.array([category for category, _ in objects], dtype=np.int64), "masks": masks}
    return (pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255)).astype(dtype), target


def _annotation(ann_id, image_id, category_id, mask):
    """A COCO annotation for a visible mask; every 4th is written as RLE (alternately
    compressed and uncompressed) and so is any mask polygons cannot express (holes)."""
    x0, y0, x1, y1 = tight_box(mask)
    bbox = [x0, y0, x1 - x0, y1 - y0]
    segmentation = None if ann_id % 4 == 0 else mask_to_polygons(mask)
    if segmentation is None:
        segmentation = mask_to_rle(mask, compressed=ann_id % 8 != 4)
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": segmentation,
            "area": float(mask.sum()), "bbox": bbox, "iscrowd": 0}


# ---------------------------------------------------------------------------------------------
# The data set on disk
# ---------------------------------------------------------------------------------------------

def _parse_image_size(image_size):
    """(H, W) or ((h_min, h_max), (w_min, w_max)) → ((h_min, h_max), (w_min, w_max))."""
    try:
        h, w = image_size
        ranges = tuple((int(s), int(s)) if np.isscalar(s) else tuple(int(v) for v in s) for s in (h, w))
        ok = all(len(r) == 2 and 32 <= r[0] <= r[1] for r in ranges)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"image_size={image_size!r}: expected (H, W) or ((h_min, h_max), (w_min, w_max)) "
                         "with sizes of at least 32 pixels")
    return ranges


def _check_count(name, value, minimum):
    if not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r}: expected an integer >= {minimum}")
    return int(value)


def _parameters(num_train, num_val, image_size, max_objects, seed, min_visible, min_area):
    """The generation parameters, checked and in the JSON form the stamp stores."""
    if not 0 <= min_visible <= 1:
        raise ValueError(f"min_visible={min_visible!r}: expected a fraction in [0, 1]")
    return {"format": FORMAT_VERSION, "num_train": _check_count("num_train", num_train, 0),
            "num_val": _check_count("num_val", num_val, 0),
            "image_size": [list(r) for r in _parse_image_size(image_size)],
            "max_objects": _check_count("max_objects", max_objects, 1), "seed": _check_count("seed", seed, 0),
            "min_visible": float(min_visible), "min_area": _check_count("min_area", min_area, 1)}


def shapes_paths(root):
    """{"train": SplitPaths(ann_file, image_dir), "val": ...} of a shapes set under ``root``."""
    root = Path(root)
    return {s: SplitPaths(str(root / "annotations" / f"instances_{s}.json"), str(root / "images" / s))
            for s in SPLITS}


def _read_stamp(root):
    try:
        return json.loads((Path(root) / STAMP).read_text())
    except (OSError, ValueError):
        return None


def _write_split(folder, split, split_index, params, progress):
    from PIL import Image
    from tqdm import tqdm

    (h_min, h_max), (w_min, w_max) = params["image_size"]
    image_dir = folder / "images" / split
    image_dir.mkdir(parents=True)
    images, annotations = [], []
    count = params[f"num_{split}"]
    for image_id in tqdm(range(1, count + 1), desc=f"shapes {split}", disable=not progress):
        # each image has its own stream, so it does not depend on how many came before
        rng = np.random.default_rng([params["seed"], split_index, image_id])
        height, width = int(rng.integers(h_min, h_max + 1)), int(rng.integers(w_min, w_max + 1))
        pixels, objects = draw_scene(rng, height, width, params["max_objects"], params["min_visible"],
                                     params["min_area"])
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(image_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for category_id, mask in objects:
            annotations.append(_annotation(len(annotations) + 1, image_id, category_id, mask))
    coco = {"info": {"description": "tinymaskrcnn synthetic shapes", "version": str(FORMAT_VERSION)},
            "licenses": [], "images": images, "annotations": annotations, "categories": list(CATEGORIES)}
    (folder / "annotations").mkdir(exist_ok=True)
    (folder / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco, separators=(",", ":")))


def _owned(params, relative):
    """Whether ``relative`` (a POSIX path inside a set's folder) names a file or folder that a
    set made with ``params`` writes. The stamp is the set's manifest: its parameters fix every
    name (the stamp, two annotation files, images/{split}/000001.png up to the split's count),
    so replacing a set deletes these and nothing else."""
    split_files = {f"annotations/instances_{s}.json" for s in SPLITS} | {f"images/{s}" for s in SPLITS}
    if relative in (STAMP, "annotations", "images") or relative in split_files:
        return True
    parts = relative.split("/")
    if len(parts) == 3 and parts[0] == "images" and parts[1] in SPLITS and len(parts[2]) == 10 \
            and parts[2].endswith(".png") and parts[2][:6].isdigit():
        count = params.get(f"num_{parts[1]}")
        return isinstance(count, int) and 1 <= int(parts[2][:6]) <= count
    return False


def _foreign_entries(root, limit=3):
    """Up to ``limit`` paths under the folder ``root`` that are not its shapes set's own (every
    entry, when it has no stamp), found top-down without entering a foreign folder."""
    params = _read_stamp(root)
    found, pending = [], [root]
    while pending and len(found) < limit:
        folder = pending.pop()
        for entry in sorted(folder.iterdir()):
            relative = entry.relative_to(root).as_posix()
            if isinstance(params, dict) and _owned(params, relative):
                if entry.is_dir() and not entry.is_symlink():
                    pending.append(entry)
            else:
                found.append(relative)
    return found[:limit]


def _check_replaceable(root):
    """Only an empty folder, or one holding nothing but a shapes set's own files (``_owned``),
    may be replaced by a new set: anything else found there is an error naming it."""
    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"{root} is a file: the shapes set needs a folder; choose another root")
    foreign = _foreign_entries(root)
    if foreign:
        what = "holds files that are not its shapes set's" if (root / STAMP).is_file() else \
            f"exists and is not a shapes data set (it has no {STAMP})"
        raise FileExistsError(f"{root} {what} ({', '.join(foreign)}{', ...' if len(foreign) == 3 else ''}); writing "
                              "the set there would delete them: choose another root, or move them out")


def make_shapes_dataset(root, num_train=256, num_val=64, image_size=((128, 192), (128, 192)), max_objects=4,
                        seed=0, min_visible=0.3, min_area=20, progress=False):
    """Write the synthetic shapes set in COCO format under ``root`` and return its paths.

    Layout: ``root/images/{train,val}/NNNNNN.png`` and
    ``root/annotations/instances_{train,val}.json`` (categories 1..3: circle, square,
    triangle). ``image_size`` is (H, W) or ((h_min, h_max), (w_min, w_max)), drawn per image;
    each image holds 1..``max_objects`` shapes before occluded ones are left out. The same
    arguments give byte-identical files. The set is written to a temporary folder next to
    ``root`` and renamed into place, so an interrupted run never leaves a set that looks
    complete. ``root`` may be missing, empty, or hold an earlier shapes set and nothing else
    (its stamp names its files), which is replaced; anything else there is an error, and
    nothing is deleted. Returns ``{"train": SplitPaths(ann_file, image_dir), "val": ...}``.
    """
    params = _parameters(num_train, num_val, image_size, max_objects, seed, min_visible, min_area)
    root = Path(root)
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    # mkdtemp gives a private name; the set is built in a plain subfolder of it so that the
    # renamed folder gets the usual permissions, and the old set is parked there to be deleted
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}{_PARTIAL}", dir=root.parent))
    try:
        build = tmp / "new"
        build.mkdir()
        for split_index, split in enumerate(SPLITS):
            _write_split(build, split, split_index, params, progress)
        (build / STAMP).write_text(json.dumps(params, indent=1))
        if _read_stamp(root) == params:  # another process finished the same set meanwhile
            return shapes_paths(root)
        _check_replaceable(root)  # again: files may have arrived while the set was drawn
        if root.exists():
            os.replace(root, tmp / "old")
        os.replace(build, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return shapes_paths(root)


# ---------------------------------------------------------------------------------------------
# A cache of sets: one folder per set of parameters
# ---------------------------------------------------------------------------------------------

def _settings(root, kwargs):
    """``make_shapes_dataset``'s parameters from keywords (a TypeError names a bad one), checked
    and in the stamp's form, and the progress flag."""
    bound = inspect.signature(make_shapes_dataset).bind(root, **kwargs)
    bound.apply_defaults()
    args = dict(bound.arguments)
    del args["root"]
    progress = args.pop("progress")
    return args, _parameters(**args), progress


def _set_folder(root, params):
    """Where the set of ``params`` lives in the cache folder ``root``: ``root`` itself when it
    holds exactly that set (made there by make_shapes_dataset, or by an earlier version that
    kept one set per root), else a subfolder named by the set's counts and seed and a hash of
    all its parameters."""
    root = Path(root)
    if _read_stamp(root) == params:
        return root
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    return root / f"train{params['num_train']}-val{params['num_val']}-seed{params['seed']}-{digest}"


def _check_cache_root(root):
    """A cache folder holds shapes sets, each in its own folder with its stamp, and the hidden
    folders of sets being written; it is never written beside anything else."""
    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"{root} is a file: the shapes sets need a folder; choose another shapes root")
    if (root / STAMP).is_file():
        raise FileExistsError(f"{root} holds a shapes set of other settings itself (made by make_shapes_dataset or an "
                              "earlier tinymaskrcnn); sets of other settings go into the subfolders of a root that "
                              "holds only sets: choose another shapes root, or remove this set")
    others = [p.name for p in sorted(root.iterdir())
              if not (p.is_dir() and ((p / STAMP).is_file() or p.name.startswith(".") and _PARTIAL in p.name))]
    if others:
        raise FileExistsError(f"{root} holds things other than shapes sets ({', '.join(others[:3])}"
                              f"{', ...' if len(others) > 3 else ''}): a shapes root holds only the sets made in it; "
                              "choose another shapes root, or move them out")


def ensure_shapes_dataset(root, **kwargs):
    """The shapes set of these settings in the cache folder ``root``, generated on first use.

    Takes ``make_shapes_dataset``'s keywords. Each set of settings has its own subfolder
    (``_set_folder``), and a set once made is never regenerated: a run of other settings (say
    another seed) gets a set of its own instead of redrawing the images under a run that is
    reading them. ``root`` holds only sets: anything else there is an error.
    """
    args, params, progress = _settings(root, kwargs)
    folder = _set_folder(root, params)
    if _read_stamp(folder) == params:
        return shapes_paths(folder)
    _check_cache_root(Path(root))
    return make_shapes_dataset(folder, progress=progress, **args)


def find_shapes_dataset(root, **kwargs):
    """The paths of the shapes set of these settings in the cache folder ``root``, as
    ``ensure_shapes_dataset`` made it; a FileNotFoundError when it is not there. Nothing is
    written: what reads a run's data (evaluating its checkpoint) never creates the folders
    the run's configuration names."""
    _, params, _ = _settings(root, kwargs)
    folder = _set_folder(root, params)
    if _read_stamp(folder) != params:
        shown = ", ".join(f"{k} {params[k]}" for k in ("num_train", "num_val", "image_size", "seed"))
        raise FileNotFoundError(f"no shapes set with {shown} in {root} (looked for {folder})")
    return shapes_paths(folder)
