"""Data as users have it, checked before any work: image files missing from either split
reported together before training starts; annotations pycocotools cannot use left out with a
warning naming the file and annotation (never a pycocotools error or crash); images of every
mode and bit depth read sensibly, damaged ones named; ``predict`` on folders, one image in
memory at a time."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from tinymaskrcnn import cli, engine, weights
from tinymaskrcnn.data import CocoDetection, check_datasets, load_image, make_shapes_dataset
from tinymaskrcnn.data.annotations import compressed_rle_runs
from helpers import PEAK_RSS_MB
from test_cli import TINY_FLAGS
from test_engine import TINY_MODEL, make_tiny_shapes

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on NumPy 2


@pytest.fixture(scope="module")
def shapes_set(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("checks") / "set", num_train=6, num_val=2,
                               image_size=((48, 64), (48, 64)), max_objects=3)


def edited_annotations(shapes_set, tmp_path, edit):
    """A copy of the train annotations with ``edit(data)`` applied; (path, data)."""
    data = json.loads(open(shapes_set["train"].ann_file).read())
    edit(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return str(path), data


# ---------------------------------------------------------------------------------------------
# Annotations pycocotools cannot use
# ---------------------------------------------------------------------------------------------

def _square_rle(h, w):
    mask = np.zeros((h, w), np.uint8)
    mask[2:6, 3:9] = 1
    return mask_utils.encode(np.asfortranarray(mask))


# (name, the bad value as a function of the image's (h, w), what the warning says about it)
MALFORMED = [
    ("one point", lambda h, w: [[10, 12]], "polygon 0 has 2 coordinate(s)"),
    ("empty polygon", lambda h, w: [[]], "polygon 0 has 0 coordinate(s)"),
    ("no polygons", lambda h, w: [], "an empty list of polygons"),
    ("two points", lambda h, w: [[10, 12, 30, 32]], "polygon 0 has 4 coordinate(s)"),  # pycocotools: a box
    ("odd count", lambda h, w: [[10, 12, 30, 32, 20, 40, 5]], "polygon 0 has 7 coordinate(s)"),
    ("not a number", lambda h, w: [[10, "a", 30, 32, 20, 40]], "holds 'a', which is not a number"),
    ("null", lambda h, w: [[10, None, 30, 32, 20, 40]], "holds None, which is not a number"),  # pycocotools: OOM
    ("nested", lambda h, w: [[[10, 12], [30, 32], [20, 40]]], "holds [10, 12], which is not a number"),
    ("infinite", lambda h, w: [[10, 12, float("inf"), 32, 20, 40]], "not a finite number"),
    ("far away", lambda h, w: [[10, 12, 1e30, 32, 20, 40]], "reaches far outside the"),  # pycocotools: crash
    ("a string", lambda h, w: "abc", "segmentation is str 'abc'"),
    ("RLE of another size", lambda h, w: {"size": [h + 1, w], "counts": [(h + 1) * w]}, "RLE size"),
    ("RLE runs too short", lambda h, w: {"size": [h, w], "counts": [3, 4]}, "RLE runs cover 7 pixels"),
    ("RLE negative run", lambda h, w: {"size": [h, w], "counts": [-5, h * w + 5]}, "non-negative integers"),
    ("RLE string garbage", lambda h, w: {"size": [h, w], "counts": "~~~~"}, "not a valid compressed RLE"),
    ("RLE string of a smaller mask", lambda h, w: {"size": [h, w], "counts": _square_rle(h - 1, w)["counts"].decode()},
     "RLE runs cover"),
    ("RLE counts a number", lambda h, w: {"size": [h, w], "counts": 12}, "RLE counts is int"),
]


@pytest.mark.parametrize("name, bad, reason", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_unusable_segmentation_is_left_out_with_a_warning(shapes_set, tmp_path, name, bad, reason):
    def spoil(data):
        ann = data["annotations"][1]
        image = next(im for im in data["images"] if im["id"] == ann["image_id"])
        ann["segmentation"] = bad(image["height"], image["width"])

    path, data = edited_annotations(shapes_set, tmp_path, spoil)
    spoiled = data["annotations"][1]
    with pytest.warns(UserWarning) as record:
        ds = CocoDetection(path, shapes_set["train"].image_dir)
    (message,) = [str(w.message) for w in record if "pycocotools cannot use" in str(w.message)]
    assert path in message and f"id {spoiled['id']}: " in message and reason in message
    assert spoiled["id"] not in ds.coco.anns  # neither a target nor ground truth for COCOeval
    for ann in ds.coco.anns.values():
        ds.coco.annToRLE(ann)  # what COCOeval does with the ground truth
    before = sum(a["image_id"] == spoiled["image_id"] and not a.get("iscrowd", 0) for a in data["annotations"])
    for i in range(len(ds)):
        image, target = ds[i]
        if target["image_id"] == spoiled["image_id"]:
            assert len(target["labels"]) == before - 1


def test_unusable_box_is_left_out_and_crowd_regions_are_checked_too(shapes_set, tmp_path):
    def spoil(data):
        data["annotations"][0]["bbox"] = ["a", 1, 2, 3]
        data["annotations"][2].update(iscrowd=1, segmentation={"size": [1, 1], "counts": [1]})

    path, data = edited_annotations(shapes_set, tmp_path, spoil)
    with pytest.warns(UserWarning, match="left out 2 annotation") as record:
        ds = CocoDetection(path, shapes_set["train"].image_dir)
    message = str(record[0].message)
    assert f"id {data['annotations'][0]['id']}: bbox ['a', 1, 2, 3] is not four finite numbers" in message
    assert f"id {data['annotations'][2]['id']}: RLE size [1, 1]" in message
    assert not {data["annotations"][k]["id"] for k in (0, 2)} & set(ds.coco.anns)


def test_bad_polygons_are_removed_and_the_good_ones_kept(shapes_set, tmp_path):
    good = [4.0, 4.0, 20.0, 4.0, 20.0, 18.0, 4.0, 18.0]

    def spoil(data):
        data["annotations"][0]["segmentation"] = [[1, 2, 3, 4], good, [7]]

    path, data = edited_annotations(shapes_set, tmp_path, spoil)
    ann = data["annotations"][0]
    with pytest.warns(UserWarning, match=r"removed the unusable polygons of 1 annotation\(s\)") as record:
        ds = CocoDetection(path, shapes_set["train"].image_dir)
    assert (f"id {ann['id']}: polygon 0 has 4 coordinate(s)" in str(record[0].message)
            and "polygon 2 has 1 coordinate(s)" in str(record[0].message))
    _, target = ds[ds.ids.index(ann["image_id"])]
    image = next(im for im in data["images"] if im["id"] == ann["image_id"])
    expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([good], image["height"], image["width"])))
    k = [a["id"] for a in ds.coco.imgToAnns[ann["image_id"]]].index(ann["id"])
    np.testing.assert_array_equal(target["masks"][k], expected)


def test_compressed_rle_runs_read_pycocotools_strings():
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (5, 7), (40, 33), (64, 64)]:
        for density in (0.0, 0.02, 0.5, 1.0):
            mask = (rng.random((h, w)) < density).astype(np.uint8)
            rle = mask_utils.encode(np.asfortranarray(mask))
            runs = compressed_rle_runs(rle["counts"].decode())
            values = np.arange(len(runs)) % 2  # runs alternate 0, 1, 0, ... starting with zeros
            np.testing.assert_array_equal(np.repeat(values, runs), mask.ravel(order="F"))
    assert compressed_rle_runs("1") == [1] and compressed_rle_runs("\x7f") is None
    assert compressed_rle_runs("o") is None  # a continuation bit with nothing after it


def test_annotations_without_segmentation_are_refused_when_read(shapes_set, tmp_path):
    path, data = edited_annotations(shapes_set, tmp_path, lambda d: [a.pop("segmentation") for a in d["annotations"][:2]])
    with pytest.raises(ValueError, match=rf"2 of {len(data['annotations'])} annotations have no 'segmentation' "
                                         rf"\(ids \[1, 2\]\)"):
        CocoDetection(path, shapes_set["train"].image_dir)


def test_area_and_iscrowd_are_filled_in_for_cocoeval(shapes_set, tmp_path):
    """Files from other tools may lack ``area`` and ``iscrowd``; COCOeval reads both (a
    KeyError at the end of training before). Filled in, the ground truth scores AP 1."""
    from tinymaskrcnn.engine.evaluation import Evaluator

    original = {a["id"]: a for a in json.loads(open(shapes_set["train"].ann_file).read())["annotations"]}

    def strip(data):
        for ann in data["annotations"]:
            del ann["area"], ann["iscrowd"]
        data["annotations"][0]["area"] = "big"

    path, _ = edited_annotations(shapes_set, tmp_path, strip)
    ds = CocoDetection(path, shapes_set["train"].image_dir)
    for ann_id, ann in ds.coco.anns.items():  # the shapes set's areas are its masks' pixel counts
        assert ann["iscrowd"] == 0 and ann["area"] == original[ann_id]["area"]
    evaluator = Evaluator(ds)
    for i in range(len(ds)):
        _, t = ds[i]
        evaluator.update([t], [{"boxes": t["boxes"], "labels": t["labels"], "scores": np.ones(len(t["labels"])),
                                "masks": t["masks"][:, None].astype(np.float32)}])
    metrics = evaluator.summarize(verbose=False)
    assert metrics["bbox"]["AP"] == pytest.approx(1.0) and metrics["segm"]["AP"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# Image files checked before training
# ---------------------------------------------------------------------------------------------

def test_train_reports_every_missing_image_of_both_splits_before_starting(tmp_path, capsys):
    data = tmp_path / "shapes"
    make_tiny_shapes(data)
    train_images = sorted((data / "images" / "train").iterdir())
    for p in train_images[:4]:
        p.unlink()
    val_images = sorted((data / "images" / "val").iterdir())
    val_images[0].unlink()
    Image.new("RGB", (10, 12)).save(val_images[1])  # the annotation file says 64x64
    val_images[2].write_text("not an image")
    rc = cli.main(["train", "--data", str(data), "--out-dir", str(tmp_path / "run")] + TINY_FLAGS)
    err = capsys.readouterr().err
    assert rc == 2
    train_line = next(line for line in err.splitlines() if line.strip().startswith("train ("))
    assert (f"4 of 8 image files are missing from {data / 'images' / 'train'}: " in train_line
            and ", ".join(p.name for p in train_images[:3]) + ", and 1 more" in train_line)
    val_lines = [line for line in err.splitlines() if line.strip().startswith("val (")]
    assert len(val_lines) == 3
    assert f"1 of 4 image files are missing from {data / 'images' / 'val'}: {val_images[0].name}" in val_lines[0]
    assert f"1 of 4 image files are not images Pillow can read: {val_images[2].name}" in val_lines[1]
    assert f"1 of 4 images differ in size (HxW) from the annotation file: {val_images[1].name} is 12x10" in val_lines[2]
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


def test_check_datasets_passes_good_data_and_skips_absent_splits(shapes_set):
    train = CocoDetection(*shapes_set["train"])
    assert train.image_problems() == []
    assert check_datasets({"train": train, "val": None}) is None


# ---------------------------------------------------------------------------------------------
# Images of every kind
# ---------------------------------------------------------------------------------------------

def test_16_bit_images_are_scaled_by_their_range_not_clipped(tmp_path):
    grey = (np.arange(24 * 32).reshape(24, 32) * 85).astype(np.uint16)  # 0 .. 65195
    Image.fromarray(grey).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    image = load_image(tmp_path / "deep.png", 24, 32)
    assert image.shape == (3, 24, 32) and image.dtype == np.float32
    np.testing.assert_allclose(image, np.broadcast_to(grey / 65535, (3, 24, 32)), rtol=1e-6)
    # 32-bit integers in the 16-bit range (how older Pillow opens 16-bit PNGs), from a TIFF
    Image.fromarray(grey.astype(np.int32)).save(tmp_path / "int.tif")
    np.testing.assert_allclose(load_image(tmp_path / "int.tif"), np.broadcast_to(grey / 65535, (3, 24, 32)), rtol=1e-6)
    Image.fromarray(grey.astype(np.int32) * 100).save(tmp_path / "wide.tif")
    with pytest.raises(ValueError, match="wide.tif holds 32-bit integer pixels from 0 to 6519500"):
        load_image(tmp_path / "wide.tif")
    ramp = np.linspace(0, 1, 24 * 32, dtype=np.float32).reshape(24, 32)
    Image.fromarray(ramp).save(tmp_path / "float.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "float.tif"), np.broadcast_to(ramp, (3, 24, 32)))
    Image.fromarray(ramp * 4).save(tmp_path / "bright.tif")
    with pytest.raises(ValueError, match=r"bright.tif holds floating-point pixels outside \[0, 1\]"):
        load_image(tmp_path / "bright.tif")


def test_greyscale_palette_and_alpha_images(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (10, 14), dtype=np.uint8)
    grey = rgb[..., 0]

    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(load_image(tmp_path / "grey.png"), np.broadcast_to(grey / np.float32(255), (3, 10, 14)))
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    a = alpha[..., None] / np.float32(255)
    over_white = (rgb / np.float32(255)) * a + (1 - a)
    np.testing.assert_allclose(load_image(tmp_path / "rgba.png"), over_white.transpose(2, 0, 1), atol=1e-6)
    Image.fromarray(np.dstack([grey, alpha])).save(tmp_path / "la.png")
    grey_over_white = (grey / np.float32(255)) * a[..., 0] + (1 - a[..., 0])
    np.testing.assert_allclose(load_image(tmp_path / "la.png"), np.broadcast_to(grey_over_white, (3, 10, 14)), atol=1e-6)
    # a palette image whose entry 0 is transparent: those pixels show white
    indices = rng.integers(0, 4, (10, 14), dtype=np.uint8)
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]
    im = Image.fromarray(indices, mode="P")
    im.putpalette(palette)
    im.save(tmp_path / "palette.png", transparency=0)
    expected = np.array(palette, np.float32).reshape(4, 3)[indices] / 255
    expected[indices == 0] = 1.0
    np.testing.assert_array_equal(load_image(tmp_path / "palette.png"), expected.transpose(2, 0, 1))


def test_upright_follows_the_exif_orientation(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: a viewer turns the stored picture 90 degrees clockwise
    Image.fromarray(rgb).save(tmp_path / "phone.png", exif=exif)
    stored = load_image(tmp_path / "phone.png")
    np.testing.assert_array_equal(stored, rgb.transpose(2, 0, 1) / np.float32(255))
    upright = load_image(tmp_path / "phone.png", upright=True)
    np.testing.assert_array_equal(upright, np.rot90(stored, k=-1, axes=(1, 2)))  # turned clockwise


def test_damaged_images_are_named(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    whole = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(OSError, match=f"{tmp_path / 'cut.jpg'}: cannot read the image .*truncated"):
        load_image(tmp_path / "cut.jpg")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(OSError, match=f"{tmp_path / 'text.png'}: cannot read the image"):
        load_image(tmp_path / "text.png")


# ---------------------------------------------------------------------------------------------
# predict: folders, damaged files, memory
# ---------------------------------------------------------------------------------------------

def tiny_checkpoint(path, **model_kwargs):
    """A checkpoint as training writes it, of an untrained tiny model (no training needed)."""
    kwargs = {**TINY_MODEL, **model_kwargs}
    model = engine.build_model("maskrcnn_resnet18_fpn", 4, kwargs)
    weights.save(path, {"format": engine.CHECKPOINT_FORMAT, "model_name": "maskrcnn_resnet18_fpn",
                        "model_kwargs": kwargs, "num_classes": 4,
                        "class_names": ["__background__", "circle", "square", "triangle"],
                        "model": model.state_dict()})
    return str(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.npz")


def test_predict_a_folder_predicts_every_image_in_it(checkpoint, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("b.png", "a.jpg", "c.PNG"):
        Image.new("RGB", (40, 30), (200, 50, 50)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert cli.main(["predict", checkpoint, str(folder), "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / f"{n}.{ext}") for n in ("a", "b", "c") for ext in ("png", "json")]
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in printed)

    (tmp_path / "empty").mkdir()
    assert cli.main(["predict", checkpoint, str(tmp_path / "empty")]) == 2
    assert f"{tmp_path / 'empty'} is a folder with no image files in it" in capsys.readouterr().err
    assert cli.main(["predict", checkpoint, str(folder), "--out-dir", str(folder)]) == 2
    assert "would overwrite the input images" in capsys.readouterr().err
    assert sorted(os.listdir(folder)) == ["a.jpg", "b.png", "c.PNG", "notes.txt"]


def test_predict_names_a_truncated_image_in_one_line(checkpoint, tmp_path, capsys):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    whole = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[:len(whole) // 2])
    assert cli.main(["predict", checkpoint, str(tmp_path / "cut.jpg"), "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'cut.jpg'}: cannot read the image" in err


PEAK_RSS = PEAK_RSS_MB + """
import sys
from tinymaskrcnn import cli
rc = cli.main(["predict", *sys.argv[1:]])
print(rc, peak_rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM of /proc/self/status is Linux's")
def test_predict_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """Peak memory of ``predict`` on 2 and on 6 large images: each decoded image is 23 MB, so
    holding them all would add 92 MB; streamed, the peaks are the same."""
    # box_score_thresh 1: nothing is detected, so the peak is the images' and not the masks'
    checkpoint = tiny_checkpoint(tmp_path / "checkpoint.npz", box_score_thresh=1.0)
    height, width = 1200, 1600
    image_mb = 3 * height * width * 4 / 2**20
    paths = []
    for k in range(6):
        paths.append(str(tmp_path / f"{k}.png"))
        Image.new("RGB", (width, height), (40 * k, 90, 160)).save(paths[-1])

    def peak_mb(images):
        out = subprocess.run([sys.executable, "-c", PEAK_RSS, checkpoint, *images, "--out-dir", str(tmp_path / "out")],
                             capture_output=True, text=True, check=True)
        rc, megabytes = out.stdout.split("\n")[-2].split()
        assert rc == "0", out.stderr
        return float(megabytes)

    few, many = peak_mb(paths[:2]), peak_mb(paths)
    assert many - few < 1.5 * image_mb, (f"peak memory {few:.0f} MB for 2 images, {many:.0f} MB for 6: it grows "
                                         f"with the images ({image_mb:.0f} MB each)")
