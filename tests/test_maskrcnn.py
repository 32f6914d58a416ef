"""The detector without a reference: losses' gradients, intermediates, statistics and bad input.

A small ResNet-18 Mask R-CNN on tiny images keeps these fast; parity with torchvision is in
test_maskrcnn_reference.py.
"""
import numpy as np
import pytest

import tinymaskrcnn as tm
from tinymaskrcnn.core.gradcheck import gradcheck
from tinymaskrcnn.models.roi_heads import _box_stats, _mask_stats, fastrcnn_loss, maskrcnn_loss
from tinymaskrcnn.models.rpn import _objectness_stats


@pytest.fixture(scope="module")
def model():
    tm.manual_seed(0)
    m = tm.models.maskrcnn_resnet18_fpn(num_classes=4, min_size=64, max_size=96)
    return m


def _image(rng, h=60, w=80):
    return rng.uniform(0, 1, (3, h, w)).astype(np.float32)


def _target(h=60, w=80, boxes=((5, 6, 40, 50), (30, 10, 75, 40)), labels=(1, 3)):
    masks = np.zeros((len(boxes), h, w), dtype=np.uint8)
    for m, (x1, y1, x2, y2) in zip(masks, boxes):
        m[y1:y2, x1:x2] = 1
    return {"boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4), "labels": np.array(labels, dtype=np.int64),
            "masks": masks}


# Finite differences check these gradients against the code's own forward: a wrong loss formula
# passes them. The formulas are checked against torchvision's losses in
# test_maskrcnn_reference.py::test_training_step_matches_torchvision_float64.
def test_fastrcnn_loss_gradients_match_finite_differences(rng):
    labels = [np.array([0, 2, 1, 0, 3]), np.array([1, 0])]
    targets = [rng.standard_normal((5, 4)), rng.standard_normal((2, 4))]
    logits = tm.Tensor(rng.standard_normal((7, 4)), requires_grad=True)
    deltas = tm.Tensor(rng.standard_normal((7, 16)), requires_grad=True)
    for which in (0, 1):  # the classification loss and the box loss
        errors = gradcheck(lambda c, b: fastrcnn_loss(c, b, labels, targets)[which], [logits, deltas])
        assert max(errors) < 1e-7


def test_mask_loss_gradient_matches_finite_differences(rng):
    logits = tm.Tensor(rng.standard_normal((3, 4, 5, 5)), requires_grad=True)
    labels = np.array([1, 3, 1])
    soft_targets = rng.uniform(0, 1, (3, 5, 5))
    (err,) = gradcheck(lambda x: maskrcnn_loss(x, labels, soft_targets), [logits])
    assert err < 1e-7
    empty = maskrcnn_loss(tm.Tensor(np.zeros((0, 4, 5, 5)), requires_grad=True), np.zeros(0, np.int64),
                          np.zeros((0, 5, 5)))
    assert empty.item() == 0.0 and empty.requires_grad  # still part of the graph


def test_rpn_loss_gradients_match_finite_differences(model, rng):
    rpn = model.rpn
    labels = [np.array([1.0, 0, -1, 0, 1, 0]), np.array([0.0, 1, 0])]
    targets = [rng.standard_normal((6, 4)), rng.standard_normal((3, 4))]
    objectness = tm.Tensor(rng.standard_normal(9), requires_grad=True)
    deltas = tm.Tensor(rng.standard_normal((9, 4)), requires_grad=True)
    for which in (0, 1):
        def loss(o, d):
            tm.manual_seed(3)  # the same balanced sample at every evaluation
            return rpn.compute_loss(o, d, labels, targets)[which]
        assert max(gradcheck(loss, [objectness, deltas])) < 1e-7


def test_training_step_reports_losses_stats_and_intermediates(model, rng):
    model.train()
    stats, inter = {}, {}
    losses = model([_image(rng), _image(rng, 70, 64)], [_target(), _target(70, 64, ((2, 3, 50, 60),), (2,))],
                   intermediates=inter, stats=stats)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert all(np.isfinite(v.item()) for v in losses.values())
    for key in ("rpn_fg_accuracy", "rpn_bg_accuracy", "roi_accuracy", "roi_fg_accuracy", "roi_false_negative",
                "mask_accuracy", "mask_false_positive", "mask_false_negative"):
        assert key in stats
    for key in ("anchors", "objectness", "proposals_before_nms", "proposals", "sampled_rois", "roi_labels",
                "roi_regression_targets", "mask_targets", "features", "images"):
        assert key in inter, key
    total = sum(losses.values(), tm.Tensor(np.float32(0)))
    total.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and np.isfinite(p.grad).all() for p in trainable)
    model.zero_grad()


@pytest.mark.parametrize("cap", [None, 3])
def test_mask_batch_size_per_image_caps_the_mask_head_positives(rng, cap):
    """None trains the mask head on every positive RoI (torchvision); a cap draws at most that
    many per image, among the positives only."""
    tm.manual_seed(1)
    capped = tm.models.maskrcnn_resnet18_fpn(num_classes=4, min_size=64, max_size=96, mask_batch_size_per_image=cap)
    capped.train()
    inter = {}
    capped([_image(rng), _image(rng, 70, 64)], [_target(), _target(70, 64, ((2, 3, 50, 60),), (2,))],
           intermediates=inter)
    positives = [labels[labels > 0] for labels in inter["roi_labels"]]
    assert all(len(p) > 3 for p in positives)  # GT boxes and their near copies: the cap bites
    expected = [p if cap is None else p[:cap] for p in positives]
    assert len(inter["mask_labels"]) == sum(len(e) for e in expected) == len(inter["mask_targets"])
    per_image = np.split(inter["mask_labels"], np.cumsum([len(e) for e in expected])[:-1])
    for drawn, p in zip(per_image, positives):
        assert np.all(np.isin(drawn, p)) and np.all(drawn > 0)


def test_image_without_objects_trains(model, rng):
    model.train()
    empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
             "masks": np.zeros((0, 60, 80), np.uint8)}
    losses = model([_image(rng)], [empty])
    assert losses["loss_box_reg"].item() == 0.0 and losses["loss_rpn_box_reg"].item() == 0.0
    assert losses["loss_mask"].item() == 0.0
    assert losses["loss_classifier"].item() > 0 and losses["loss_objectness"].item() > 0
    sum(losses.values(), tm.Tensor(np.float32(0))).backward()
    model.zero_grad()


def test_inference_output_format(model, rng):
    model.eval()
    with tm.no_grad():
        (out,) = model([_image(rng, 50, 70)])
    n = len(out["boxes"])
    assert out["boxes"].shape == (n, 4) and out["labels"].shape == (n,) and out["scores"].shape == (n,)
    assert out["masks"].shape == (n, 1, 50, 70)
    assert out["labels"].dtype == np.int64 and out["boxes"].dtype == np.float32


def test_bad_input_is_named(model, rng):
    model.train()
    bad = _target(boxes=((5, 6, 40, 50), (30, 10, 30, 40)))  # second box has zero width
    with pytest.raises(ValueError, match=r"box 1"):
        model([_image(rng)], [bad])
    with pytest.raises(ValueError, match="3, H, W|3×H×W|\\(3, H, W\\)"):
        model([rng.uniform(0, 1, (60, 80, 3)).astype(np.float32)], [_target()])
    mismatched = _target()
    mismatched["labels"] = mismatched["labels"][:1]
    with pytest.raises(ValueError, match="labels"):
        model([_image(rng)], [mismatched])
    with pytest.raises(ValueError, match="targets"):
        model([_image(rng)])
    with pytest.raises(TypeError):
        model([(_image(rng) * 255).astype(np.uint8)], [_target()])


# ----- training statistics on hand-made logits and targets, with known counts -----------------


def test_objectness_stats_count_the_sampled_anchors():
    logits = np.array([2.0, -1, 0.5, 3, -2, 0, 1, -0.5, 4, -3])
    pos, neg = np.array([0, 1, 2]), np.array([4, 5, 6, 7, 9])  # anchors 3 and 8 were not sampled
    stats = {}
    _objectness_stats(stats, logits, pos, neg)
    # positives with a logit > 0: 2 of 3; negatives with a logit <= 0 (0 counts): 4 of 5
    assert stats == pytest.approx({"rpn_fg_accuracy": 2 / 3, "rpn_bg_accuracy": 4 / 5, "rpn_num_positive": 3})


def test_box_stats_count_the_sampled_rois():
    labels = [np.array([1, 1, 1, 2]), np.array([3, 0, 0, 0])]  # 5 foreground, 3 background RoIs
    predicted = np.array([1, 0, 2, 2, 3, 0, 1, 0])
    logits = np.eye(4)[predicted] * 5 - 1  # the largest logit is the predicted class
    stats = {}
    _box_stats(stats, logits, labels)
    assert stats == pytest.approx({"roi_accuracy": 5 / 8,  # 3 foreground and 2 background right
                     "roi_fg_accuracy": 3 / 5,
                     "roi_false_negative": 1 / 5,  # one foreground RoI called background
                     "roi_bg_accuracy": 2 / 3})


def test_mask_stats_count_the_pixels():
    """Two RoIs of 2x2 pixels: 3 target pixels on (soft targets above 0.5), 5 off; predicted on
    (logit > 0, in the RoI's own class channel) are 2 of the on pixels and 2 of the off ones."""
    labels = np.array([2, 1])
    targets = np.array([[[0.9, 0.6], [0.2, 0.5]],
                        [[0.0, 1.0], [0.4, 0.1]]])
    predicted = np.array([[[1, 0], [1, 0]],
                          [[0, 1], [1, 0]]], dtype=bool)
    logits = np.zeros((2, 3, 2, 2))
    logits[np.arange(2), labels] = np.where(predicted, 2.0, -2.0)
    logits[:, 0] = np.where(predicted, -2.0, 2.0)  # a channel of no RoI's class disagrees
    stats = {}
    _mask_stats(stats, logits, labels, targets)
    assert stats == pytest.approx({"mask_accuracy": 5 / 8,
                     "mask_false_positive": 2 / 5,  # predicted on among the 5 off pixels
                     "mask_false_negative": 1 / 3})  # predicted off among the 3 on pixels
