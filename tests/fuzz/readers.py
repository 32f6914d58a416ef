"""The readers under test: what each reads, its seeds, and how its files are mutated.

A ``Reader`` is one way the project reads a file from outside:

==============  ==========================================================================
``pth``         ``weights.read_pth`` then ``weights.load_pretrained`` into a tiny detector
                (``train --weights``): torch's zip and legacy formats
``npz``         ``weights.load``: the project's checkpoints
``pretrained``  ``weights.load_pretrained`` of a run's ``checkpoint.npz`` into a tiny
                detector (``train --weights``)
``checkpoint``  ``engine.load_model`` (``evaluate``, ``predict``): a training checkpoint whose
                fields name the architecture to build
``coco``        ``data.CocoDetection``, its image check (``check_datasets``) and 3 items
                (``train``, ``evaluate``; ``coco-subset`` reads through the same
                ``load_instances``)
``image``       ``data.load_image`` with the size an annotation gives (a data set's item)
``predict``     ``data.load_image(upright=True)``, no size given (``predict``'s images)
``metrics``     ``engine.truncate_metrics`` (``train --resume`` reads the run's metrics.jsonl)
==============  ==========================================================================

``prepare(workdir)`` makes what the reader needs beside the file (a model to load into, an
image folder) and imports what it uses; ``seeds(workdir)`` writes the seeds, valid files made by
the code that makes such files (torch.save, ``weights.save``, ``make_shapes_dataset``, Pillow);
``run(path)`` reads one file (in the forked child); ``mutate(data, rng)`` is one
structure-aware mutation of the format. ``names(path)``: what a clean error's message may
name (the file; for COCO, an image file in the image folder). ``allowance(path, size)``: the
bytes a reader may allocate beyond ten times the file's size plus 200 MB: a decoded image.
"""
import dataclasses
import importlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from . import mutators as m

IMAGE_SIZE = (40, 56)  # (H, W) of every image seed: the size the ``image`` reader's annotation gives
DECODE_BYTES = 16  # a decoded pixel's bytes at most: Pillow's 4 and the float32 RGB result's 12 (data/images.py)


class SeedsUnavailable(RuntimeError):
    """A reader's seeds need something this environment lacks (torch for ``.pth`` files)."""


class Reader:
    name = ""
    suffix = ""
    structure_share = 0.7  # the chance that a mutation is structure-aware rather than generic
    imports = ()           # what ``run`` imports, imported by ``prepare`` before any child forks

    def prepare(self, workdir):
        for module in self.imports:
            importlib.import_module(module)

    def seeds(self, workdir):
        raise NotImplementedError

    def run(self, path):
        raise NotImplementedError

    def mutate(self, data, rng):
        raise NotImplementedError

    def names(self, path):
        return (str(path),)

    def allowance(self, path, size):
        return 0


def _pick_weighted(rng, table):
    """One function of ``table`` [(weight, function)], chosen by weight."""
    total = sum(w for w, _ in table)
    x = rng.random() * total
    for weight, function in table:
        x -= weight
        if x < 0:
            return function
    return table[-1][1]


def _rebuild(data, change):
    """The zip ``data`` with ``change(entries)`` applied to its [(name, bytes)], rebuilt valid."""
    entries = m.zip_entries(data)
    change(entries)
    return m.build_zip(entries)


ZIP_RECORD_MUTATIONS = ((3, m.zip_entry_mutation), (3, m.zip_record_field), (1, m.zip_name_bytes),
                        (1, m.zip_duplicate_central))


# ---------------------------------------------------------------------------------------------
# .pth
# ---------------------------------------------------------------------------------------------

def tiny_detector():
    """Our module with the detector's names (tests/fuzz/layout.py), which ``load_pretrained``
    reads either seed layout into in milliseconds."""
    from tinymaskrcnn import nn

    from .layout import tiny_detector as layout
    return layout(nn)


def _tensor_record(key, numel):
    """``_rebuild_tensor_v2`` of a ByteStorage ``key`` of ``numel`` bytes, as torch pickles it."""
    storage = (b"(" + m.p_str("storage") + m.p_global("torch", "ByteStorage") + m.p_str(key) + m.p_str("cpu")
               + m.p_int(numel) + b"tQ")
    return (m.p_global("torch._utils", "_rebuild_tensor_v2") + b"(" + storage + m.p_int(0) + b"(" + m.p_int(numel)
            + b"t(" + m.p_int(1) + b"t\x89" + m.p_global("collections", "OrderedDict") + b")RtR")


def pth_overlap(rng):
    """A torch.save zip whose storage records overlap (``mutators.overlapping_zip``), with a
    data.pkl that names every one: each passes the reader's checks, all together hold the file's
    bytes hundreds of times."""
    count = rng.choice((256, 2048, 4096))
    chain = [f"archive/data/{k}" for k in range(count)]

    def head(sizes):
        items = b"".join(m.p_str(f"t{k}") + _tensor_record(str(k), n) for k, n in enumerate(sizes))
        return [("archive/data.pkl", b"\x80\x02}(" + items + b"u."), ("archive/byteorder", b"little")]
    return m.overlapping_zip(head, chain, lambda n: b"\x00" * 64)  # each storage's own bytes, then the rest


def legacy_pickles(data):
    """Where the legacy stream's five pickles start (magic, protocol, system info, the object,
    the storage keys) and where the storages' bytes begin."""
    starts, at = [], 0
    for _ in range(5):
        starts.append(at)
        at = m.pickle_ops(data, at)[-1][3]
    return starts, at


class PthReader(Reader):
    name, suffix = "pth", ".pt"  # .pt: the repository's .gitignore ignores *.pth
    imports = ("tinymaskrcnn.weights",)

    def prepare(self, workdir):
        super().prepare(workdir)
        self.model = tiny_detector()

    def seeds(self, workdir):
        seeds_dir = Path(workdir) / "pth-seeds"
        script = Path(__file__).with_name("torch_seeds.py")
        done = subprocess.run([sys.executable, str(script), str(seeds_dir)], capture_output=True, text=True)
        if done.returncode:
            raise SeedsUnavailable(f"torch could not write the .pth seeds:\n{done.stderr[-2000:]}")
        return [(p.name, p.read_bytes()) for p in sorted(seeds_dir.glob("*.pth"))]

    def run(self, path):
        from tinymaskrcnn import weights

        weights.read_pth(path)
        weights.load_pretrained(self.model, path)

    def mutate(self, data, rng):
        if data[:4] != b"PK\x03\x04":
            starts, storages = legacy_pickles(data)
            if rng.random() < 0.15:  # the element count before the first storage's bytes
                value = rng.choice(m.INTERESTING_INTS) % 2 ** 64
                return data[:storages] + value.to_bytes(8, "little") + data[storages + 8:]
            which = rng.choices(range(5), weights=(1, 1, 1, 12, 3))[0]
            return m.mutate_pickle(data, rng, starts[which])
        if rng.random() < 0.02:
            return pth_overlap(rng)
        if rng.random() < 0.55:
            def change(entries):
                k = next(i for i, (name, _) in enumerate(entries) if name.endswith("data.pkl"))
                entries[k] = (entries[k][0], m.mutate_pickle(entries[k][1], rng))
            return _rebuild(data, change)
        return _pick_weighted(rng, ZIP_RECORD_MUTATIONS)(data, rng)


# ---------------------------------------------------------------------------------------------
# .npz checkpoints
# ---------------------------------------------------------------------------------------------

META = "__tinymaskrcnn__.npy"


def npz_meta(content):
    """The parsed JSON of the meta entry's bytes (its header checked first: this runs in the
    campaign's own process, and numpy allocates what a header claims)."""
    try:
        f = io.BytesIO(content)
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        shape, _, dtype = read_header[version](f)
        if np.prod(shape, dtype=object) * dtype.itemsize > len(content):
            raise m.NotApplicable("the meta entry claims more than it holds")
        f.seek(0)
        return json.loads(str(np.lib.format.read_array(f, allow_pickle=False)))
    except m.NotApplicable:
        raise
    except Exception as e:
        raise m.NotApplicable("meta entry unreadable") from e


def npz_meta_bytes(text):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.array(text), allow_pickle=False)
    return buffer.getvalue()


def npz_overlap(meta, rng):
    """A checkpoint whose array entries overlap, each an honest .npy of uint8 covering the rest
    of the chain (``mutators.overlapping_zip``)."""
    count = rng.choice((256, 2048, 4096))
    return m.overlapping_zip(lambda sizes: [(META, meta)], [f"a{k}.npy" for k in range(count)],
                             lambda n: m.npy_bytes(str({"descr": "|u1", "fortran_order": False, "shape": (n,)}), b""))


class NpzReader(Reader):
    name, suffix = "npz", ".npz"
    imports = ("tinymaskrcnn.weights",)

    def seeds(self, workdir):
        from tinymaskrcnn import weights

        seeds = []
        for name, state in self.states().items():
            path = Path(workdir) / f"{name}.npz"
            weights.save(path, state)
            seeds.append((path.name, path.read_bytes()))
        return seeds

    def states(self):
        """{seed name: the tree ``weights.save`` writes}."""
        rng = np.random.default_rng(0)
        return {
            "nested": {"model": {"conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                                 "conv.bias": np.zeros(4, np.float32), "bn.num_batches_tracked": np.int64(3)},
                       "optimizer": {"state": {0: {"momentum_buffer": np.ones(5, np.float16)}},
                                     "param_groups": [{"lr": 0.1, "params": (0, 1)}]},
                       "iteration": 12, "rng": ("PCG64", np.arange(4, dtype=np.uint64)), "nothing": None,
                       "flags": np.array([True, False]), "names": np.array(["a", "bc"]), "empty": np.zeros((0, 3)),
                       "scalar": np.float64(1.5), "text": "é", "inf": float("inf")},
            "small": {"a": np.arange(6, dtype=np.int32).reshape(2, 3), "t": (1, 2.5, "x"), "fortran":
                      np.asfortranarray(np.arange(6.0).reshape(2, 3)), "complex": np.array([1 + 2j])},
        }

    def run(self, path):
        from tinymaskrcnn import weights

        weights.load(path)

    def mutate_meta(self, doc, rng):
        return m.json_value(doc, rng)

    def mutate(self, data, rng):
        entries = m.zip_entries(data)
        kind = rng.random()
        if kind < 0.3:
            k = rng.randrange(len(entries))
            entries[k] = (entries[k][0], m.npy_header(entries[k][1], rng))
            return m.build_zip(entries)
        if kind < 0.65:
            k = next((i for i, (name, _) in enumerate(entries) if name == META), None)
            if k is None:
                raise m.NotApplicable("no meta entry")
            doc = self.mutate_meta(npz_meta(entries[k][1]), rng)
            text = m.dump_json(doc, rng)
            if rng.random() < 0.1:  # the text damaged as text (it is stored as a str, so decoded back)
                text = m.json_text(text.encode("utf-8", "surrogatepass"), rng).decode("latin-1")
            entries[k] = (META, npz_meta_bytes(text))
            return m.build_zip(entries)
        if kind < 0.67:
            meta = next((content for name, content in entries if name == META), None)
            if meta is None:
                raise m.NotApplicable("no meta entry")
            return npz_overlap(meta, rng)
        return _pick_weighted(rng, ZIP_RECORD_MUTATIONS)(data, rng)


class PretrainedReader(NpzReader):
    """``weights.load_pretrained`` given a run's ``checkpoint.npz`` (``train --weights``):
    the same archive as ``npz``, then the state_dict found in whatever tree it holds and
    matched against a model's names and shapes."""
    name, suffix = "pretrained", ".npz"

    def prepare(self, workdir):
        super().prepare(workdir)
        self.model = tiny_detector()

    def states(self):
        state = {k: np.asarray(v) for k, v in tiny_detector().state_dict().items()}
        return {"run": {"model": state, "iteration": 7, "format": "tinymaskrcnn-train"}, "flat": state}

    def run(self, path):
        from tinymaskrcnn import weights

        weights.load_pretrained(self.model, path)


# A training checkpoint's fields that load_model trusts, and values a file may give them.
CHECKPOINT_VALUES = {
    "num_classes": (500_000, 10 ** 7, 0, -1, 1, 1.5, "4", True, 2 ** 63, None, [4]),
    "model_name": ("maskrcnn_resnet50_fpn", "maskrcnn_resnet18_fpn", "", "resnet18", 5, None),
    "fpn_channels": (5000, 10 ** 5, 0, -1, "8", 1.5, None, 2 ** 31, True),
    "representation_size": (10 ** 6, 0, -3, "16", None),
    "mask_channels": (10 ** 5, 0, -1, 2.5),
    "min_size": (10 ** 6, 0, -1, "64", None), "max_size": (10 ** 7, 0, 1.5),
    "anchor_sizes": ({"__tuple__": []}, {"__tuple__": [10 ** 9]}, {"__tuple__": [-16, 0]}, "16", [[1, 2]],
                     {"__tuple__": list(range(1, 10_000))}),
    "scales_per_octave": (1000, 0, -1, 10 ** 6), "norm": ("x", 5, None, "instance"),
    "box_head_convs": ({"__tuple__": [10 ** 5]}, {"__tuple__": [0]}, 7, "x"),
    "weights": ("x",), "num_classes ": (3,), "backbone": (1,), "rpn_pre_nms_top_n_test": (-1, 10 ** 9),
    "box_detections_per_img": (10 ** 9, -1), "image_mean": ({"__tuple__": []}, [0.5]),
}


class CheckpointReader(NpzReader):
    """``load_model``: it builds the architecture a checkpoint names (a ResNet-18 Mask R-CNN, half
    a second each) from the checkpoint's own fields before loading its arrays. The seed holds
    only the box predictor's arrays (so loading ends in a clean 'does not fit' error): a whole
    model's 45 MB would make every case take seconds, and its mutations would land in float
    weights. What this reader is for is the fields."""
    name, suffix = "checkpoint", ".npz"
    imports = ("tinymaskrcnn.engine.checkpoint", "tinymaskrcnn.models")

    def states(self):
        from tinymaskrcnn.engine import TrainConfig
        from tinymaskrcnn.models.registry import build_model

        kwargs = {"fpn_channels": 8, "representation_size": 8, "mask_channels": 4, "min_size": 64, "max_size": 96}
        model = build_model("maskrcnn_resnet18_fpn", 4, kwargs)
        predictor = {k: np.asarray(v) for k, v in model.state_dict().items()
                     if k.startswith("roi_heads.box_predictor.")}
        config = dataclasses.asdict(TrainConfig())
        return {"training": {"format": "tinymaskrcnn-train", "model_name": "maskrcnn_resnet18_fpn",
                             "model_kwargs": {**kwargs, "anchor_sizes": (16, 32, 64, 128, 256)}, "num_classes": 4,
                             "class_names": ["__background__", "circle", "square", "triangle"],
                             "model": predictor, "optimizer": {"state": {}, "param_groups": [{"lr": 0.01}]},
                             "iteration": 7, "config": config}}

    def run(self, path):
        from tinymaskrcnn.engine.checkpoint import load_model

        load_model(path)

    def mutate_meta(self, doc, rng):
        tree = doc.get("tree", {}).get("__dict__") if isinstance(doc, dict) else None
        if not isinstance(tree, dict) or rng.random() < 0.3:
            return m.json_value(doc, rng)
        field = rng.choice(list(CHECKPOINT_VALUES))
        value = rng.choice(CHECKPOINT_VALUES[field])
        if field in tree:
            tree[field] = value
        elif isinstance(tree.get("model_kwargs"), dict) and isinstance(tree["model_kwargs"].get("__dict__"), dict):
            tree["model_kwargs"]["__dict__"][field] = value
        else:
            tree[field] = value
        if rng.random() < 0.2:
            tree[rng.choice(("model", "model_kwargs", "format", "config", "class_names"))] = rng.choice(m.JSON_VALUES)
        return doc


# ---------------------------------------------------------------------------------------------
# COCO instances files
# ---------------------------------------------------------------------------------------------

def _coco_field(doc, rng):
    """One COCO-aware change: an image size pycocotools would rasterise for days (or crash on),
    a polygon far outside its image, an RLE whose counts string never ends a number, ids and
    references of the wrong type, a file name that is long, empty or leaves the folder, boxes,
    crowd flags and areas that are not numbers, entries repeated by the thousand."""
    images, anns, cats = doc["images"], doc["annotations"], doc["categories"]
    image, ann, cat = rng.choice(images), rng.choice(anns), rng.choice(cats)
    kind = rng.randrange(11)
    if kind == 0:
        for key in rng.choice((("height",), ("width",), ("height", "width"))):
            image[key] = rng.choice((2 ** 31, 2 ** 31 - 1, 10 ** 9, 65535, 46341, 0, -5, 1.5, "40", True, None,
                                     m.huge_int(5000)))
    elif kind == 1:  # a huge image with a polygon inside it
        size = rng.choice((10 ** 9, 2 ** 31, 10 ** 6, 46341))
        image["height"] = image["width"] = size
        ann["image_id"] = image["id"]
        ann["segmentation"] = [[1, 1, size - 2, 1, size - 2, size - 2, 1, size - 2]]
        ann["bbox"] = [1, 1, size - 3, size - 3]
        if rng.random() < 0.5:
            ann.pop("area", None)
    elif kind == 2:
        ann["segmentation"] = rng.choice((
            [[1e9, 1e9, -1e9, 1e9, 0, -1e9]], [[1e300] * 6], [[float("nan")] * 6], [[float("inf"), 0, 1, 1, 2, 2]],
            [[1, 2, 3, 4]], [[1, 2, 3, 4, 5]], [[]], [[[1, 2]]], [["1", 2, 3, 4, 5, 6]],
            [[v for _ in range(50_000) for v in (rng.uniform(0, 56), rng.uniform(0, 40))]], [1, 2, 3, 4, 5, 6],
            [[1, 1, 50, 1, 50, 30]] * 10_000, 5, None, ""))
        if rng.random() < 0.5:
            ann.pop("area", None)
    elif kind == 3:  # RLE
        height, width = image["height"], image["width"]
        ann["image_id"] = image["id"]
        counts = rng.choice((
            "o" * rng.choice((1000, 200_000, 1_000_000)),   # every character 'another follows'
            "0" * 100_000, "".join(chr(rng.randrange(48, 112)) for _ in range(1000)), "", "\u00e9",
            [height * width], [height * width - 1, 1], [2 ** 63], [-1, height * width + 1], [0] * 100_000,
            [1.5, 2], ["1"], 5, None))
        size = rng.choice(([height, width], [height, width], [2 ** 31, 2 ** 31], [0, 0], ["a", 1],
                           [height, width, 1], None))
        ann["segmentation"] = {"size": size, "counts": counts}
        ann["iscrowd"] = rng.choice((0, 1))
        if rng.random() < 0.5:
            ann.pop("area", None)
    elif kind == 4:
        target = rng.choice((image, ann, cat))
        target["id"] = rng.choice(([1], {"a": 1}, "1", 10 ** 30, 1.0, True, None, -1, m.huge_int(5000),
                                   rng.choice(anns)["id"], rng.choice(images)["id"]))
    elif kind == 5:
        key = rng.choice(("image_id", "category_id"))
        existing = ann[key]
        ann[key] = rng.choice((str(existing), float(existing) if isinstance(existing, int) else 1.0, [existing],
                               None, 10 ** 30, {"id": existing}))
    elif kind == 6:
        name = image["file_name"]
        image["file_name"] = rng.choice(("x" * 300, "x" * 5000, "../" + name, "", ".", "/", "a\x00b", 5, None,
                                         rng.choice(images)["file_name"], name + "/", "../../" * 50 + name))
    elif kind == 7:
        ann["bbox"] = rng.choice(([0, 0, 1e9, 1e9], [float("nan")] * 4, [-1e9, -1e9, 1, 1], ["a", 0, 1, 1], [0, 0, 1],
                                  [], None, [1e308] * 4, [0, 0, 0, 0], [0, 0, -5, -5], [m.huge_int(5000), 0, 1, 1]))
    elif kind == 8:
        ann["iscrowd"] = rng.choice((1, "1", 2, -1, None, True))
        ann["area"] = rng.choice((float("nan"), "x", -1, 1e308, None))
    elif kind == 9:
        cat["name"] = rng.choice((5, None, "", "x" * 100_000, ["a"], {"a": 1}))
        if rng.random() < 0.3:
            doc["categories"] = rng.choice(([], cats * 2, [{"id": 0, "name": "zero"}] + cats))
    else:
        key = rng.choice(("annotations", "images"))
        count = m.copies(len(json.dumps(doc[key][0])), rng.choice((10, 1000, 10_000)))
        doc[key] = [dict(e, id=e["id"] if rng.random() < 0.3 else 10_000 + n)
                    for n, e in enumerate(doc[key][:1] * count)] + doc[key]
    return doc


def _shapes_files(root):
    """The train split of a tiny shapes set: (instances file, image folder)."""
    from tinymaskrcnn.data import make_shapes_dataset

    splits = make_shapes_dataset(Path(root) / "shapes", num_train=4, num_val=1, image_size=IMAGE_SIZE, seed=0)
    ann_file, image_dir = splits["train"]
    return Path(ann_file), Path(image_dir)


class CocoReader(Reader):
    name, suffix = "coco", ".json"
    imports = ("tinymaskrcnn.data", "pycocotools.coco", "pycocotools.mask")

    def prepare(self, workdir):
        from PIL import Image

        super().prepare(workdir)
        self.ann_file, self.image_dir = _shapes_files(workdir)
        self.max_pixels = max(np.prod(Image.open(p).size) for p in self.image_dir.iterdir())

    def seeds(self, workdir):
        from tinymaskrcnn.data.annotations import mask_to_rle

        ann_file = self.ann_file
        doc = json.loads(ann_file.read_text())
        seeds = [("shapes.json", ann_file.read_bytes())]
        # the same annotations as RLE, both forms, one of them a crowd, and without the fields
        # COCOeval reads (filled in by the reader, rasterising the masks)
        rle = json.loads(json.dumps(doc))
        sizes = {im["id"]: (im["height"], im["width"]) for im in rle["images"]}
        for n, ann in enumerate(rle["annotations"]):
            mask = np.zeros(sizes[ann["image_id"]], bool)
            x, y, w, h = (int(v) for v in ann["bbox"])
            mask[y:y + max(h, 1), x:x + max(w, 1)] = True
            ann["segmentation"] = mask_to_rle(mask, compressed=n % 2 == 0)
            ann["iscrowd"] = int(n == 1)
        seeds.append(("rle.json", json.dumps(rle).encode()))
        bare = json.loads(json.dumps(doc))
        for ann in bare["annotations"]:
            ann.pop("area", None)
            ann.pop("iscrowd", None)
        seeds.append(("bare.json", json.dumps(bare, indent=1).encode()))
        return seeds

    def run(self, path):
        from tinymaskrcnn.data import CocoDetection, check_datasets

        dataset = CocoDetection(path, self.image_dir)
        check_datasets({"train": dataset})
        for index in range(min(3, len(dataset))):
            dataset[index]

    def names(self, path):
        return (str(path), str(self.image_dir))

    def allowance(self, path, size):
        # three items decoded: each image as float32 RGB plus a uint8 mask per annotation, of
        # which a file of this size holds at most one per 50 bytes
        return 3 * int(self.max_pixels) * (DECODE_BYTES + size // 50)

    def mutate(self, data, rng):
        if rng.random() < 0.1:
            return m.json_text(data, rng)
        doc = m.parse_json(data)
        valid = isinstance(doc, dict) and all(isinstance(doc.get(k), list) and doc[k] and
                                              all(isinstance(e, dict) for e in doc[k])
                                              for k in ("images", "annotations", "categories"))
        doc = _coco_field(doc, rng) if valid and rng.random() < 0.7 else m.json_value(doc, rng)
        return m.dump_json(doc, rng).encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

def _image_seeds():
    """Small images of every mode and format the readers meet, all IMAGE_SIZE."""
    from PIL import Image, features

    height, width = IMAGE_SIZE
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) % 256], axis=-1).astype(np.uint8)
    base = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turned a quarter
    images = [
        ("rgb.png", base, {}), ("grey.png", base.convert("L"), {}),
        ("palette.png", base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), {"transparency": 0}),
        ("rgba.png", base.convert("RGBA"), {}), ("bits.png", base.convert("1"), {}),
        ("grey16.png", Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)), {}),
        ("interlaced.png", base, {"interlace": 1}),
        ("rgb.jpg", base, {"quality": 90}), ("progressive.jpg", base, {"progressive": True}),
        ("grey.jpg", base.convert("L"), {}), ("exif.jpg", base, {"exif": exif.tobytes()}),
        ("rgb.bmp", base, {}), ("rgb.gif", base.convert("P"), {}), ("rgb.tif", base, {}),
    ]
    if features.check("webp"):
        images.append(("rgb.webp", base, {"lossless": True}))
    seeds = []
    for name, image, options in images:
        buffer = io.BytesIO()
        image.save(buffer, format={"jpg": "JPEG", "tif": "TIFF"}.get(name.rsplit(".")[-1],
                                                                    name.rsplit(".")[-1].upper()), **options)
        seeds.append((name, buffer.getvalue()))
    return seeds


class ImageReader(Reader):
    name, suffix = "image", ".img"
    imports = ("tinymaskrcnn.data",)

    def prepare(self, workdir):
        from PIL import Image

        super().prepare(workdir)
        Image.init()  # every format plugin imported before the children fork

    def seeds(self, workdir):
        return _image_seeds()

    def run(self, path):
        from tinymaskrcnn.data import load_image

        load_image(path, *IMAGE_SIZE)

    def allowance(self, path, size):
        return IMAGE_SIZE[0] * IMAGE_SIZE[1] * DECODE_BYTES  # the annotation's size

    def mutate(self, data, rng):
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return m.png_mutation(data, rng)
        if data[:2] == b"\xff\xd8":
            return m.jpeg_mutation(data, rng)
        return m.image_dimensions(data, rng)


class PredictReader(ImageReader):
    """``predict``: the photo turned upright by its EXIF orientation, no size to compare with, so
    the bound allows a decoded image of up to the project's documented pixel limit
    (``data.images.MAX_PIXELS``)."""
    name = "predict"

    def run(self, path):
        from tinymaskrcnn.data import load_image

        load_image(path, upright=True)

    def allowance(self, path, size):
        from tinymaskrcnn.data.images import MAX_PIXELS

        return MAX_PIXELS * DECODE_BYTES


# ---------------------------------------------------------------------------------------------
# metrics.jsonl
# ---------------------------------------------------------------------------------------------

class MetricsReader(Reader):
    name, suffix = "metrics", ".jsonl"
    imports = ("tinymaskrcnn.engine.checkpoint",)

    def seeds(self, workdir):
        lines = []
        for iteration in range(1, 11):
            record = {"iteration": iteration, "loss_classifier": 0.5 / iteration, "loss_mask": 0.7,
                      "loss": 1.2 / iteration, "grad_norm": None, "lr": 0.01, "time": 0.25}
            lines.append(json.dumps(record))
        metrics = {"bbox": {"AP": 0.1, "AP50": 0.3, "AP75": 0.05}, "segm": {"AP": 0.08, "AP50": 0.2, "AP75": 0.0}}
        lines.append(json.dumps({"iteration": 10, "eval": metrics}))
        return [("metrics.jsonl", ("\n".join(lines) + "\n").encode())]

    def run(self, path):
        from tinymaskrcnn.engine.checkpoint import truncate_metrics

        truncate_metrics(Path(path), 5, 10)

    def mutate(self, data, rng):
        lines = data.split(b"\n")
        k = rng.randrange(len(lines))
        kind = rng.random()
        if kind < 0.6:
            doc = m.parse_json(lines[k])
            lines[k] = m.dump_json(m.json_value(doc, rng), rng).encode("utf-8", "surrogatepass")
        elif kind < 0.8:
            lines[k] = m.json_text(lines[k], rng)
        else:
            lines[k:k] = [lines[k]] * m.copies(len(lines[k]), rng.choice((10, 10_000)))
        return b"\n".join(lines)


READERS = {reader.name: reader for reader in (PthReader, NpzReader, PretrainedReader, CheckpointReader, CocoReader,
                                              ImageReader, PredictReader, MetricsReader)}
