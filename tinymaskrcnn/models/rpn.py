"""The Region Proposal Network: from feature maps to a few thousand candidate boxes.

At every anchor the head predicts an objectness logit and four box deltas. In training, each
anchor is labelled by its best IoU with the ground truth (positive ≥ 0.7, negative < 0.3, the
best anchor of every GT box positive too), a balanced sample of anchors is scored with binary
cross-entropy, and the positives' deltas are regressed with smooth L1. At every step the
deltas decode the anchors into proposals, which are filtered: the top-n per level by
objectness, clipped, tiny ones dropped, NMS per level, the top-n per image kept.
"""
import numpy as np

from .. import functional as F
from .. import nn
from ..core.autograd import cat
from ..core.backend import fraction, get_array_module
from .matcher import BalancedPositiveNegativeSampler, Matcher
from .box_coder import BoxCoder
from ..ops.boxes import box_iou, clip_boxes_to_image, remove_small_boxes
from ..functional.activation import stable_sigmoid
from ..ops.boxes import batched_nms


class RPNHead(nn.Module):
    """A shared 3×3 conv + ReLU, then 1×1 convs for A objectness logits and 4A deltas per position.

    Module names follow torchvision (``conv.0.0``, ``cls_logits``, ``bbox_pred``), initialised
    from N(0, 0.01) with zero biases.
    """

    def __init__(self, in_channels, num_anchors, conv_depth=1):
        super().__init__()
        self.conv = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.ReLU()) for _ in range(conv_depth)
        ])
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, 4 * num_anchors, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 0.0)

    def forward(self, features):
        logits, deltas = [], []
        for x in features:
            t = self.conv(x)
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


def flatten_head_outputs(logits, deltas):
    """Per-level (N, A·C, H, W) maps → (N·total, C) rows in anchor order.

    Anchors are ordered level by level, then row-major over positions, then by anchor
    within a position, so each map is viewed as (N, A, C, H, W) and permuted to (N, H, W, A, C).
    """
    def rows(level_map, c):
        n, ac, h, w = level_map.shape
        a = ac // c
        return level_map.reshape(n, a, c, h, w).transpose(0, 3, 4, 1, 2).reshape(n, h * w * a, c)

    n = logits[0].shape[0]
    objectness = cat([rows(l, 1) for l in logits], dim=1).reshape(-1)
    box_deltas = cat([rows(d, 4) for d in deltas], dim=1).reshape(-1, 4)
    return objectness, box_deltas, n


class RegionProposalNetwork(nn.Module):
    """torchvision's RegionProposalNetwork: anchors, head, proposal filtering, targets and losses.

    Args:
        anchor_generator: an AnchorGenerator.
        head: an RPNHead.
        fg_iou_thresh, bg_iou_thresh: IoU at or above which an anchor is positive, below which negative.
        batch_size_per_image, positive_fraction: the balanced sample of anchors in the loss.
        pre_nms_top_n, post_nms_top_n: dicts with 'training' and 'testing' counts (per level
            before NMS, per image after).
        nms_thresh: IoU threshold of the per-level NMS.
        score_thresh: minimum objectness probability of a proposal.
    """

    min_size = 1e-3

    def __init__(self, anchor_generator, head, fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256,
                 positive_fraction=0.5, pre_nms_top_n=None, post_nms_top_n=None, nms_thresh=0.7, score_thresh=0.0):
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self._pre_nms_top_n = pre_nms_top_n or {"training": 2000, "testing": 1000}
        self._post_nms_top_n = post_nms_top_n or {"training": 2000, "testing": 1000}
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh

    def pre_nms_top_n(self):
        return self._pre_nms_top_n["training" if self.training else "testing"]

    def post_nms_top_n(self):
        return self._post_nms_top_n["training" if self.training else "testing"]

    def filter_proposals(self, proposals, objectness, image_sizes, num_anchors_per_level, intermediates=None):
        """Keep the best proposals of each image: top-n per level, clip, drop tiny boxes, NMS per level.

        ``proposals`` (N, total, 4) and ``objectness`` (N, total) are arrays (no gradient flows
        through the selection). Returns per-image lists of boxes and objectness probabilities.
        """
        xp = get_array_module(proposals)
        num_images = proposals.shape[0]
        top_idx, level_ids, start = [], [], 0
        for level, count in enumerate(num_anchors_per_level):
            k = min(self.pre_nms_top_n(), count)
            scores = objectness[:, start:start + count]
            # stable sort on the negated score: descending, ties in anchor order
            top_idx.append(xp.argsort(-scores, axis=1, kind="stable")[:, :k] + start)
            level_ids.append(xp.full(k, level, dtype=np.int64))
            start += count
        top_idx = xp.concatenate(top_idx, axis=1)
        levels = xp.concatenate(level_ids)
        rows = xp.arange(num_images)[:, None]
        probs = stable_sigmoid(objectness[rows, top_idx])
        boxes_top = proposals[rows, top_idx]

        final_boxes, final_scores = [], []
        for i in range(num_images):
            boxes = clip_boxes_to_image(boxes_top[i], image_sizes[i])
            keep = remove_small_boxes(boxes, self.min_size)
            boxes, scores, lvl = boxes[keep], probs[i][keep], levels[keep]
            keep = xp.nonzero(scores >= self.score_thresh)[0]
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            if intermediates is not None:
                intermediates.setdefault("proposals_before_nms", []).append(boxes)
                intermediates.setdefault("proposal_scores_before_nms", []).append(scores)
            keep = batched_nms(boxes, scores, lvl, self.nms_thresh)[: self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        return final_boxes, final_scores

    def assign_targets_to_anchors(self, anchors, targets):
        """Label every anchor 1 (object), 0 (background) or -1 (ignored) and pick its GT box."""
        labels, matched_boxes = [], []
        for anchors_i, target in zip(anchors, targets):
            xp = get_array_module(anchors_i)
            gt = target["boxes"]
            if gt.shape[0] == 0:
                labels.append(xp.zeros(anchors_i.shape[0], dtype=anchors_i.dtype))
                matched_boxes.append(xp.zeros_like(anchors_i))
                continue
            matched = self.proposal_matcher(box_iou(gt, anchors_i))
            label = (matched >= 0).astype(anchors_i.dtype)
            label[matched == Matcher.BELOW_LOW_THRESHOLD] = 0.0
            label[matched == Matcher.BETWEEN_THRESHOLDS] = -1.0
            labels.append(label)
            matched_boxes.append(gt[xp.maximum(matched, 0)])
        return labels, matched_boxes

    def compute_loss(self, objectness, box_deltas, labels, regression_targets):
        """BCE over a balanced sample of anchors; smooth L1 (beta 1/9, summed) over its positives,
        divided by the sample size. Returns the two losses and the sample: the indices of its
        positive and its negative anchors in the batch's flattened anchors."""
        xp = get_array_module(labels[0])
        pos, neg = self.fg_bg_sampler(labels)
        pos = xp.nonzero(xp.concatenate(pos))[0]
        neg = xp.nonzero(xp.concatenate(neg))[0]
        sampled = xp.concatenate([pos, neg])
        labels = xp.concatenate(labels)
        regression_targets = xp.concatenate(regression_targets)
        box_loss = F.smooth_l1_loss(box_deltas[pos], regression_targets[pos], beta=1 / 9, reduction="sum") * (
            1.0 / max(sampled.size, 1))
        objectness_loss = F.binary_cross_entropy_with_logits(objectness[sampled], labels[sampled])
        return objectness_loss, box_loss, (pos, neg)

    def forward(self, images, features, targets=None, intermediates=None, stats=None):
        """Proposals for each image, and in training the two RPN losses.

        ``images`` is an ImageList (padded batch and sizes), ``features`` an ordered dict of
        FPN maps. When ``intermediates`` is a dict, the anchors, objectness, proposals before
        and after NMS and the anchor labels are stored in it for inspection; when ``stats`` is
        a dict, training statistics (foreground/background accuracy of the sample) go there.
        """
        features = list(features.values())
        logits, deltas = self.head(features)
        anchors = self.anchor_generator(images, features)
        num_anchors_per_level = [l.shape[1] * l.shape[2] * l.shape[3] for l in logits]
        objectness, box_deltas, num_images = flatten_head_outputs(logits, deltas)

        proposals = self.box_coder.decode(box_deltas.data, get_array_module(anchors[0]).concatenate(anchors)).reshape(num_images, -1, 4)
        boxes, scores = self.filter_proposals(proposals, objectness.data.reshape(num_images, -1),
                                              images.image_sizes, num_anchors_per_level, intermediates)
        if intermediates is not None:
            intermediates.update(anchors=anchors, num_anchors_per_level=num_anchors_per_level,
                                 objectness=objectness.data.reshape(num_images, -1),
                                 proposals=boxes, proposal_scores=scores)
        losses = {}
        if self.training:
            if targets is None:
                raise ValueError("the RPN needs targets in training mode: call model.eval() for inference")
            labels, matched_boxes = self.assign_targets_to_anchors(anchors, targets)
            regression_targets = [self.box_coder.encode(m, a) for m, a in zip(matched_boxes, anchors)]
            loss_objectness, loss_box, sample = self.compute_loss(objectness, box_deltas, labels, regression_targets)
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}
            pos, neg = sample
            if intermediates is not None:
                intermediates.update(rpn_labels=labels, rpn_sampled_positive=pos, rpn_sampled_negative=neg)
            if stats is not None:
                _objectness_stats(stats, objectness.data, pos, neg)
        return boxes, losses


def _objectness_stats(stats, logits, pos, neg):
    """How often the sampled anchors' objectness sign agrees with their label: the fraction of
    the positives ``pos`` with a logit > 0 and of the negatives ``neg`` with a logit <= 0 (indices
    into the flattened ``logits``), and the number of positives. The fractions stay 0-d arrays
    on the logits' device (NaN for an empty set): the trainer reads all statistics at once."""
    stats["rpn_fg_accuracy"] = fraction(logits[pos] > 0)
    stats["rpn_bg_accuracy"] = fraction(logits[neg] <= 0)
    stats["rpn_num_positive"] = int(pos.size)
