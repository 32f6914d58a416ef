"""The RoI heads: classify each proposal, refine its box, and predict its mask.

Training: GT boxes join the proposals, each proposal is matched to a GT box (IoU ≥ 0.5 →
that class, else background), a balanced sample is drawn (512 per image, 25 % foreground),
and three losses are taken — cross-entropy over classes, class-specific smooth L1 on the
positives' box deltas, and per-pixel BCE between each positive's 28×28 mask logits (the GT
class channel) and the GT mask cropped to the proposal by RoIAlign.

Inference: softmax scores, per-class decoded boxes, background dropped, low scores and tiny
boxes removed, NMS per class, the best 100 kept; masks are the sigmoid of the predicted class
channel, pasted into the image later by the transform.
"""
import numpy as np

from .. import functional as F
from .. import nn
from ..core.backend import fraction, get_array_module
from .matcher import BalancedPositiveNegativeSampler, Matcher
from .box_coder import BoxCoder
from ..ops.boxes import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes
from ..functional.activation import stable_sigmoid
from ..ops.roi_align import RoIAlign


class TwoMLPHead(nn.Module):
    """Flatten the 7×7 RoI features, then two fully connected layers with ReLU (fc6, fc7)."""

    def __init__(self, in_channels, representation_size):
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x):
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))


class FastRCNNConvFCHead(nn.Sequential):
    """3×3 convs (each conv, then ``norm_layer`` if given, then ReLU) on the (C, H, W) RoI
    features, then flatten and fully connected layers with ReLU: torchvision's head of the same
    name (its Faster R-CNN v2 uses four 256-channel convs with BatchNorm2d and one fc of 1024).

    Keys: ``i.0.weight`` for the i-th conv (``i.1.*`` its norm), then after the flatten at
    index len(conv_layers), ``j.weight`` for each fc. The convs share their weights over the
    RoI's 7×7 cells, which a from-scratch model learns from far fewer RoIs than fc6's
    C·7·7 inputs.
    """

    def __init__(self, input_size, conv_layers, fc_layers, norm_layer=None):
        in_channels, height, width = input_size
        blocks = []
        for width_out in conv_layers:
            layers = [nn.Conv2d(in_channels, width_out, 3, padding=1, bias=norm_layer is None)]
            if norm_layer is not None:
                layers.append(norm_layer(width_out))
            blocks.append(nn.Sequential(*layers, nn.ReLU()))
            in_channels = width_out
        blocks.append(nn.Flatten())
        features = in_channels * height * width
        for size in fc_layers:
            blocks += [nn.Linear(features, size), nn.ReLU()]
            features = size
        super().__init__(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


class FastRCNNPredictor(nn.Module):
    """Class logits (num_classes) and per-class box deltas (4·num_classes) from the box features."""

    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)

    def forward(self, x):
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


class MaskRCNNHeads(nn.Sequential):
    """Four (by default) 3×3 conv + ReLU blocks on the 14×14 RoI features (keys ``i.0.weight``)."""

    def __init__(self, in_channels, layers=(256, 256, 256, 256), dilation=1):
        blocks = []
        for width in layers:
            blocks.append(nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=dilation, dilation=dilation), nn.ReLU()))
            in_channels = width
        super().__init__(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)


class MaskRCNNPredictor(nn.Module):
    """2×2 stride-2 transposed conv + ReLU (14 → 28), then a 1×1 conv to one mask logit map per class."""

    def __init__(self, in_channels, dim_reduced, num_classes):
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(in_channels, dim_reduced, 2, stride=2)
        self.relu = nn.ReLU()
        self.mask_fcn_logits = nn.Conv2d(dim_reduced, num_classes, 1)
        for name, p in self.named_parameters():
            if "weight" in name:
                nn.init.kaiming_normal_(p, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.mask_fcn_logits(self.relu(self.conv5_mask(x)))


# ----- losses (free functions, as torchvision) ----------------------------------------------------


def fastrcnn_loss(class_logits, box_regression, labels, regression_targets):
    """Cross-entropy over all sampled RoIs, plus smooth L1 (beta 1/9, summed) between the deltas
    predicted *for the GT class* of each positive and its targets, divided by the number of RoIs.

    With no RoI at all (a sampler that kept none) both losses are 0, still connected to the
    graph, so the step's gradient is zero; torchvision's mean over no RoI gives NaN there, which
    would poison every weight.
    """
    xp = get_array_module(labels[0])
    labels = xp.concatenate(labels)
    regression_targets = xp.concatenate(regression_targets)
    n, num_classes = class_logits.shape
    if n == 0:
        return class_logits.sum() * 0.0, box_regression.sum() * 0.0
    classification_loss = F.cross_entropy(class_logits, labels)
    pos = xp.nonzero(labels > 0)[0]
    deltas = box_regression.reshape(n, num_classes, 4)[pos, labels[pos]]
    box_loss = F.smooth_l1_loss(deltas, regression_targets[pos], beta=1 / 9, reduction="sum") * (1.0 / labels.size)
    return classification_loss, box_loss


def project_masks_on_boxes(gt_masks, boxes, matched_idxs, size):
    """The GT mask of each RoI, cropped to the RoI and resampled to size×size by RoIAlign
    (scale 1, adaptive sampling, legacy alignment): soft targets in [0, 1]."""
    xp = get_array_module(boxes)
    rois = xp.concatenate([matched_idxs[:, None].astype(boxes.dtype), boxes], axis=1)
    masks = gt_masks[:, None].astype(boxes.dtype)
    # RoIAlign without roi_align's checks (a host read per image): the model made these boxes
    return RoIAlign.apply(masks, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1,
                          aligned=False).data[:, 0]


def mask_targets(proposals, gt_masks, gt_labels, matched_idxs, size):
    """The GT class and the size×size projected GT mask of every positive RoI, all images joined."""
    xp = get_array_module(proposals[0])
    labels = xp.concatenate([l[i] for l, i in zip(gt_labels, matched_idxs)])
    targets = xp.concatenate([project_masks_on_boxes(m, p, i, size)
                              for m, p, i in zip(gt_masks, proposals, matched_idxs)])
    return labels, targets


def maskrcnn_loss(mask_logits, labels, targets):
    """Mean BCE-with-logits between each positive's GT-class logit map and its projected GT mask
    (zero, still connected to the graph, when there is no positive)."""
    if targets.size == 0:
        return mask_logits.sum() * 0.0
    xp = get_array_module(targets)
    return F.binary_cross_entropy_with_logits(mask_logits[xp.arange(labels.shape[0]), labels], targets)


def maskrcnn_inference(mask_logits, labels):
    """Per image, (Ki, 1, M, M) probabilities: the sigmoid of each detection's class channel."""
    xp = get_array_module(mask_logits)
    all_labels = xp.concatenate(labels)
    probs = stable_sigmoid(mask_logits[xp.arange(all_labels.shape[0]), all_labels])[:, None]
    return xp.split(probs, np.cumsum([len(l) for l in labels])[:-1].tolist())  # host ints: CuPy takes no NumPy array


class RoIHeads(nn.Module):
    """torchvision's RoIHeads for boxes and masks (see the module docstring for the recipe).

    Hyperparameters are torchvision's: fg_iou_thresh/bg_iou_thresh 0.5, batch_size_per_image
    512, positive_fraction 0.25, bbox_reg_weights (10, 10, 5, 5), score_thresh 0.05,
    nms_thresh 0.5, detections_per_img 100. One is added: ``mask_batch_size_per_image`` (None,
    torchvision's behaviour: every positive) caps the positive RoIs per image that train the
    mask head, which on a CPU costs more per RoI than the rest of the step.
    """

    def __init__(self, box_roi_pool, box_head, box_predictor, fg_iou_thresh=0.5, bg_iou_thresh=0.5,
                 batch_size_per_image=512, positive_fraction=0.25, bbox_reg_weights=None, score_thresh=0.05,
                 nms_thresh=0.5, detections_per_img=100, mask_roi_pool=None, mask_head=None, mask_predictor=None,
                 mask_batch_size_per_image=None):
        super().__init__()
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.mask_roi_pool = mask_roi_pool
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor
        self.proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.box_coder = BoxCoder(bbox_reg_weights or (10.0, 10.0, 5.0, 5.0))
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        # in training the mask head sees every positive RoI (torchvision), or at most this many
        # per image drawn at random: positives of one object are near copies of each other
        self.mask_sampler = None if mask_batch_size_per_image is None else \
            BalancedPositiveNegativeSampler(mask_batch_size_per_image, 1.0)

    def has_mask(self):
        return self.mask_predictor is not None

    def select_training_samples(self, proposals, targets):
        """Add GT boxes to the proposals, match, sample; returns the sampled proposals, their
        matched GT index, class label (0 = background) and box regression targets."""
        xp = get_array_module(proposals[0])
        out = {"proposals": [], "matched_idxs": [], "labels": [], "regression_targets": []}
        sampled_labels_all = []
        per_image = []
        for props, target in zip(proposals, targets):
            gt_boxes = target["boxes"].astype(props.dtype)
            props = xp.concatenate([props, gt_boxes])
            if gt_boxes.shape[0] == 0:
                matched = xp.zeros(props.shape[0], dtype=np.int64)
                labels = xp.zeros(props.shape[0], dtype=np.int64)
            else:
                raw = self.proposal_matcher(box_iou(gt_boxes, props))
                matched = xp.maximum(raw, 0)
                labels = target["labels"][matched].astype(np.int64)
                labels[raw == Matcher.BELOW_LOW_THRESHOLD] = 0
                labels[raw == Matcher.BETWEEN_THRESHOLDS] = -1
            per_image.append((props, gt_boxes, matched))
            sampled_labels_all.append(labels)
        pos, neg = self.fg_bg_sampler(sampled_labels_all)
        for (props, gt_boxes, matched), labels, p, n in zip(per_image, sampled_labels_all, pos, neg):
            keep = xp.nonzero(p | n)[0]
            props, matched, labels = props[keep], matched[keep], labels[keep]
            if gt_boxes.shape[0] == 0:  # background-only image: targets against a dummy box
                gt_boxes = xp.zeros((1, 4), dtype=props.dtype)
            out["proposals"].append(props)
            out["matched_idxs"].append(matched)
            out["labels"].append(labels)
            out["regression_targets"].append(self.box_coder.encode(gt_boxes[matched], props))
        return out

    def postprocess_detections(self, class_logits, box_regression, proposals, image_sizes):
        """Per image: boxes, scores and labels of the kept detections (see the module docstring)."""
        xp = get_array_module(class_logits)
        num_classes = class_logits.shape[-1]
        boxes_all = self.box_coder.decode(box_regression, xp.concatenate(proposals)).reshape(-1, num_classes, 4)
        shifted = class_logits - class_logits.max(axis=-1, keepdims=True)
        scores_all = xp.exp(shifted)
        scores_all /= scores_all.sum(axis=-1, keepdims=True)
        splits = np.cumsum([len(p) for p in proposals])[:-1].tolist()  # host ints: CuPy takes no NumPy array
        results = []
        for boxes, scores, size in zip(xp.split(boxes_all, splits), xp.split(scores_all, splits), image_sizes):
            boxes = clip_boxes_to_image(boxes, size)
            labels = xp.broadcast_to(xp.arange(num_classes), scores.shape)
            boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            keep = xp.nonzero(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = remove_small_boxes(boxes, 1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            results.append({"boxes": boxes[keep], "labels": labels[keep].astype(np.int64), "scores": scores[keep]})
        return results

    def forward(self, features, proposals, image_sizes, targets=None, intermediates=None, stats=None):
        """Detections per image (inference) or the box and mask losses (training).

        Two branches, as in torchvision: the box branch classifies and refines RoIs, then the
        mask branch segments the RoIs the box branch hands on (the sampled positives in
        training, the kept detections in inference). Dicts given as ``intermediates`` and
        ``stats`` receive what a notebook may inspect (see ``_Notes``).
        """
        notes = _Notes(intermediates, stats)
        if self.training:
            if targets is None:
                raise ValueError("the RoI heads need targets in training mode: call model.eval() for inference")
            sample = self.select_training_samples(proposals, targets)
            notes.keep(sampled_rois=sample["proposals"], roi_labels=sample["labels"],
                       roi_regression_targets=sample["regression_targets"], roi_matched_idxs=sample["matched_idxs"])
            losses = self._box_losses(features, image_sizes, sample, notes)
            if self.has_mask():
                losses["loss_mask"] = self._mask_loss(features, image_sizes, sample, targets, notes)
            return [], losses
        detections = self._detect_boxes(features, proposals, image_sizes, notes)
        if self.has_mask():
            self._detect_masks(features, image_sizes, detections)
        return detections, {}

    # ----- the box branch: pool 7×7, box head, predictor ------------------------------------------

    def _box_logits(self, features, boxes, image_sizes):
        """Class logits (K, num_classes) and per-class deltas (K, 4·num_classes) of K boxes."""
        return self.box_predictor(self.box_head(self.box_roi_pool(features, boxes, image_sizes)))

    def _box_losses(self, features, image_sizes, sample, notes):
        """Training: the classification and box-regression losses of the sampled RoIs."""
        class_logits, box_regression = self._box_logits(features, sample["proposals"], image_sizes)
        notes.measure(_box_stats, class_logits.data, sample["labels"])
        loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, sample["labels"],
                                                      sample["regression_targets"])
        return {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

    def _detect_boxes(self, features, proposals, image_sizes, notes):
        """Inference: every proposal scored and refined; per image, the detections kept."""
        class_logits, box_regression = self._box_logits(features, proposals, image_sizes)
        notes.keep(class_logits=class_logits.data, box_regression=box_regression.data)
        return self.postprocess_detections(class_logits.data, box_regression.data, proposals, image_sizes)

    # ----- the mask branch: pool 14×14, mask head, predictor --------------------------------------

    def _mask_logits(self, features, boxes, image_sizes):
        """Mask logits (K, num_classes, 28, 28) of K boxes."""
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_sizes)))

    def _mask_loss(self, features, image_sizes, sample, targets, notes):
        """Training: BCE between the positive RoIs' mask logits (their GT class channel) and
        their GT masks projected on the RoIs."""
        positives = self._mask_positives(sample["labels"])
        boxes = [p[i] for p, i in zip(sample["proposals"], positives)]
        matched = [m[i] for m, i in zip(sample["matched_idxs"], positives)]
        mask_logits = self._mask_logits(features, boxes, image_sizes)
        labels, projected = mask_targets(boxes, [t["masks"] for t in targets], [t["labels"] for t in targets],
                                         matched, mask_logits.shape[-1])
        notes.measure(_mask_stats, mask_logits.data, labels, projected)
        notes.keep(mask_targets=projected, mask_labels=labels)
        return maskrcnn_loss(mask_logits, labels, projected)

    def _mask_positives(self, labels):
        """Per image, the indices of the sampled RoIs that train the mask head: every positive,
        or a random draw of at most ``mask_batch_size_per_image`` of them."""
        xp = get_array_module(labels[0])
        if self.mask_sampler is None:
            return [xp.nonzero(l > 0)[0] for l in labels]
        # negatives marked -1 (ignored), so the sampler draws among the positives only
        drawn, _ = self.mask_sampler([xp.where(l > 0, l, -1) for l in labels])
        return [xp.nonzero(d)[0] for d in drawn]

    def _detect_masks(self, features, image_sizes, detections):
        """Inference: each detection's mask probabilities (the channel of its label), added to
        its dict as ``masks``."""
        mask_logits = self._mask_logits(features, [d["boxes"] for d in detections], image_sizes)
        probabilities = maskrcnn_inference(mask_logits.data, [d["labels"] for d in detections])
        for d, probs in zip(detections, probabilities):
            d["masks"] = probs


class _Notes:
    """What the heads hand back besides their outputs, on request: ``keep`` stores arrays in
    ``intermediates``, ``measure`` writes a statistic into ``stats``; each does nothing when its
    dict was not given, so a plain call computes no statistic."""

    def __init__(self, intermediates, stats):
        self.intermediates, self.stats = intermediates, stats

    def keep(self, **arrays):
        if self.intermediates is not None:
            self.intermediates.update(arrays)

    def measure(self, statistic, *args):
        if self.stats is not None:
            statistic(self.stats, *args)

def _box_stats(stats, class_logits, labels):
    """Classification accuracy of the sampled RoIs: foreground, background, and how many
    foreground RoIs were called background (false negatives)."""
    xp = get_array_module(class_logits)
    labels = xp.concatenate(labels)
    pred = class_logits.argmax(axis=1)
    fg, bg = labels > 0, labels == 0
    # 0-d arrays on the device (NaN for an empty set), read by the trainer with the losses
    stats["roi_accuracy"] = fraction(pred == labels)
    stats["roi_fg_accuracy"] = fraction(pred == labels, fg)
    stats["roi_false_negative"] = fraction(pred == 0, fg)
    stats["roi_bg_accuracy"] = fraction(pred == 0, bg)


def _mask_stats(stats, mask_logits, labels, targets):
    """Pixel accuracy of the positives' masks at logit 0 against the binarised targets, with
    the false-positive rate (predicted on, target off) and false-negative rate."""
    if targets.size == 0:
        stats.update(mask_accuracy=float("nan"), mask_false_positive=float("nan"), mask_false_negative=float("nan"))
        return
    xp = get_array_module(mask_logits)
    target = targets > 0.5
    pred = mask_logits[xp.arange(labels.shape[0]), labels] > 0
    stats["mask_accuracy"] = fraction(pred == target)
    # rates of no pixel are 0, not NaN: (pred & ~target).sum() / max((~target).sum(), 1)
    stats["mask_false_positive"] = (pred & ~target).sum() / xp.maximum((~target).sum(), 1)
    stats["mask_false_negative"] = (~pred & target).sum() / xp.maximum(target.sum(), 1)
