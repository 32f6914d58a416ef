"""A smaller COCO instances file cut from a bigger one: some images, some categories.

What ``tinymaskrcnn coco-subset`` writes, so that a model trains on a laptop in minutes: the
chosen images' entries as they are (the subset uses the original image folder), the chosen
categories, and the annotations where both survive.
"""
from pathlib import Path

import numpy as np

from ..core.files import write_json_atomic
from .coco import load_instances

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
