"""Transforms (flip, compose, sanitiser) and the seeded, resumable DataLoader."""
import json

import numpy as np
import pytest
from helpers import tight_box

import tinymaskrcnn as tm
from tinymaskrcnn.data import Compose, DataLoader, RandomHorizontalFlip, SanitizeTarget, hflip, sanitize_target
from tinymaskrcnn.data.shapes import shape_mask


def sample(rng, height=20, width=28, k=3):
    """An image and a target whose boxes are the tight boxes of their masks."""
    masks = np.stack([shape_mask(s, *rng.uniform(7, 13, 2), rng.uniform(2, 6), height, width, rng.uniform(0, 6))
                      for s in ("circle", "square", "triangle")[:k]]).astype(np.uint8)
    boxes = np.array([tight_box(m) for m in masks], dtype=np.float32)
    target = {"boxes": boxes, "labels": np.arange(1, k + 1, dtype=np.int64), "masks": masks, "image_id": 7}
    return rng.random((3, height, width)).astype(np.float32), target


def test_flip_moves_boxes_with_masks_and_twice_is_identity(rng):
    image, target = sample(rng)
    fimage, ftarget = hflip(image, target)
    np.testing.assert_array_equal(fimage, image[:, :, ::-1])
    for m, b in zip(ftarget["masks"], ftarget["boxes"]):
        np.testing.assert_array_equal(b, tight_box(m))  # box of the flipped mask = flipped box
    back_image, back = hflip(fimage, ftarget)
    np.testing.assert_array_equal(back_image, image)
    for key in ("boxes", "labels", "masks"):
        np.testing.assert_array_equal(back[key], target[key])
    assert ftarget["boxes"].dtype == np.float32 and ftarget["masks"].dtype == np.uint8
    assert not np.array_equal(ftarget["boxes"], target["boxes"])  # the inputs were not modified in place


def test_flip_matches_torchvision(torch, rng):
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as TF

    image, target = sample(rng)
    fimage, ftarget = hflip(image, target)
    h, w = image.shape[1:]
    boxes = tv_tensors.BoundingBoxes(torch.tensor(target["boxes"]), format="XYXY", canvas_size=(h, w))
    np.testing.assert_array_equal(ftarget["boxes"], TF.horizontal_flip(boxes).numpy())
    np.testing.assert_array_equal(ftarget["masks"], TF.horizontal_flip(torch.tensor(target["masks"])).numpy())
    np.testing.assert_array_equal(fimage, TF.horizontal_flip(torch.tensor(image)).numpy())


def test_random_flip_probability_and_generators(rng):
    image, target = sample(rng)
    assert RandomHorizontalFlip(0.0)(image, target)[0] is image
    np.testing.assert_array_equal(RandomHorizontalFlip(1.0)(image, target)[0], image[:, :, ::-1])
    flip = RandomHorizontalFlip(0.5)
    draws = [flip(image, target, np.random.default_rng(s))[0][0, 0, 0] != image[0, 0, 0] for s in range(200)]
    assert 70 < sum(draws) < 130
    tm.manual_seed(3)  # without a generator the project one is used, so manual_seed repeats it
    first = [flip(image, target)[0][0, 0, 0] for _ in range(8)]
    tm.manual_seed(3)
    assert [flip(image, target)[0][0, 0, 0] for _ in range(8)] == first
    with pytest.raises(ValueError, match="p is a probability"):
        RandomHorizontalFlip(1.5)


def test_sanitize_reports_and_drops(rng):
    _, target = sample(rng)
    assert sanitize_target(target) is target  # nothing wrong: unchanged
    bad = dict(target, boxes=target["boxes"].copy(), masks=target["masks"].copy())
    bad["boxes"][0, 2] = bad["boxes"][0, 0]  # zero width
    bad["masks"][2] = 0
    with pytest.raises(ValueError, match=r"image 7: instance 0: box .* width 0 .*instance 2: mask is empty"):
        sanitize_target(bad)
    with pytest.warns(UserWarning, match="image 12: .*dropped"):
        clean = sanitize_target(bad, image_id=12, drop=True)
    for key in ("boxes", "labels", "masks"):
        np.testing.assert_array_equal(clean[key], target[key][[1]])
    _, out = Compose([RandomHorizontalFlip(0.0), SanitizeTarget(drop=True)])(None, target)
    assert out["boxes"] is target["boxes"] and out["masks"] is target["masks"]  # a clean target passes as it is
    with pytest.raises(ValueError, match="disagree on the number of instances"):
        sanitize_target(dict(target, labels=target["labels"][:2]))


class TinySet:
    """Index-stamped images so a batch shows which items it holds and whether they flipped."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        image = np.zeros((1, 2, 3), dtype=np.float32)
        image[0, 0, 0] = i + 1  # the left column: after a flip it sits on the right
        target = {"boxes": np.array([[0, 0, 1, 1]], np.float32), "labels": np.ones(1, np.int64),
                  "masks": np.ones((1, 2, 3), np.uint8), "image_id": i}
        return image, target


def served(batch):
    """(dataset index, flipped?) of each item in a batch."""
    images, targets = batch
    return [(t["image_id"], bool(im[0, 0, 0] == 0)) for im, t in zip(images, targets)]


def take(loader, n):
    out = []
    while len(out) < n:
        for batch in loader:
            out.append(served(batch))
            if len(out) == n:
                break
    return out


def test_order_is_seeded_and_covers_each_epoch():
    loader = DataLoader(TinySet(10), batch_size=3, seed=5)
    assert len(loader) == 4
    epochs = [[i for b in take(loader, 4) for i, _ in b] for _ in range(2)]
    assert [sorted(e) for e in epochs] == [list(range(10))] * 2
    assert epochs[0] != epochs[1] and loader.epoch == 2
    assert take(DataLoader(TinySet(10), batch_size=3, seed=5), 4) == take(DataLoader(TinySet(10), 3, seed=5), 4)
    assert take(DataLoader(TinySet(10), 3, seed=5), 4) != take(DataLoader(TinySet(10), 3, seed=6), 4)
    plain = DataLoader(TinySet(10), batch_size=4, shuffle=False, drop_last=True)
    assert len(plain) == 2 and [[i for i, _ in b] for b in take(plain, 2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("stop", [5, 8, 4])  # mid-epoch, right after an epoch's last batch, mid-epoch 2
def test_resume_mid_epoch_repeats_order_and_flips(stop):
    def make():
        return DataLoader(TinySet(7), batch_size=2, seed=11, transforms=RandomHorizontalFlip(0.5))

    straight = take(make(), 12)
    first = make()
    head = take(first, stop)
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    tm.manual_seed(123)  # the project generator's state must not matter
    resumed = make()
    resumed.load_state_dict(state)
    assert head + take(resumed, 12 - stop) == straight
    flips = [f for b in straight for _, f in b]
    assert 0 < sum(flips) < len(flips)  # the comparison covers both outcomes
    epoch0, epoch1 = (dict(item for b in straight[e * 4:(e + 1) * 4] for item in b) for e in (0, 1))
    assert epoch0 != epoch1  # each epoch draws fresh flips


def test_bad_loader_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(TinySet(3), batch_size=0)
    with pytest.raises(ValueError, match="dataset is empty"):
        DataLoader(TinySet(0))
    state = DataLoader(TinySet(3)).state_dict()
    with pytest.raises(ValueError, match="saved for 3 samples but the dataset has 4"):
        DataLoader(TinySet(4)).load_state_dict(state)
