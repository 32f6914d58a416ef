"""Which anchors or proposals are positive, negative or ignored, and which the loss sees.

- ``Matcher`` turns an IoU matrix (ground truth × predictions, from ``ops.box_iou``) into one
  label per prediction: the index of its ground-truth box, or ``BELOW_LOW_THRESHOLD``
  (background) or ``BETWEEN_THRESHOLDS`` (ignored);
- ``BalancedPositiveNegativeSampler`` picks the few hundred of them the loss looks at.

Arrays in, arrays out (NumPy or CuPy), as torchvision.models.detection._utils, which the tests
hold these equal to.
"""
import numpy as np

from ..core.backend import get_array_module
from ..ops.boxes import as_array
from ..core.random import get_rng


class Matcher:
    """Give each prediction (anchor or proposal) the index of its best ground-truth box, or a
    negative code.

    Called on an IoU matrix (M ground truths, N predictions), it returns N int64 labels: for
    each prediction, the ground truth with the highest IoU if that IoU is ≥ ``high_threshold``,
    ``BELOW_LOW_THRESHOLD`` (-1) if it is < ``low_threshold``, ``BETWEEN_THRESHOLDS`` (-2) in
    between. Ties between ground truths go to the lowest index.

    With ``allow_low_quality_matches`` (the RPN), every ground truth also claims the
    predictions of its highest IoU, however low, ties included, so no object is left without
    a positive anchor: those predictions get back their best ground truth.
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold, low_threshold, allow_low_quality_matches=False):
        if low_threshold > high_threshold:
            raise ValueError(f"Matcher needs low_threshold <= high_threshold, got low {low_threshold} "
                             f"and high {high_threshold}")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix):
        quality = as_array(match_quality_matrix, "match_quality_matrix")
        if quality.ndim != 2:
            raise ValueError(f"match_quality_matrix must be (num_gt, num_predictions), got shape {tuple(quality.shape)}")
        if quality.shape[0] == 0:
            raise ValueError("no ground-truth boxes for this image: handle images without objects before matching")
        if quality.shape[1] == 0:
            raise ValueError("no predicted boxes (anchors or proposals) for this image to match")
        xp = get_array_module(quality)
        best_gt = xp.argmax(quality, axis=0).astype(np.int64)  # first maximum on ties, as torch
        best_iou = quality.max(axis=0)
        matches = best_gt.copy()
        matches[best_iou < self.low_threshold] = self.BELOW_LOW_THRESHOLD
        matches[(best_iou >= self.low_threshold) & (best_iou < self.high_threshold)] = self.BETWEEN_THRESHOLDS
        if self.allow_low_quality_matches:
            best_per_gt = quality.max(axis=1)
            claimed = xp.nonzero(quality == best_per_gt[:, None])[1]
            matches[claimed] = best_gt[claimed]
        return matches


class BalancedPositiveNegativeSampler:
    """Pick ``batch_size_per_image`` labelled examples per image, at most ``positive_fraction``
    of them positive.

    Called on a list of per-image label arrays (≥ 1 positive, 0 negative, -1 ignored), it
    draws up to ``int(batch_size_per_image · positive_fraction)`` positives at random and fills
    the rest of the batch with random negatives (fewer when an image lacks them). Returns two
    lists of boolean masks, the chosen positives and the chosen negatives of each image
    (torchvision returns uint8 masks; booleans index arrays safely in NumPy). The draws come
    from ``tinymaskrcnn.core.random.get_rng()``, so ``manual_seed`` makes them repeatable.
    """

    def __init__(self, batch_size_per_image, positive_fraction):
        if int(batch_size_per_image) != batch_size_per_image or batch_size_per_image < 0:
            raise ValueError(f"batch_size_per_image must be a non-negative integer, got {batch_size_per_image!r}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction!r}")
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = positive_fraction

    def __call__(self, matched_idxs):
        if not isinstance(matched_idxs, (list, tuple)):
            raise TypeError("the sampler takes a list with one label array per image, "
                            f"got {type(matched_idxs).__name__}: wrap a single image's labels in a list")
        rng = get_rng()
        pos_masks, neg_masks = [], []
        for labels in matched_idxs:
            labels = as_array(labels, "labels")
            xp = get_array_module(labels)
            positive = xp.nonzero(labels >= 1)[0]
            negative = xp.nonzero(labels == 0)[0]
            num_pos = min(positive.size, int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.size, self.batch_size_per_image - num_pos)
            pos_masks.append(_random_subset_mask(positive, num_pos, labels.shape, rng, xp))
            neg_masks.append(_random_subset_mask(negative, num_neg, labels.shape, rng, xp))
        return pos_masks, neg_masks


def _random_subset_mask(candidates, k, shape, rng, xp):
    """Boolean mask of ``shape`` with ``k`` of the ``candidates`` (indices) chosen at random."""
    # the permutation is drawn on the host so the one project generator serves CuPy arrays too
    chosen = candidates[xp.asarray(rng.permutation(candidates.size)[:k])]
    mask = xp.zeros(shape, dtype=bool)
    mask[chosen] = True
    return mask
