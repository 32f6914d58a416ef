"""The RPN's proposals against torchvision's RegionProposalNetwork, in float64, in training and in
testing mode, with counts that tell the ways of choosing them apart.

The whole-model reference test keeps 60 of 300 proposals with the same counts in both modes, so
neither taking the pre-NMS top-n over all levels at once (instead of per level) nor swapping the
training and testing counts changes what it sees. Here: post-NMS top-n = pre-NMS top-n (as
torchvision's default 1000/1000 at test time), so the per-level candidates decide which
proposals survive, and training and testing counts that differ, so each mode must use its own.
The proposals' scores are compared too, with a head whose objectness leaves fewer proposals
above zero logit than are kept, so that a score on another scale than torchvision's shows.
"""
from collections import OrderedDict

import numpy as np
import pytest

import tinymaskrcnn as tm
from tinymaskrcnn.models import AnchorGenerator, RegionProposalNetwork, RPNHead
from tinymaskrcnn.models.transform import ImageList

CHANNELS = 8
IMAGE_SIZES = [(128, 160), (112, 150)]  # padded to 128x160; levels 32x40 ... 2x3
# (pre-NMS per level, post-NMS per image) for training and testing
COUNTS = {
    "pre_equals_post": ({"training": 40, "testing": 25}, {"training": 40, "testing": 25}),
    "pre_differs_from_post": ({"training": 30, "testing": 12}, {"training": 50, "testing": 20}),
}


def _features(rng):
    shapes = [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)]
    return OrderedDict((str(i), rng.standard_normal((2, CHANNELS) + s)) for i, s in enumerate(shapes))


def _targets():
    return [{"boxes": np.array([[10.0, 12, 70, 90], [60, 40, 150, 120]])},
            {"boxes": np.array([[30.0, 20, 100, 100]])}]


def _pair(torch, pre, post, objectness_shift=0.0):
    """torchvision's RPN with a random head of weights large enough for spread-out scores (its
    objectness logits lowered by ``objectness_shift``), and ours with the same weights."""
    from torchvision.models.detection import rpn as tv_rpn
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TvAnchorGenerator

    torch.manual_seed(0)
    head = tv_rpn.RPNHead(CHANNELS, 3)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.3)
        head.cls_logits.bias -= objectness_shift
    anchors = TvAnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    kw = dict(fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=10 ** 7, positive_fraction=0.5,
              pre_nms_top_n=pre, post_nms_top_n=post, nms_thresh=0.7)
    theirs = tv_rpn.RegionProposalNetwork(anchors, head, **kw).double()
    ours = RegionProposalNetwork(AnchorGenerator(), RPNHead(CHANNELS, 3), **kw)
    ours.load_state_dict({k: v.double().numpy() for k, v in theirs.state_dict().items()})
    ours.to(dtype=np.float64)
    return theirs, ours


@pytest.mark.parametrize("counts", COUNTS.values(), ids=list(COUNTS))
@pytest.mark.parametrize("mode", ["training", "testing"])
def test_proposals_match_torchvision(torch, counts, mode):
    from torchvision.models.detection.image_list import ImageList as TvImageList

    theirs, ours = _pair(torch, *counts)
    theirs.train(mode == "training")
    ours.train(mode == "training")
    features = _features(np.random.default_rng(1))
    padded = np.zeros((2, 3, 128, 160))
    targets = _targets() if mode == "training" else None
    with torch.no_grad():
        expected, _ = theirs(TvImageList(torch.tensor(padded), IMAGE_SIZES),
                             OrderedDict((k, torch.tensor(v)) for k, v in features.items()),
                             None if targets is None else [{"boxes": torch.tensor(t["boxes"])} for t in targets])
    with tm.no_grad():
        got, _ = ours(ImageList(padded, IMAGE_SIZES), OrderedDict((k, tm.Tensor(v)) for k, v in features.items()),
                      targets)
    post = counts[1][mode]
    for g, e in zip(got, expected):
        assert len(e) == post, "the case must fill the post-NMS count, or a wrong count could hide"
        assert g.shape == tuple(e.shape)
        np.testing.assert_allclose(g, e.numpy(), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("mode", ["training", "testing"])
def test_proposal_scores_match_torchvision(torch, mode):
    """The scores kept with the proposals are objectness probabilities, torchvision's
    sigmoid(logit), in the order of the proposals. The head's objectness is lowered until fewer
    proposals have a logit above zero than the post-NMS count: a score on another scale (the
    logit itself, say) then either changes the scores or, compared with score_thresh 0, drops
    the proposals of negative logit and so changes which are kept."""
    from torchvision.models.detection.image_list import ImageList as TvImageList

    counts = COUNTS["pre_differs_from_post"]
    theirs, ours = _pair(torch, *counts, objectness_shift=2.5)
    theirs.train(mode == "training")
    ours.train(mode == "training")
    kept, filter_proposals = {}, theirs.filter_proposals

    def keep_scores(*args, **kwargs):
        kept["boxes"], kept["scores"] = filter_proposals(*args, **kwargs)
        return kept["boxes"], kept["scores"]

    theirs.filter_proposals = keep_scores
    features = _features(np.random.default_rng(1))
    padded = np.zeros((2, 3, 128, 160))
    targets = _targets() if mode == "training" else None
    with torch.no_grad():
        theirs(TvImageList(torch.tensor(padded), IMAGE_SIZES),
               OrderedDict((k, torch.tensor(v)) for k, v in features.items()),
               None if targets is None else [{"boxes": torch.tensor(t["boxes"])} for t in targets])
    intermediates = {}
    with tm.no_grad():
        ours(ImageList(padded, IMAGE_SIZES), OrderedDict((k, tm.Tensor(v)) for k, v in features.items()), targets,
             intermediates=intermediates)
    post = counts[1][mode]
    for boxes, scores, expected_boxes, expected in zip(intermediates["proposals"], intermediates["proposal_scores"],
                                                       kept["boxes"], kept["scores"]):
        expected = expected.numpy()
        assert len(expected) == post and 0 < (expected > 0.5).sum() < post, "the case must keep proposals of both signs"
        np.testing.assert_allclose(boxes, expected_boxes.numpy(), rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(scores, expected, rtol=1e-12, atol=1e-15)
