"""A tiny Mask R-CNN through every CUDA kernel: inference and one training step in float64 with
``backend.simulate_cuda()`` (NumPy arrays through kernels/cuda/, run by the simulator) equal the
CPU path's outputs, losses and every gradient. Tiny sizes: the simulator runs a thread's work
in Python."""
import numpy as np
import pytest

import tinymaskrcnn as tm
from tinymaskrcnn.core import backend
from tinymaskrcnn import nn
from tinymaskrcnn.kernels.cuda import im2col, nms, paste_masks, pool, roi_align
from tinymaskrcnn.models.anchors import AnchorGenerator
from tinymaskrcnn.models.backbone import BackboneWithFPN
from tinymaskrcnn.models.mask_rcnn import MaskRCNN
from tinymaskrcnn.ops.poolers import MultiScaleRoIAlign
from tinymaskrcnn.models.roi_heads import FastRCNNPredictor, MaskRCNNHeads, MaskRCNNPredictor, TwoMLPHead

LAUNCHERS = [(im2col, "im2col"), (im2col, "col2im"), (roi_align, "roi_align_forward"),
             (roi_align, "roi_align_backward"), (nms, "nms"), (paste_masks, "paste_masks"),
             (pool, "max_pool2d_forward"), (pool, "max_pool2d_backward")]


class TinyBody(nn.Module):
    """conv, max pool and four stride-2 stages of 4 channels: every op kind of a ResNet, tiny."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        for i in range(1, 5):
            setattr(self, f"layer{i}", nn.Conv2d(4, 4, 3, stride=1 if i == 1 else 2, padding=1))


def tiny_model(box_pool=7, mask_pool=14, sampling_ratio=2):
    """torchvision's RoI patch sizes and sampling by default; smaller ones where the simulator
    runs a whole training step many times (its atomic adds in RoIAlign's backward are slow)."""
    tm.random.manual_seed(0)
    backbone = BackboneWithFPN(TinyBody(), {f"layer{i}": str(i - 1) for i in range(1, 5)}, [4] * 4, 4)
    model = MaskRCNN(
        backbone, num_classes=None, min_size=64, max_size=64,
        rpn_anchor_generator=AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 5),
        rpn_pre_nms_top_n_train=40, rpn_post_nms_top_n_train=12, rpn_pre_nms_top_n_test=40,
        rpn_post_nms_top_n_test=8, rpn_batch_size_per_image=10 ** 7, box_batch_size_per_image=10 ** 7,
        box_score_thresh=0.0, box_detections_per_img=4,
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], box_pool, sampling_ratio),
        mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], mask_pool, sampling_ratio),
        box_head=TwoMLPHead(4 * box_pool * box_pool, 8), box_predictor=FastRCNNPredictor(8, 3),
        mask_head=MaskRCNNHeads(4, (4,), 1), mask_predictor=MaskRCNNPredictor(4, 4, 3))
    return model.to(dtype=np.float64)


def run(model, train, simulate):
    rng = np.random.default_rng(1)
    images = [rng.uniform(0, 1, (3, 48, 64))]
    previous = backend.simulate_cuda(simulate)
    try:
        tm.random.manual_seed(1)
        if not train:
            model.eval()
            with tm.no_grad():
                return {k: np.asarray(v) for k, v in model(images)[0].items()}, {}
        model.train()
        masks = np.zeros((2, 48, 64), np.uint8)
        masks[0, 5:30, 4:40], masks[1, 20:45, 30:60] = 1, 1
        target = {"boxes": np.array([[4, 5, 40, 30], [30, 20, 60, 45]], np.float64),
                  "labels": np.array([1, 2]), "masks": masks}
        model.zero_grad()
        losses = model(images, [target])
        sum(losses.values()).backward()
        grads = {name: np.array(p.grad) for name, p in model.named_parameters() if p.grad is not None}
        return {k: np.asarray(v.data) for k, v in losses.items()}, grads
    finally:
        backend.simulate_cuda(previous)


def close(a, b):
    scale = max(np.abs(b).max(initial=0.0), 1e-300)
    return np.abs(a - b).max(initial=0.0) / scale <= 1e-10


@pytest.mark.parametrize("train", [False, True], ids=["inference", "training step"])
def test_tiny_maskrcnn_through_every_cuda_kernel_equals_the_cpu_path(monkeypatch, train):
    model = tiny_model()
    expected, expected_grads = run(model, train, simulate=False)
    calls = []
    for module, name in LAUNCHERS:
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    got, grads = run(model, train, simulate=True)
    # training: no mask pasting; inference: no backwards (col2im still runs: the transposed conv)
    wanted = {n for _, n in LAUNCHERS if ((n != "paste_masks") if train else ("backward" not in n))}
    assert wanted <= set(calls), f"CUDA kernels never reached: {wanted - set(calls)}"
    assert set(got) == set(expected)
    for key in expected:
        assert got[key].shape == expected[key].shape, key
        assert close(got[key], expected[key]), (key, got[key], expected[key])
    assert set(grads) == set(expected_grads) and bool(grads) == train
    for name in expected_grads:
        assert close(grads[name], expected_grads[name]), name
