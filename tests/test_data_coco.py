"""CocoDetection (formats, crowd, label mapping, results, errors) and coco_subset."""
import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image
from helpers import load_coco
from pycocotools.cocoeval import COCOeval

from tinymaskrcnn.data import CocoDetection, coco_subset, make_shapes_dataset

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on NumPy 2


@pytest.fixture(scope="module")
def shapes_set(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("coco") / "set", num_train=8, num_val=2,
                               image_size=((64, 80), (64, 80)))


def rewritten(shapes_set, tmp_path, edit, name="edited.json"):
    """A copy of the shapes train annotations changed by ``edit(data)``."""
    data = json.loads(open(shapes_set["train"].ann_file).read())
    edit(data)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_items_have_the_model_format(shapes_set):
    ds = CocoDetection(*shapes_set["train"])
    coco = load_coco(shapes_set["train"].ann_file)
    assert len(ds) == 8 and ds.num_classes == 4
    assert ds.category_names == ["__background__", "circle", "square", "triangle"]
    for i in range(len(ds)):
        image, target = ds[i]
        info = coco.imgs[target["image_id"]]
        h, w = info["height"], info["width"]
        assert image.shape == (3, h, w) and image.dtype == np.float32
        pixels = np.asarray(Image.open(f"{shapes_set['train'].image_dir}/{info['file_name']}"))
        np.testing.assert_array_equal(image, pixels.transpose(2, 0, 1).astype(np.float32) / 255)
        anns = coco.imgToAnns[target["image_id"]]
        assert isinstance(target["image_id"], int)
        assert target["boxes"].dtype == np.float32 and target["boxes"].shape == (len(anns), 4)
        assert target["labels"].dtype == np.int64 and target["labels"].shape == (len(anns),)
        assert target["masks"].dtype == np.uint8 and target["masks"].shape == (len(anns), h, w)
        for k, ann in enumerate(anns):
            x, y, bw, bh = ann["bbox"]
            np.testing.assert_array_equal(target["boxes"][k], [x, y, x + bw, y + bh])
            np.testing.assert_array_equal(target["masks"][k], coco.annToMask(ann))
            assert target["labels"][k] == ann["category_id"]  # shapes ids are already 1..3
    with pytest.raises(IndexError, match="out of range"):
        ds[len(ds)]


def test_crowd_is_excluded_and_empty_images_kept_or_skipped(shapes_set, tmp_path):
    def add_crowd(data):
        first, second = data["images"][:2]
        h, w = second["height"], second["width"]
        crowd = {"size": [h, w], "counts": [h * 2, h * 3, h * w - h * 5]}  # uncompressed RLE, columns 2-4
        # image 1's own annotations all become crowd, and one crowd region is added to image 2
        for ann in data["annotations"]:
            if ann["image_id"] == first["id"]:
                ann["iscrowd"] = 1
        data["annotations"].append({"id": 999, "image_id": second["id"], "category_id": 2,
                                    "segmentation": crowd, "area": float(h * 3), "bbox": [2, 0, 3, h],
                                    "iscrowd": 1})

    path = rewritten(shapes_set, tmp_path, add_crowd)
    plain = CocoDetection(*shapes_set["train"])
    kept = CocoDetection(path, shapes_set["train"].image_dir)
    skipped = CocoDetection(path, shapes_set["train"].image_dir, skip_empty=True)
    assert len(kept) == 8 and len(skipped) == 7 and 1 not in skipped.ids
    _, target = kept[0]
    h, w = target["masks"].shape[1:]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,) and target["masks"].shape == (0, h, w)
    for key in ("boxes", "labels", "masks"):
        np.testing.assert_array_equal(kept[1][1][key], plain[1][1][key])  # the crowd region is not a target


def test_labels_are_contiguous_and_map_back(shapes_set, tmp_path):
    cat_ids = {1: 17, 2: 5, 3: 90}  # gaps and a different order, as in the official COCO ids

    def renumber(data):
        for c in data["categories"]:
            c["id"] = cat_ids[c["id"]]
        for a in data["annotations"]:
            a["category_id"] = cat_ids[a["category_id"]]

    path = rewritten(shapes_set, tmp_path, renumber)
    ds = CocoDetection(path, shapes_set["train"].image_dir)
    assert ds.category_ids == [5, 17, 90]
    assert ds.category_names == ["__background__", "square", "circle", "triangle"]
    coco = load_coco(path)
    for i in range(len(ds)):
        _, target = ds[i]
        original = [a["category_id"] for a in coco.imgToAnns[target["image_id"]]]
        assert [ds.category_id_to_label(c) for c in original] == target["labels"].tolist()
        assert ds.label_to_category_id(target["labels"]).tolist() == original
    assert ds.label_to_category_id(3) == 90
    with pytest.raises(ValueError, match="category id 999 is not in"):
        ds.category_id_to_label(999)
    with pytest.raises(ValueError, match="0 is background"):
        ds.label_to_category_id([0, 1])


def test_ground_truth_written_as_results_scores_perfect_ap(shapes_set, tmp_path):
    """The inverse mapping end to end: the targets, written back as detections through
    ``to_coco_results``, must score AP 1 in COCOeval for boxes and masks."""
    def shift_ids(data):  # ids 11..13, so a missing inverse mapping would score zero
        for c in data["categories"]:
            c["id"] += 10
        for a in data["annotations"]:
            a["category_id"] += 10

    path = rewritten(shapes_set, tmp_path, shift_ids)
    ds = CocoDetection(path, shapes_set["train"].image_dir)
    results = []
    for i in range(len(ds)):
        _, t = ds[i]
        prediction = {"boxes": t["boxes"], "labels": t["labels"], "scores": np.ones(len(t["labels"])),
                      "masks": t["masks"][:, None].astype(np.float32)}
        results += ds.to_coco_results(t["image_id"], prediction)
    gt = load_coco(path)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        for iou_type in ("bbox", "segm"):
            ev = COCOeval(gt, dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            assert ev.stats[0] == pytest.approx(1.0), iou_type


def test_degenerate_boxes_are_left_out_with_a_warning(shapes_set, tmp_path):
    def flatten_first(data):
        data["annotations"][0]["bbox"][2] = 0.0

    path = rewritten(shapes_set, tmp_path, flatten_first)
    with pytest.warns(UserWarning, match=r"1 annotation\(s\) whose box is empty"):
        ds = CocoDetection(path, shapes_set["train"].image_dir)
    first = json.loads(open(path).read())["annotations"][0]
    _, target = ds[ds.ids.index(first["image_id"])]
    assert len(target["boxes"]) == len(load_coco(path).imgToAnns[first["image_id"]]) - 1


def test_clear_errors(shapes_set, tmp_path):
    image_dir = shapes_set["train"].image_dir
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoDetection(tmp_path / "nope.json", image_dir)
    (tmp_path / "text.json").write_text("this is not json")
    with pytest.raises(ValueError, match="text.json is not valid JSON"):
        CocoDetection(tmp_path / "text.json", image_dir)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="list.json is not a COCO instances file"):
        CocoDetection(tmp_path / "list.json", image_dir)
    path = rewritten(shapes_set, tmp_path, lambda d: d.pop("annotations"), "noanns.json")
    with pytest.raises(ValueError, match=r"noanns.json is not a COCO instances file: missing \['annotations'\]"):
        CocoDetection(path, image_dir)
    path = rewritten(shapes_set, tmp_path, lambda d: d["images"][0].pop("height"), "noheight.json")
    with pytest.raises(ValueError, match=r"image number 0 lacks \['height'\]"):
        CocoDetection(path, image_dir)
    path = rewritten(shapes_set, tmp_path, lambda d: d["annotations"][2].update(category_id=42), "badcat.json")
    with pytest.raises(ValueError, match="annotation 3 has category_id 42, which is not in 'categories'"):
        CocoDetection(path, image_dir)
    path = rewritten(shapes_set, tmp_path, lambda d: d["images"][0].update(file_name="gone.png"), "gone.json")
    ds = CocoDetection(path, image_dir)
    with pytest.raises(FileNotFoundError, match="gone.png"):
        ds[0]
    path = rewritten(shapes_set, tmp_path, lambda d: d["images"][0].update(width=d["images"][0]["width"] + 1),
                     "wide.json")
    with pytest.raises(ValueError, match="000001.png is .* but the annotation file says"):
        CocoDetection(path, image_dir)[0]


def test_coco_subset_keeps_only_the_chosen_images_and_categories(shapes_set, tmp_path):
    ann_file = shapes_set["train"].ann_file
    out = coco_subset(ann_file, tmp_path / "sub" / "subset.json", num_images=3, categories=["circle", 3], seed=1)
    full, sub = load_coco(ann_file), load_coco(out)  # loads in pycocotools: valid COCO
    assert sorted(c["name"] for c in sub.dataset["categories"]) == ["circle", "triangle"]
    assert len(sub.imgs) == 3
    for image_id, info in sub.imgs.items():
        assert info == full.imgs[image_id]
        expected = [a for a in full.imgToAnns[image_id] if a["category_id"] in (1, 3)]
        assert expected and sub.imgToAnns[image_id] == expected
    assert len(sub.anns) == sum(len(v) for v in sub.imgToAnns.values())
    again = coco_subset(ann_file, tmp_path / "again.json", num_images=3, categories=["circle", 3], seed=1)
    assert open(out).read() == open(again).read()
    ds = CocoDetection(out, shapes_set["train"].image_dir)
    assert ds.category_names == ["__background__", "circle", "triangle"] and len(ds) == 3
    assert set(ds[0][1]["labels"].tolist()) <= {1, 2}
    assert list(tmp_path.glob("**/*.tmp")) == []


def test_coco_subset_errors(shapes_set, tmp_path):
    ann_file = shapes_set["train"].ann_file
    with pytest.raises(ValueError, match="'hexagon' is not in"):
        coco_subset(ann_file, tmp_path / "s.json", 2, categories=["hexagon"])
    with pytest.raises(ValueError, match="has 8 images with the chosen categories"):
        coco_subset(ann_file, tmp_path / "s.json", 50)
    with pytest.raises(ValueError, match="out_file is the input file"):
        coco_subset(ann_file, ann_file, 2)
