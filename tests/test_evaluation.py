"""COCO evaluation: predictions → result dicts → COCOeval, on a small synthetic shapes set.

Known detections give known scores: the ground truth itself scores AP 1, dropping detections
lowers AP and AR by amounts counted from first principles, shifting boxes lowers AP in order.
"""
import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tinymaskrcnn.data import CocoDetection, load_instances, make_shapes_dataset
from tinymaskrcnn.engine.evaluation import Evaluator, coco_results, evaluate_coco

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on NumPy 2

METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    paths = make_shapes_dataset(tmp_path_factory.mktemp("eval") / "set", num_train=0, num_val=6,
                                image_size=((112, 144), (112, 144)))
    return CocoDetection(*paths["val"])


@pytest.fixture(scope="module")
def targets(dataset):
    return [dataset[i][1] for i in range(len(dataset))]


def as_prediction(target, scores=None):
    """A target dressed as the model's output: score 1 (or ``scores``), masks (K, 1, H, W) float."""
    k = len(target["labels"])
    return {"boxes": target["boxes"].copy(), "labels": target["labels"].copy(),
            "scores": np.ones(k) if scores is None else scores, "masks": target["masks"][:, None].astype(np.float32)}


def shifted(prediction, d):
    """Boxes and masks moved d pixels right and down (masks padded, not wrapped)."""
    out = dict(prediction)
    out["boxes"] = prediction["boxes"] + d
    masks = np.zeros_like(prediction["masks"])
    masks[..., d:, d:] = prediction["masks"][..., :masks.shape[-2] - d, :masks.shape[-1] - d]
    out["masks"] = masks
    return out


def evaluate(predictions, dataset, **kwargs):
    return evaluate_coco(coco_results(predictions, dataset), dataset, verbose=False, **kwargs)


def test_ground_truth_as_predictions_scores_one(dataset, targets, capsys):
    predictions = {t["image_id"]: as_prediction(t) for t in targets}
    metrics = evaluate_coco(coco_results(predictions, dataset), dataset)
    printed = capsys.readouterr().out
    assert printed.count("Average Precision") == 12 and printed.count("Average Recall") == 12
    assert "IoU metric: bbox" in printed and "IoU metric: segm" in printed
    areas = [a["area"] for a in dataset.coco.anns.values()]
    assert min(areas) < 32 ** 2 < max(areas)  # small and medium objects both present
    for iou_type in ("bbox", "segm"):
        m = metrics[iou_type]
        assert list(m) == METRICS and all(isinstance(v, float) for v in m.values())
        for name in ("AP", "AP50", "AP75", "APs", "APm", "AR10", "AR100", "ARs", "ARm"):
            assert m[name] == pytest.approx(1.0, abs=1e-12), (iou_type, name)
        assert m["APl"] == m["ARl"] == -1.0  # no large shapes: nothing to measure


def test_results_have_coco_form(dataset, targets):
    target = targets[0]
    predictions = {target["image_id"]: as_prediction(target, scores=np.linspace(0.9, 0.5, len(target["labels"])))}
    results = coco_results(predictions, dataset)
    assert len(results) == len(target["labels"])
    for k, r in enumerate(results):
        x1, y1, x2, y2 = target["boxes"][k]
        assert r["image_id"] == target["image_id"]
        assert r["category_id"] == dataset.label_to_category_id(int(target["labels"][k]))
        np.testing.assert_allclose(r["bbox"], [x1, y1, x2 - x1, y2 - y1])
        assert r["score"] == pytest.approx(predictions[target["image_id"]]["scores"][k])
        assert isinstance(r["segmentation"]["counts"], str)
        np.testing.assert_array_equal(mask_utils.decode(r["segmentation"]), target["masks"][k])
    json.dumps(results)  # JSON-ready


def expected_from_counts(kept, total):
    """AP and AR100 when the kept detections are all exact (and rank first, score 1), counted
    from COCO's definition: per category, precision is 1 up to recall kept/total and 0 beyond,
    sampled at the 101 recall thresholds 0, 0.01, ..., 1; recall is kept/total."""
    thresholds = np.linspace(0.0, 1.0, 101)
    recalls = [kept[c] / total[c] for c in total]
    return np.mean([(thresholds <= r).sum() / 101 for r in recalls]), np.mean(recalls)


def test_dropped_detections_lower_ap_and_ar_by_the_counted_amount(dataset, targets):
    kept, total, predictions, seen = {}, {}, {}, 0
    for t in targets:
        keep = (seen + np.arange(len(t["labels"]))) % 3 != 0  # drop every third object
        seen += len(keep)
        p = as_prediction(t)
        predictions[t["image_id"]] = {key: value[keep] for key, value in p.items()}
        for label, k in zip(t["labels"], keep):
            total[label] = total.get(label, 0) + 1
            kept[label] = kept.get(label, 0) + int(k)
    assert len(total) == 3 and all(0 < kept[c] for c in total) and sum(kept.values()) < seen, (kept, total)
    ap, ar = expected_from_counts(kept, total)
    metrics = evaluate(predictions, dataset)
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == pytest.approx(ap, abs=1e-12)
        assert metrics[iou_type]["AR100"] == pytest.approx(ar, abs=1e-12)


def test_shifted_detections_score_less_the_further_they_move(dataset, targets):
    perfect = {t["image_id"]: as_prediction(t) for t in targets}
    aps = {iou_type: [] for iou_type in ("bbox", "segm")}
    for d in (0, 1, 2, 4, 8):
        metrics = evaluate({i: shifted(p, d) if d else p for i, p in perfect.items()}, dataset)
        for iou_type in aps:
            aps[iou_type].append(metrics[iou_type]["AP"])
    for iou_type, values in aps.items():
        assert values[0] == pytest.approx(1.0)
        assert all(a > b for a, b in zip(values, values[1:])), (iou_type, values)


def test_empty_predictions_give_zeros(dataset, targets):
    perfect = evaluate({t["image_id"]: as_prediction(t) for t in targets}, dataset)
    with pytest.warns(UserWarning, match="no detections at all"):
        metrics = evaluate_coco([], dataset, verbose=False)
    # no detection of any image (an Evaluator fed empty predictions) gives the same
    evaluator = Evaluator(dataset)
    empty = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, dtype=np.int64), "scores": np.zeros(0)}
    with pytest.warns(UserWarning, match="no detections at all"):
        evaluator.update(targets, [dict(empty, masks=np.zeros((0, 1, t["masks"].shape[1], t["masks"].shape[2])))
                                   for t in targets])
        assert evaluator.summarize(verbose=False) == metrics
    for iou_type in ("bbox", "segm"):
        assert list(metrics[iou_type]) == METRICS
        for name in METRICS:  # 0 wherever the perfect run measures something, -1 where it cannot
            assert metrics[iou_type][name] == (0.0 if perfect[iou_type][name] >= 0 else -1.0), name


def test_results_and_metrics_files_reload(dataset, targets, tmp_path):
    predictions = {t["image_id"]: shifted(as_prediction(t), 1) for t in targets}
    results = coco_results(predictions, dataset)
    before = copy.deepcopy(results)
    metrics = evaluate_coco(results, dataset.ann_file, out_dir=tmp_path / "eval", verbose=False)
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["metrics.json", "results.json"]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == metrics
    with contextlib.redirect_stdout(io.StringIO()):
        reloaded = dataset.coco.loadRes(str(tmp_path / "eval" / "results.json"))
    assert len(reloaded.anns) == len(results)
    for ann, r in zip(reloaded.anns.values(), results):
        assert ann["segmentation"] == r["segmentation"] and ann["score"] == r["score"]
    # the ground truth given as a file, a COCO object or the data set gives the same numbers
    assert evaluate_coco(results, dataset.coco, verbose=False) == metrics
    assert evaluate_coco(results, dataset, verbose=False) == metrics
    # pycocotools rewrites what it is given in place: evaluate_coco hands it copies
    assert results == before and dataset.coco.dataset == load_instances(dataset.ann_file)


def test_segm_sizes_detections_by_mask_area(dataset, targets):
    """A false positive whose mask is tiny but whose box covers the whole image counts among
    small objects for mask AP (its area is the mask's) but is outside the small range for box AP."""
    image_id, (height, width) = targets[0]["image_id"], targets[0]["masks"].shape[1:]
    results = coco_results({t["image_id"]: as_prediction(t, np.full(len(t["labels"]), 0.9)) for t in targets},
                           dataset)
    blob = np.zeros((height, width), dtype=np.uint8)
    blob[:3, :3] = 1
    rle = mask_utils.encode(np.asfortranarray(blob))
    false_positive = {"image_id": image_id, "category_id": results[0]["category_id"], "score": 1.0,
                      "bbox": [0.0, 0.0, float(width), float(height)],
                      "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}}
    metrics = evaluate_coco([false_positive] + results, dataset, verbose=False)
    assert metrics["bbox"]["APs"] == pytest.approx(1.0)
    assert metrics["segm"]["APs"] < 1.0


def test_evaluator_accumulates_batches(dataset, targets):
    predictions = [shifted(as_prediction(t), 2) for t in targets]
    evaluator = Evaluator(dataset)
    for start in range(0, len(targets), 4):  # batches of 4 and 2
        evaluator.update(targets[start:start + 4], predictions[start:start + 4])
    assert evaluator.summarize(verbose=False) == evaluate(
        {t["image_id"]: p for t, p in zip(targets, predictions)}, dataset)


def test_evaluator_scores_only_the_images_it_saw(dataset, targets):
    evaluator = Evaluator(dataset, iou_types=("bbox",))
    seen = targets[:3]
    box_only = [{k: v for k, v in as_prediction(t).items() if k != "masks"} for t in seen]
    evaluator.update(seen, box_only)
    assert list(evaluator.summarize(verbose=False)) == ["bbox"]
    assert evaluator.summarize(verbose=False)["bbox"]["AP"] == pytest.approx(1.0)
    # against the whole ground truth the unseen images' objects are misses
    assert evaluate_coco(evaluator.results, dataset, iou_types="bbox", verbose=False)["bbox"]["AR100"] < 1.0


def test_clear_errors(dataset, targets):
    t = targets[0]
    image_id, p = t["image_id"], as_prediction(t)
    with pytest.raises(ValueError, match="image_id 999: no such image"):
        coco_results({999: p}, dataset)
    with pytest.raises(ValueError, match=r"masks have shape .* must be pasted at the original image size"):
        coco_results({image_id: dict(p, masks=p["masks"][..., :-1])}, dataset)
    with pytest.raises(ValueError, match=r"expected boxes \(N, 4\), labels \(N,\)"):
        coco_results({image_id: dict(p, labels=p["labels"][:-1])}, dataset)
    with pytest.raises(ValueError, match="NaN"):
        coco_results({image_id: dict(p, scores=np.full(len(p["scores"]), np.nan))}, dataset)
    with pytest.raises(TypeError, match="CocoDetection"):
        coco_results({image_id: p}, dataset.coco)
    box_results = [{k: v for k, v in r.items() if k != "segmentation"} for r in coco_results({image_id: p}, dataset)]
    with pytest.raises(ValueError, match=r"lacks \['segmentation'\].*iou_types=\('bbox',\)"):
        evaluate_coco(box_results, dataset, verbose=False)
    with pytest.raises(ValueError, match="iou_types"):
        evaluate_coco(box_results, dataset, iou_types=("keypoints",), verbose=False)
    with pytest.raises(ValueError, match="category_id 77"):
        evaluate_coco([dict(box_results[0], category_id=77)], dataset, iou_types="bbox", verbose=False)
    with pytest.raises(TypeError, match="coco_gt must be"):
        evaluate_coco(box_results, 42, verbose=False)
    evaluator = Evaluator(dataset)
    with pytest.raises(ValueError, match="before any update"):
        evaluator.summarize()
    with pytest.raises(ValueError, match="lacks \\['masks'\\].*iou_types=\\('bbox',\\)"):
        evaluator.update([t], [{k: v for k, v in p.items() if k != "masks"}])
    with pytest.raises(ValueError, match="1 targets but 2 predictions"):
        evaluator.update([t], [p, p])
    evaluator.update([t], [p])
    with pytest.raises(ValueError, match=f"image_id {image_id} was given twice"):
        evaluator.update([t], [p])
