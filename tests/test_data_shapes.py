"""The synthetic shapes set: valid COCO, masks/boxes/areas that agree, determinism, caching."""
import json

import numpy as np
import pytest
from PIL import Image
from helpers import load_coco, tight_box
from pycocotools import mask as mask_utils

from tinymaskrcnn.data import shapes
from tinymaskrcnn.data.annotations import mask_to_rle
from tinymaskrcnn.data.shapes import SHAPES, classification_set, ensure_shapes_dataset, make_shapes_dataset, mask_to_polygons, shape_mask

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on NumPy 2
SMALL = dict(num_train=10, num_val=3, image_size=((64, 96), (64, 96)), max_objects=4)


@pytest.fixture(scope="module")
def shapes_set(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "set", **SMALL)


@pytest.mark.parametrize("split", ["train", "val"])
def test_loads_in_pycocotools_with_matching_images(shapes_set, split):
    ann_file, image_dir = shapes_set[split]
    coco = load_coco(ann_file)
    assert len(coco.imgs) == SMALL[f"num_{split}"]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPES)
    for info in coco.imgs.values():
        with Image.open(f"{image_dir}/{info['file_name']}") as im:
            assert im.mode == "RGB" and im.size == (info["width"], info["height"])
        assert 64 <= info["height"] <= 96 and 64 <= info["width"] <= 96
        assert 1 <= len(coco.getAnnIds(imgIds=info["id"])) <= SMALL["max_objects"]


def test_masks_boxes_and_areas_agree(shapes_set):
    coco = load_coco(shapes_set["train"].ann_file)
    kinds = set()
    for image_id, info in coco.imgs.items():
        covered = np.zeros((info["height"], info["width"]), dtype=int)
        for ann in coco.imgToAnns[image_id]:
            seg = ann["segmentation"]
            kind = "polygon" if isinstance(seg, list) else type(seg["counts"]).__name__
            kinds.add(kind)
            mask = coco.annToMask(ann)  # decoded by pycocotools, independently of our encoder
            assert ann["iscrowd"] == 0 and ann["category_id"] in (1, 2, 3)
            # exact even for polygons: the generator checks each polygon decodes to its mask
            assert ann["area"] == mask.sum(), (ann["id"], kind)
            x1, y1, x2, y2 = tight_box(mask)
            assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1], (ann["id"], kind)
            assert mask.sum() >= 20
            covered += mask
        assert covered.max() <= 1, f"image {image_id}: visible masks overlap (occlusion not applied)"
    assert kinds == {"polygon", "str", "list"}  # polygons, compressed RLE and uncompressed RLE


def test_objects_have_their_colour_inside_the_mask(shapes_set):
    """The annotation describes what is drawn: pixels of one visible mask share one colour
    (up to the noise), unlike the background around it."""
    coco = load_coco(shapes_set["val"].ann_file)
    for info in coco.imgs.values():
        pixels = np.asarray(Image.open(f"{shapes_set['val'].image_dir}/{info['file_name']}"), dtype=float)
        for ann in coco.imgToAnns[info["id"]]:
            inside = pixels[coco.annToMask(ann).astype(bool)]
            assert inside.std(axis=0).max() < 0.06 * 255  # noise sigma is 0.03


def test_mask_to_polygons_round_trips_and_refuses_holes(rng):
    for kind in SHAPES * 4:
        mask = shape_mask(kind, *rng.uniform(20, 40, 2), rng.uniform(3, 18), 60, 60, rng.uniform(0, 6))
        rles = mask_utils.frPyObjects(mask_to_polygons(mask), 60, 60)
        np.testing.assert_array_equal(mask_utils.decode(mask_utils.merge(rles)), mask)
    ring = shape_mask("circle", 30, 30, 20, 60, 60) & ~shape_mask("circle", 30, 30, 8, 60, 60)
    assert mask_to_polygons(ring) is None  # polygons cannot hold a hole: the caller uses RLE
    two = shape_mask("circle", 15, 15, 6, 60, 60) | shape_mask("square", 45, 45, 6, 60, 60)
    assert len(mask_to_polygons(two)) == 2


@pytest.mark.parametrize("compressed", [True, False])
def test_mask_to_rle_round_trips(rng, compressed):
    for mask in [rng.random((7, 9)) < 0.5, np.ones((5, 4), bool), np.zeros((3, 6), bool)]:
        rle = mask_to_rle(mask, compressed=compressed)
        if not compressed:
            rle = mask_utils.frPyObjects(rle, *mask.shape)
        np.testing.assert_array_equal(mask_utils.decode(rle), mask)


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    kw = dict(SMALL, num_train=3, num_val=1)
    a = make_shapes_dataset(tmp_path / "a", **kw)
    b = make_shapes_dataset(tmp_path / "b", **kw)
    c = make_shapes_dataset(tmp_path / "c", seed=1, **kw)
    for split in ("train", "val"):
        text = open(a[split].ann_file, "rb").read()
        assert text == open(b[split].ann_file, "rb").read()
        assert text != open(c[split].ann_file, "rb").read()
    png = "images/train/000001.png"
    assert (tmp_path / "a" / png).read_bytes() == (tmp_path / "b" / png).read_bytes()


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_ensure_keeps_one_folder_per_set_and_never_regenerates(tmp_path, monkeypatch):
    """The cache a training run uses: a set of other settings (another seed) gets a folder of its
    own, so a run reading one set never sees it redrawn under it; a set once made is reused."""
    kw = dict(SMALL, num_train=2, num_val=1)
    root = tmp_path / "cache"
    paths = ensure_shapes_dataset(root, **kw)
    (folder,) = root.iterdir()
    assert folder.name.startswith("train2-val1-seed0-") and json.loads((folder / shapes.STAMP).read_text())["num_train"] == 2
    first = _files(folder)

    def refuse(*args):
        raise AssertionError("regenerated although the set is there")

    with monkeypatch.context() as m:
        m.setattr(shapes, "_write_split", refuse)
        assert ensure_shapes_dataset(root, **kw) == paths
    other = ensure_shapes_dataset(root, **dict(kw, seed=1))
    assert len(json.loads(open(other["train"].ann_file).read())["images"]) == 2
    assert other["train"].ann_file != paths["train"].ann_file and _files(folder) == first  # the first set untouched
    assert len(list(root.iterdir())) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no temporaries

    # looking a set up (evaluating a run's checkpoint) creates nothing
    assert shapes.find_shapes_dataset(root, **kw) == paths
    with pytest.raises(FileNotFoundError, match=r"no shapes set with num_train 2, num_val 1, .*seed 2 in "):
        shapes.find_shapes_dataset(root, **dict(kw, seed=2))
    with pytest.raises(FileNotFoundError):
        shapes.find_shapes_dataset(tmp_path / "elsewhere" / "deep", **kw)
    assert len(list(root.iterdir())) == 2 and not (tmp_path / "elsewhere").exists()
    with pytest.raises(TypeError, match="num_trian"):
        ensure_shapes_dataset(root, num_trian=3)


def test_a_root_holding_other_things_is_refused_and_nothing_is_deleted(tmp_path):
    """A run folder placed in the shapes root, a root holding a set of other settings itself, a
    set folder holding a file of its own: each is refused by name, and every file stays."""
    kw = dict(SMALL, num_train=2, num_val=1)
    cache = tmp_path / "cache"
    ensure_shapes_dataset(cache, **kw)
    (cache / "run1").mkdir()
    (cache / "run1" / "checkpoint.npz").write_bytes(b"weights")
    before = _files(cache)
    with pytest.raises(FileExistsError, match=r"cache holds things other than shapes sets \(run1\)"):
        ensure_shapes_dataset(cache, **dict(kw, seed=3))
    assert _files(cache) == before

    own = tmp_path / "own"
    make_shapes_dataset(own, **kw)  # a set made at the root itself, as an earlier version did
    assert ensure_shapes_dataset(own, **kw) == shapes.shapes_paths(own)  # the same settings: used where it is
    with pytest.raises(FileExistsError, match=r"own holds a shapes set of other settings itself"):
        ensure_shapes_dataset(own, **dict(kw, seed=1))

    (own / "images" / "train" / "notes.txt").write_text("mine")
    (own / "images" / "train" / "000099.png").write_bytes(b"not one of the set's two images")
    kept = _files(own)
    with pytest.raises(FileExistsError, match=r"own holds files that are not its shapes set's "
                                              r"\(images/train/000099.png, images/train/notes.txt\)"):
        make_shapes_dataset(own, **dict(kw, seed=1))
    assert _files(own) == kept and sorted(p.name for p in tmp_path.iterdir()) == ["cache", "own"]
    (own / "images" / "train" / "notes.txt").unlink()
    (own / "images" / "train" / "000099.png").unlink()
    make_shapes_dataset(own, **dict(kw, seed=1))  # only the set's own files: replaced
    assert json.loads((own / shapes.STAMP).read_text())["seed"] == 1

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="mine exists and is not a shapes data set .*notes.txt"):
        make_shapes_dataset(foreign, **kw)
    with pytest.raises(FileExistsError, match=r"mine holds things other than shapes sets \(notes.txt\)"):
        ensure_shapes_dataset(foreign, **kw)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    write_split = shapes._write_split

    def fail_on_val(folder, split, *args):
        if split == "val":
            raise KeyboardInterrupt
        write_split(folder, split, *args)

    monkeypatch.setattr(shapes, "_write_split", fail_on_val)
    with pytest.raises(KeyboardInterrupt):
        make_shapes_dataset(tmp_path / "set", **dict(SMALL, num_train=2, num_val=1))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [dict(image_size=(16, 64)), dict(image_size=(64,)), dict(max_objects=0),
                                 dict(num_train=-1), dict(seed=-2), dict(min_visible=1.5)])
def test_bad_parameters_are_named(tmp_path, bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        make_shapes_dataset(tmp_path / "set", **bad)


def test_classification_set_still_works():
    images, labels = classification_set(6, size=32, seed=3)
    assert images.shape == (6, 3, 32, 32) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 1 and set(labels) <= {0, 1, 2}
    again, _ = classification_set(6, size=32, seed=3)
    np.testing.assert_array_equal(images, again)


def test_scene_is_draw_scene_as_the_detector_takes_it():
    from tinymaskrcnn.data.shapes import draw_scene, scene

    image, target = scene(3, 96, 112, max_objects=4)
    pixels, objects = draw_scene(np.random.default_rng(3), 96, 112, 4)
    assert image.dtype == np.float32 and image.shape == (3, 96, 112)
    np.testing.assert_array_equal(image * 255, pixels.transpose(2, 0, 1).astype(np.float32))
    assert target["labels"].tolist() == [category for category, _ in objects]
    np.testing.assert_array_equal(target["masks"], np.stack([m for _, m in objects]))
    for box, (_, mask) in zip(target["boxes"], objects):
        assert box.tolist() == tight_box(mask)      # the tests' own reference, from the mask's pixels
