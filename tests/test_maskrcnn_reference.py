"""The whole Mask R-CNN against torchvision's, with the same weights, in float64.

torchvision's model is built in the test with random weights whose activations stay of order
one (every FrozenBatchNorm2d calibrated to the statistics of its input on a forward pass), saved
with torch.save and read back by our torch-free loader. Inference must give the same
detections; one training step with every candidate sampled (no randomness) the same five
losses and the same gradient for every trainable parameter.
"""
import numpy as np
import pytest

import tinymaskrcnn as tm
from tinymaskrcnn.core.gradcheck import rel_error
from tinymaskrcnn.chapters.reference_models import save_state_dict, torchvision_maskrcnn

NUM_CLASSES = 5
SMALL = dict(min_size=160, max_size=224, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=60,
             rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=60, box_detections_per_img=12)
TAKE_ALL = dict(rpn_batch_size_per_image=10 ** 7, box_batch_size_per_image=10 ** 7)


def _images(rng, dtype):
    return [rng.uniform(0, 1, (3, 120, 168)).astype(dtype), rng.uniform(0, 1, (3, 150, 128)).astype(dtype)]


def _targets(rng):
    def one(h, w, boxes, labels):
        masks = np.zeros((len(boxes), h, w), dtype=np.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, boxes):
            m[int(y1):int(y2), int(x1):int(x2)] = 1
            m[int(y1):int(y1 + (y2 - y1) / 3), int(x1):int(x1 + (x2 - x1) / 2)] = 0  # not a plain box
        return {"boxes": np.array(boxes, dtype=np.float64), "labels": np.array(labels, dtype=np.int64), "masks": masks}

    return [one(120, 168, [[10.5, 20, 80, 100], [60, 5.25, 160, 70], [100, 60, 150, 115]], [1, 3, 4]),
            one(150, 128, [[20, 30, 90, 140]], [2])]


def _build_pair(torch, tmp_path, **kw):
    """torchvision's Mask R-CNN (calibrated random weights) and ours loaded from its .pth."""
    theirs = torchvision_maskrcnn(num_classes=NUM_CLASSES, calibration_size=(160, 224), **SMALL, **kw).double()
    ours = tm.models.maskrcnn_resnet50_fpn(weights=save_state_dict(theirs, tmp_path), **SMALL, **kw)
    ours.to(dtype=np.float64)
    return theirs, ours


def _float64_anchor_labels(theirs):
    """torchvision makes the RPN's anchor labels float32 even in a float64 model, and torch then
    computes the objectness BCE in float32 (about 1e-8 relative). Cast the labels to float64 so
    the reference is exact; the labels themselves (0, 1, -1) are unchanged."""
    assign = theirs.rpn.assign_targets_to_anchors

    def assign_float64(anchors, targets):
        labels, matched = assign(anchors, targets)
        return [l.double() for l in labels], matched

    theirs.rpn.assign_targets_to_anchors = assign_float64


def _infer_both(torch, theirs, ours, images):
    """Both models' detections for the same images, in eval mode without gradients."""
    theirs.eval()
    ours.eval()
    with torch.no_grad():
        expected = theirs([torch.tensor(i) for i in images])
    with tm.no_grad():
        got = ours(images)
    return got, expected


def test_inference_matches_torchvision_float64(torch, tmp_path):
    theirs, ours = _build_pair(torch, tmp_path)
    got, expected = _infer_both(torch, theirs, ours, _images(np.random.default_rng(2), np.float64))
    for g, e in zip(got, expected):
        assert len(g["boxes"]) == len(e["boxes"]) > 0
        np.testing.assert_array_equal(g["labels"], e["labels"].numpy())
        for key in ("boxes", "scores", "masks"):
            assert g[key].shape == tuple(e[key].shape), key
            assert rel_error(g[key], e[key].numpy()) <= 1e-9, key


def test_training_step_matches_torchvision_float64(torch, tmp_path):
    theirs, ours = _build_pair(torch, tmp_path, **TAKE_ALL)
    _float64_anchor_labels(theirs)
    theirs.train()
    ours.train()
    images = _images(np.random.default_rng(3), np.float64)
    targets = _targets(np.random.default_rng(4))
    expected = theirs([torch.tensor(i) for i in images],
                      [{k: torch.tensor(v) for k, v in t.items()} for t in targets])
    stats = {}
    got = ours(images, targets, stats=stats)
    assert set(got) == set(expected) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
                                         "loss_rpn_box_reg"}
    for key in expected:
        assert rel_error(got[key].data, expected[key].item()) <= 1e-9, key
    assert 0.0 <= stats["rpn_fg_accuracy"] <= 1.0 and 0.0 <= stats["mask_accuracy"] <= 1.0

    sum(expected.values()).backward()
    total = got["loss_classifier"]
    for key in ("loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"):
        total = total + got[key]
    total.backward()
    their_params = dict(theirs.named_parameters())
    our_params = dict(ours.named_parameters())
    trainable = {n for n, p in their_params.items() if p.requires_grad}
    assert trainable == {n for n, p in our_params.items() if p.requires_grad}
    for name in sorted(trainable):
        g_ref = their_params[name].grad
        g_ref = np.zeros(our_params[name].shape) if g_ref is None else g_ref.numpy()
        g = our_params[name].grad
        g = np.zeros(our_params[name].shape) if g is None else g
        assert rel_error(g, g_ref) <= 1e-7, name


def _nearest(boxes, others):
    """For each box, the index of the nearest of ``others`` (max coordinate difference): the
    order of detections may swap where scores tie in float32."""
    return np.abs(boxes[:, None, :] - others[None]).max(-1).argmin(axis=1)


def test_inference_matches_torchvision_float32(torch, tmp_path):
    """The same detections in float32: each of our boxes within 1e-3 px of torchvision's float32
    box, beyond what float32 rounding alone moves torchvision's own box.

    Float32 itself moves torchvision's boxes from its float64 ones by up to 1.9e-3 px on these
    images, and ours by as much (in other directions: other summation orders, Winograd's
    algorithm for the 3x3 convs), so two correct float32 implementations can be more than
    1e-3 px apart; each box's allowance adds torchvision's own float32 error on it, measured
    against the same model in float64.
    """
    theirs, ours = _build_pair(torch, tmp_path)
    images = _images(np.random.default_rng(5), np.float32)
    _, exact = _infer_both(torch, theirs, ours, [i.astype(np.float64) for i in images])
    theirs.float()
    ours.to(dtype=np.float32)
    got, expected = _infer_both(torch, theirs, ours, images)
    for g, e, x in zip(got, expected, exact):
        assert len(g["boxes"]) == len(e["boxes"]) == len(x["boxes"]) > 0
        theirs32, theirs64 = e["boxes"].numpy(), x["boxes"].numpy()
        nearest = _nearest(g["boxes"], theirs32)
        assert np.array_equal(g["labels"], e["labels"].numpy()[nearest])
        error = np.abs(g["boxes"] - theirs32[nearest]).max(-1)
        float32_error = np.abs(theirs32 - theirs64[_nearest(theirs32, theirs64)]).max(-1)[nearest]
        assert (error <= 1e-3 + float32_error).all(), (error, float32_error)
