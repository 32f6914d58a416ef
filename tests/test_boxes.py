"""Box utilities against torchvision: IoU, area, clipping, small boxes, BoxCoder, Matcher, sampler.

These ops select and encode rather than differentiate, so each test compares values (or exact
indices and labels) with torchvision run on the same arrays.
"""
import math

import numpy as np
import pytest
from helpers import TOL

import tinymaskrcnn as tm
from tinymaskrcnn.core import random as tm_random
from tinymaskrcnn.models.matcher import BalancedPositiveNegativeSampler, Matcher
from tinymaskrcnn.models.box_coder import BoxCoder
from tinymaskrcnn.ops.boxes import box_area, box_iou, clip_boxes_to_image, remove_small_boxes
from tinymaskrcnn.core.gradcheck import rel_error

DTYPES = [np.float64, np.float32]


def random_boxes(rng, n, size=100.0, min_side=1.0, max_side=40.0, dtype=np.float64):
    """n boxes with corners in [0, size + max_side] and sides in [min_side, max_side]."""
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(min_side, max_side, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(dtype)


def assert_close(ours, theirs, dtype):
    """Our array against torch's: same dtype and shape, relative error within the dtype's tolerance."""
    theirs = theirs.detach().numpy()
    assert ours.dtype == np.dtype(dtype), f"dtype {ours.dtype}, expected {np.dtype(dtype)}"
    assert ours.shape == theirs.shape, f"shape {ours.shape}, torchvision gives {theirs.shape}"
    err = rel_error(ours, theirs)
    assert err <= TOL[np.dtype(dtype).type], f"relative error {err:.3g}"


@pytest.fixture
def seeded():
    """Leave the project generator as the test found it."""
    state = tm_random.get_state()
    yield
    tm_random.set_state(state)


# ----- IoU, area, clip, small boxes -----------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_box_iou_and_area_match_torchvision(torch, rng, dtype):
    from torchvision.ops import box_area as tv_area, box_iou as tv_iou

    a, b = random_boxes(rng, 7, dtype=dtype), random_boxes(rng, 9, dtype=dtype)
    b[0] = a[0]  # identical pair: IoU exactly 1
    b[1] = a[1] + np.array([2, 2, -2, -2], dtype)  # contained
    b[2] = a[2] + 500  # disjoint
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    assert_close(box_iou(a, b), tv_iou(ta, tb), dtype)
    assert_close(box_area(a), tv_area(ta), dtype)
    iou = box_iou(a, b)
    assert iou[0, 0] == 1.0 and iou[2, 2] == 0.0


def test_box_iou_degenerate_boxes_give_nan_like_torchvision(torch):
    from torchvision.ops import box_iou as tv_iou

    a = np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    b = np.array([[1.0, 1.0, 1.0, 1.0], [5.0, 5.0, 5.0, 9.0]])
    ours, theirs = box_iou(a, b), tv_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    np.testing.assert_array_equal(np.nan_to_num(ours), np.nan_to_num(theirs))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("leading", [(11,), (5, 3)])
def test_clip_boxes_to_image_matches_torchvision(torch, rng, dtype, leading):
    from torchvision.ops import clip_boxes_to_image as tv_clip

    boxes = rng.uniform(-30, 130, leading + (4,)).astype(dtype)
    size_hw = (60, 90)
    ours = clip_boxes_to_image(boxes, size_hw)
    theirs = tv_clip(torch.from_numpy(boxes), size_hw).numpy()
    assert ours.dtype == boxes.dtype
    np.testing.assert_array_equal(ours, theirs)
    assert ours[..., 0::2].max() <= 90 and ours[..., 1::2].max() <= 60 and ours.min() >= 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_remove_small_boxes_matches_torchvision(torch, rng, dtype):
    from torchvision.ops import remove_small_boxes as tv_remove

    boxes = random_boxes(rng, 40, min_side=0.0, max_side=4.0, dtype=dtype)
    boxes[0] = [10.0, 20.0, 12.0, 23.0]  # exactly min_size wide: kept (>=)
    ours = remove_small_boxes(boxes, 2.0)
    theirs = tv_remove(torch.from_numpy(boxes), 2.0).numpy()
    assert ours.dtype == np.int64 and 0 in ours
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("bad", [np.zeros((3, 5)), np.zeros(4), np.zeros((2, 3, 4))])
def test_wrong_box_shape_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        box_iou(bad, np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        remove_small_boxes(bad, 1.0)


def test_integer_boxes_and_bad_size_are_clear_errors():
    with pytest.raises(TypeError, match="floating"):
        box_area(np.zeros((2, 4), dtype=np.int64))
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        clip_boxes_to_image(np.zeros((2, 5)), (10, 10))
    with pytest.raises(ValueError, match="height, width"):
        clip_boxes_to_image(np.zeros((2, 4)), (10,))


def test_tensors_are_accepted():
    boxes = np.array([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
    np.testing.assert_array_equal(box_iou(tm.Tensor(boxes), boxes), box_iou(boxes, boxes))


# ----- BoxCoder -------------------------------------------------------------------------------

WEIGHTS = [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weights", WEIGHTS)
def test_box_coder_encode_matches_torchvision(torch, rng, dtype, weights):
    from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

    gt, proposals = random_boxes(rng, 20, dtype=dtype), random_boxes(rng, 20, dtype=dtype)
    ours = BoxCoder(weights).encode(gt, proposals)
    theirs = TVBoxCoder(weights).encode_single(torch.from_numpy(gt), torch.from_numpy(proposals))
    assert_close(ours, theirs, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("num_classes", [1, 3])
def test_box_coder_decode_matches_torchvision(torch, rng, dtype, weights, num_classes):
    from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

    boxes = random_boxes(rng, 12, dtype=dtype)
    deltas = rng.standard_normal((12, 4 * num_classes)).astype(dtype)
    deltas[0, 2], deltas[1, 3 + 4 * (num_classes - 1)] = 50.0, 1e4  # beyond the clamp
    ours = BoxCoder(weights).decode(deltas, boxes)
    theirs = TVBoxCoder(weights).decode(torch.from_numpy(deltas), [torch.from_numpy(boxes)])
    assert_close(ours, theirs, dtype)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_box_coder_round_trip(rng, weights):
    gt, proposals = random_boxes(rng, 30), random_boxes(rng, 30)
    coder = BoxCoder(weights)
    decoded = coder.decode(coder.encode(gt, proposals), proposals)
    assert decoded.shape == (30, 1, 4)
    assert rel_error(decoded[:, 0], gt) <= 1e-12


@pytest.mark.parametrize("dtype", DTYPES)
def test_box_coder_clamps_huge_deltas(dtype):
    """dw, dh beyond log(1000/16) decode as if clamped: the box grows 1000/16 times, no overflow."""
    boxes = np.array([[10.0, 20.0, 14.0, 28.0]], dtype=dtype)  # 4 wide, 8 tall, centre (12, 24)
    deltas = np.array([[0.0, 0.0, 1e6, 1e6]], dtype=dtype)
    out = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode(deltas, boxes)[0, 0]
    assert np.isfinite(out).all()
    scale = math.exp(math.log(1000.0 / 16))
    expected = np.array([12 - 2 * scale, 24 - 4 * scale, 12 + 2 * scale, 24 + 4 * scale])
    assert rel_error(out, expected) <= TOL[np.dtype(dtype).type]


def test_box_coder_errors():
    with pytest.raises(ValueError, match="4 numbers"):
        BoxCoder((1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"\(N, 4\*K\)"):
        BoxCoder((1.0, 1.0, 1.0, 1.0)).decode(np.zeros((3, 6)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="one row per pair"):
        BoxCoder((1.0, 1.0, 1.0, 1.0)).encode(np.ones((3, 4)), np.ones((2, 4)))


# ----- Matcher --------------------------------------------------------------------------------

def matcher_inputs(rng):
    """IoU matrices (gt x anchors) with ties: duplicate GT boxes and duplicate anchors."""
    gt = random_boxes(rng, 6, size=60.0, min_side=10.0)
    gt[3] = gt[1]  # two GT boxes tie for every anchor
    anchors = random_boxes(rng, 200, size=60.0, min_side=5.0)
    anchors[50] = anchors[10]  # a GT's best anchor appears twice
    anchors[11] = gt[4]  # an exact hit: IoU 1
    return box_iou(gt, anchors)


@pytest.mark.parametrize("high,low,allow_low", [(0.7, 0.3, True), (0.5, 0.5, False), (0.7, 0.3, False)])
def test_matcher_matches_torchvision(torch, rng, high, low, allow_low):
    from torchvision.models.detection._utils import Matcher as TVMatcher

    for _ in range(3):
        iou = matcher_inputs(rng)
        ours = Matcher(high, low, allow_low_quality_matches=allow_low)(iou)
        theirs = TVMatcher(high, low, allow_low_quality_matches=allow_low)(torch.from_numpy(iou)).numpy()
        assert ours.dtype == np.int64
        np.testing.assert_array_equal(ours, theirs)
        assert set(np.unique(ours)) <= set(range(-2, iou.shape[0]))


def test_matcher_low_quality_rule_claims_ties(torch):
    """Each GT claims all its best anchors (ties included), even below the low threshold."""
    from torchvision.models.detection._utils import Matcher as TVMatcher

    iou = np.array([[0.1, 0.2, 0.2, 0.05, 0.05, 0.0, 0.0],
                    [0.1, 0.1, 0.0, 0.25, 0.25, 0.1, 0.0],
                    [0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.9]])
    ours = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou)
    theirs = TVMatcher(0.7, 0.3, allow_low_quality_matches=True)(torch.from_numpy(iou)).numpy()
    np.testing.assert_array_equal(ours, theirs)
    # anchor 0 is nobody's best (-1), 5 is between thresholds (-2); 1, 2 tie for GT 0, 3, 4 for GT 1
    np.testing.assert_array_equal(ours, [-1, 0, 0, 1, 1, -2, 2])


def test_matcher_errors():
    with pytest.raises(ValueError, match="low_threshold <= high_threshold"):
        Matcher(0.3, 0.7)
    with pytest.raises(ValueError, match="no ground-truth"):
        Matcher(0.7, 0.3)(np.zeros((0, 5)))
    with pytest.raises(ValueError, match="no predicted boxes"):
        Matcher(0.7, 0.3)(np.zeros((2, 0)))


# ----- BalancedPositiveNegativeSampler -------------------------------------------------------

def sampler_labels(rng):
    """Labels of three images: plenty of both, few positives, few negatives."""
    many = rng.choice([-1, 0, 1, 2, 3], size=1000, p=[0.2, 0.5, 0.1, 0.1, 0.1])
    few_pos = np.where(rng.random(500) < 0.01, 1, 0)
    few_neg = np.concatenate([np.ones(300, dtype=np.int64), np.zeros(20, dtype=np.int64), -np.ones(5, dtype=np.int64)])
    return [many, few_pos, few_neg.astype(np.float32)]  # the RPN hands over float labels


def test_sampler_counts(rng, seeded):
    sampler = BalancedPositiveNegativeSampler(256, 0.25)
    labels = sampler_labels(rng)
    pos, neg = sampler(labels)
    for lab, p, n in zip(labels, pos, neg):
        assert p.dtype == bool and n.dtype == bool and p.shape == lab.shape
        assert (lab[p] >= 1).all() and (lab[n] == 0).all()  # ignored (-1) never drawn
        num_pos = min(int(256 * 0.25), int((lab >= 1).sum()))
        assert p.sum() == num_pos  # capped at fraction * batch
        assert n.sum() == min(256 - num_pos, int((lab == 0).sum()))  # negatives fill the batch
    assert pos[1].sum() == (labels[1] >= 1).sum() and neg[1].sum() == 256 - pos[1].sum()
    assert neg[2].sum() == 20 and pos[2].sum() == 64


def test_sampler_seeding(rng, seeded):
    sampler = BalancedPositiveNegativeSampler(128, 0.5)
    labels = sampler_labels(rng)
    tm.manual_seed(7)
    first = sampler(labels)
    tm.manual_seed(7)
    again = sampler(labels)
    tm.manual_seed(8)
    other = sampler(labels)
    for a, b in zip(first[0] + first[1], again[0] + again[1]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1][0], other[1][0])


def test_sampler_errors():
    with pytest.raises(ValueError, match="positive_fraction"):
        BalancedPositiveNegativeSampler(256, 1.5)
    with pytest.raises(TypeError, match="list"):
        BalancedPositiveNegativeSampler(256, 0.5)(np.zeros(10))
