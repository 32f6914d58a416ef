"""GeneralizedRCNNTransform against torchvision's: the padded batch, the sizes, the resized
targets, and postprocess; and its errors on bad input."""
import numpy as np
import pytest

import tinymaskrcnn as tm
from tinymaskrcnn.core.gradcheck import rel_error
from tinymaskrcnn.models.transform import GeneralizedRCNNTransform
from helpers import TOL

SMALL = dict(min_size=64, max_size=100)


def _image_and_target(rng, h, w, boxes, dtype):
    masks = np.zeros((len(boxes), h, w), dtype=np.uint8)
    for m, (x1, y1, x2, y2) in zip(masks, boxes):
        m[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] = 1
        m[int(y1), :] = 1  # not a plain box: a stripe the resize must keep or drop as torch does
    target = {"boxes": np.array(boxes, dtype=dtype).reshape(-1, 4), "masks": masks,
              "labels": np.arange(1, len(boxes) + 1, dtype=np.int64)}
    return rng.uniform(0, 1, (3, h, w)).astype(dtype), target


def _batch(dtype, seed=0):
    """Two images of different sizes (one whose long side caps the scale), one with no boxes."""
    rng = np.random.default_rng(seed)
    a = _image_and_target(rng, 45, 61, [[3.5, 4.25, 40, 30], [20, 10.5, 60.5, 44]], dtype)
    b = _image_and_target(rng, 37, 90, [[1, 2, 85.75, 36.5]], dtype)
    c = _image_and_target(rng, 50, 40, [], dtype)
    return [a[0], b[0], c[0]], [a[1], b[1], c[1]]


def _torchvision_transform(torch, **kw):
    from torchvision.models.detection.transform import GeneralizedRCNNTransform as TVTransform

    return TVTransform(image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225), **kw)


def _assert_close(got, expected, dtype, what):
    assert got.dtype == np.dtype(dtype), f"{what}: dtype {got.dtype}, expected {np.dtype(dtype)}"
    assert got.shape == tuple(expected.shape), f"{what}: shape {got.shape}, torchvision {tuple(expected.shape)}"
    err = rel_error(got, expected.numpy())
    assert err <= TOL[dtype], f"{what}: relative error {err:.3g} > {TOL[dtype]:g}"


def _compare(torch, dtype, train, **kw):
    images, targets = _batch(dtype)
    theirs = _torchvision_transform(torch, **kw).train(train)
    ours = GeneralizedRCNNTransform(**kw).train(train)
    expected, expected_targets = theirs([torch.tensor(i) for i in images],
                                        [{k: torch.tensor(v) for k, v in t.items()} for t in targets])
    got, got_targets = ours(images, targets)
    assert isinstance(got.tensors, tm.Tensor)
    _assert_close(got.tensors.data, expected.tensors, dtype, "padded batch")
    assert got.image_sizes == [tuple(s) for s in expected.image_sizes]
    assert all(s % 32 == 0 for s in got.tensors.shape[-2:])
    for i, (g, e) in enumerate(zip(got_targets, expected_targets)):
        _assert_close(g["boxes"], e["boxes"], dtype, f"boxes of image {i}")
        assert g["masks"].dtype == np.uint8 and g["masks"].shape == tuple(e["masks"].shape)
        np.testing.assert_array_equal(g["masks"], e["masks"].numpy())
        np.testing.assert_array_equal(g["labels"], e["labels"].numpy())
    return images, targets, got, got_targets


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eval_matches_torchvision(torch, dtype):
    images, targets, _, got_targets = _compare(torch, dtype, train=False, **SMALL)
    # new dicts: the caller's targets keep their original boxes and masks
    assert targets[0]["masks"].shape == (2, 45, 61) and got_targets[0]["masks"].shape != (2, 45, 61)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_train_with_fixed_min_size_matches_torchvision(torch, dtype):
    state = tm.random.get_state()
    _compare(torch, dtype, train=True, min_size=(72,), max_size=120, size_divisible=16)
    assert tm.random.get_state() == state  # nothing to choose: the project RNG is not drawn from


def test_boxes_take_the_image_dtype(torch):
    """float64 or integer boxes with float32 images come out float32, equal to torchvision's
    (float64) boxes to float32 precision."""
    images, targets = _batch(np.float32)
    targets[0]["boxes"] = targets[0]["boxes"].astype(np.float64)
    targets[1]["boxes"] = targets[1]["boxes"].astype(np.int64)
    expected = _torchvision_transform(torch, **SMALL).eval()(
        [torch.tensor(i) for i in images], [{k: torch.tensor(v) for k, v in t.items()} for t in targets])[1]
    got = GeneralizedRCNNTransform(**SMALL).eval()(images, targets)[1]
    for g, e in zip(got, expected):
        assert g["boxes"].dtype == np.float32
        assert rel_error(g["boxes"], e["boxes"].numpy()) <= TOL[np.float32]


def test_fixed_size_matches_torchvision(torch):
    _compare(torch, np.float64, train=False, fixed_size=(50, 40), **SMALL)


def test_train_min_size_choice_is_seeded():
    """In training each image's short side is drawn from min_size with the project RNG."""
    image = np.random.default_rng(1).uniform(0, 1, (3, 40, 50))
    transform = GeneralizedRCNNTransform(min_size=(32, 48, 64), max_size=1000).train()

    def short_sides(seed):
        tm.manual_seed(seed)
        return [min(s) for s in transform([image] * 8)[0].image_sizes]

    drawn = short_sides(3)
    assert drawn == short_sides(3) and set(drawn) <= {32, 48, 64} and len(set(drawn)) > 1
    assert [min(s) for s in transform.eval()([image])[0].image_sizes] == [64]  # inference: the last


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_postprocess_matches_torchvision(torch, dtype):
    rng = np.random.default_rng(5)
    image_shapes, original_sizes = [(64, 86), (40, 100)], [(45, 61), (37, 90)]
    result = []
    for (h, w), k in zip(image_shapes, (3, 2)):
        xy = rng.uniform(0, [w * 0.6, h * 0.6], (k, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(4, [w * 0.4, h * 0.4], (k, 2))], axis=1)
        result.append({"boxes": boxes.astype(dtype), "scores": rng.uniform(0, 1, k).astype(dtype),
                       "labels": rng.integers(1, 5, k), "masks": rng.uniform(0, 1, (k, 1, 28, 28)).astype(dtype)})
    expected = _torchvision_transform(torch, **SMALL).eval().postprocess(
        [{key: torch.tensor(v) for key, v in r.items()} for r in result], image_shapes, original_sizes)
    got = GeneralizedRCNNTransform(**SMALL).eval().postprocess(result, image_shapes, original_sizes)
    for g, e, (h, w) in zip(got, expected, original_sizes):
        _assert_close(g["boxes"], e["boxes"], dtype, "boxes")
        _assert_close(g["masks"], e["masks"], dtype, "masks")
        assert g["masks"].shape[1:] == (1, h, w)
        np.testing.assert_array_equal(g["labels"], e["labels"].numpy())
    train = GeneralizedRCNNTransform(**SMALL).train()
    assert train.postprocess(result, image_shapes, original_sizes) is result  # training: untouched


def _bad(images, targets=None):
    GeneralizedRCNNTransform(**SMALL)(images, targets)


def test_bad_images():
    good = _batch(np.float32)[0][0]
    with pytest.raises(ValueError, match=r"image 1 has shape \(45, 61, 3\); expected \(3, H, W\)"):
        _bad([good, good.transpose(1, 2, 0)])
    with pytest.raises(ValueError, match=r"image 0 has shape \(1, 3, 45, 61\)"):
        _bad([good[None]])
    with pytest.raises(TypeError, match="image 0 has dtype uint8; images must be floating"):
        _bad([(good * 255).astype(np.uint8)])
    with pytest.raises(TypeError, match="images must be a list"):
        _bad(good)
    with pytest.raises(ValueError, match="image 1 is float64 but image 0 is float32"):
        _bad([good, good.astype(np.float64)])


def test_bad_targets():
    images, targets = _batch(np.float32)

    def edited(index, **changes):
        t = [dict(x) for x in targets]
        t[index].update(changes)
        return t

    with pytest.raises(ValueError, match=r"target 1: boxes must be a \(K, 4\) array.*got shape \(4,\)"):
        _bad(images, edited(1, boxes=np.array([1.0, 2.0, 30.0, 20.0])))
    degenerate = targets[0]["boxes"].copy()
    degenerate[1, 2] = degenerate[1, 0]
    with pytest.raises(ValueError, match=r"target 0: box 1 \[20.0, 10.5, 20.0, 44.0\] is degenerate"):
        _bad(images, edited(0, boxes=degenerate))
    with pytest.raises(ValueError, match=r"target 1: box 0 .* is degenerate"):
        _bad(images, edited(1, boxes=np.array([[1.0, 2.0, np.nan, 20.0]])))
    with pytest.raises(ValueError, match=r"target 0: labels has shape \(3,\) but there are 2 boxes"):
        _bad(images, edited(0, labels=np.array([1, 2, 3])))
    with pytest.raises(ValueError, match=r"target 1: masks has shape \(2, 37, 90\); expected \(1, 37, 90\)"):
        _bad(images, edited(1, masks=np.zeros((2, 37, 90), np.uint8)))
    with pytest.raises(ValueError, match=r"target 0: masks has shape \(2, 45, 60\); expected \(2, 45, 61\)"):
        _bad(images, edited(0, masks=np.zeros((2, 45, 60), np.uint8)))
    with pytest.raises(ValueError, match="one dict per image: got 2 for 3 images"):
        _bad(images, targets[:2])
    with pytest.raises(ValueError, match="target 2 must be a dict with a 'boxes' entry"):
        _bad(images, targets[:2] + [{"labels": np.zeros(0, np.int64)}])
