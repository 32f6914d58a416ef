"""Mask R-CNN: transform → backbone (ResNet-FPN) → RPN → RoI heads → postprocess.

Each stage is a module of its own and can be called alone; ``MaskRCNN.forward`` only wires them
and, on request, hands back every intermediate (``intermediates=dict``) and the training
statistics (``stats=dict``), so a notebook can stop after any stage and draw it.
"""
from collections import OrderedDict


from .. import nn
from ..core.autograd import Tensor
from ..core.backend import array_from, device_of, to_device_together
from .anchors import AnchorGenerator
from .backbone import BackboneWithFPN, freeze_resnet_layers, resnet_fpn_extractor, validate_trainable_layers
from ..ops.poolers import MultiScaleRoIAlign
from .resnet import resnet18, resnet50
from .roi_heads import FastRCNNConvFCHead, FastRCNNPredictor, MaskRCNNHeads, MaskRCNNPredictor, RoIHeads, TwoMLPHead
from .rpn import RegionProposalNetwork, RPNHead
from .transform import GeneralizedRCNNTransform
from ..weights.torchvision import load_torchvision, num_classes_in, read_weights


_ACCEPTED = ("NumPy or CuPy arrays, Tensors, torch tensors (tv_tensors included), or anything with __array__ or "
             "__dlpack__")


def _input_array(value, what):
    if isinstance(value, Tensor):
        return value
    array = array_from(value)
    if array is None:
        raise TypeError(f"{what} is a {type(value).__name__}: the model takes {_ACCEPTED}")
    return array


def model_inputs(images, targets=None):
    """The model's boundary: ``images`` and the arrays in ``targets`` converted, once, to NumPy
    (or, on the GPU, CuPy) arrays, so a torchvision user's batch goes in as it is.

    Each image, and each value of a target dict that holds an array, may be a NumPy or CuPy
    array, one of our Tensors, a torch tensor or tv_tensor (on the CPU a view of its memory, on
    the GPU a CuPy array by DLPack, no host copy; torch itself is not imported), or anything
    with ``__array__`` or ``__dlpack__``. Other target values (an ``image_id`` int, say) pass
    unchanged, for the transform's checks to judge. Anything else as an image is a TypeError
    naming it.
    """
    if not isinstance(images, (list, tuple)):
        raise TypeError(f"images must be a list of (3, H, W) images ({_ACCEPTED}), got {type(images).__name__}")
    images = [_input_array(image, f"images[{i}]") for i, image in enumerate(images)]
    if isinstance(targets, (list, tuple)):
        targets = [{key: _target_value(value) for key, value in target.items()} if isinstance(target, dict)
                   else target for target in targets]
    return images, targets


def _target_value(value):
    if isinstance(value, (Tensor, bool, int, float, str)) or value is None:
        return value
    array = array_from(value)
    return value if array is None else array


class MaskRCNN(nn.Module):
    """torchvision's MaskRCNN, with its keyword arguments and defaults.

    Args:
        backbone: a module with ``out_channels`` returning an ordered dict of feature maps.
        num_classes: classes including background (a custom ``box_predictor`` instead leaves it None).
        min_size, max_size, image_mean, image_std, size_divisible, fixed_size: the transform.
        rpn_*: the RPN (anchor generator, head, top-n before/after NMS for train/test, NMS and
            matching thresholds, sampling).
        box_*: the box branch (pooler, head, predictor, score/NMS thresholds, detections per
            image, matching thresholds, sampling), bbox_reg_weights.
        mask_roi_pool, mask_head, mask_predictor: the mask branch; mask_batch_size_per_image
            (not in torchvision; None = all) caps the positive RoIs per image it trains on.
    """

    def __init__(self, backbone, num_classes=None, min_size=800, max_size=1333, image_mean=None, image_std=None,
                 rpn_anchor_generator=None, rpn_head=None, rpn_pre_nms_top_n_train=2000, rpn_pre_nms_top_n_test=1000,
                 rpn_post_nms_top_n_train=2000, rpn_post_nms_top_n_test=1000, rpn_nms_thresh=0.7,
                 rpn_fg_iou_thresh=0.7, rpn_bg_iou_thresh=0.3, rpn_batch_size_per_image=256, rpn_positive_fraction=0.5,
                 rpn_score_thresh=0.0, box_roi_pool=None, box_head=None, box_predictor=None, box_score_thresh=0.05,
                 box_nms_thresh=0.5, box_detections_per_img=100, box_fg_iou_thresh=0.5, box_bg_iou_thresh=0.5,
                 box_batch_size_per_image=512, box_positive_fraction=0.25, bbox_reg_weights=None,
                 mask_roi_pool=None, mask_head=None, mask_predictor=None, mask_batch_size_per_image=None,
                 size_divisible=32, fixed_size=None):
        super().__init__()
        if not hasattr(backbone, "out_channels"):
            raise ValueError("the backbone needs an `out_channels` attribute (the number of channels of its maps)")
        if (num_classes is None) == (box_predictor is None):
            raise ValueError("give exactly one of num_classes and box_predictor")
        if mask_predictor is not None and num_classes is not None:
            raise ValueError("num_classes should be None when mask_predictor is given")
        channels = backbone.out_channels

        anchor_generator = rpn_anchor_generator if rpn_anchor_generator is not None else AnchorGenerator(
            sizes=((32,), (64,), (128,), (256,), (512,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
        rpn_head = rpn_head if rpn_head is not None else RPNHead(channels, anchor_generator.num_anchors_per_location()[0])
        rpn = RegionProposalNetwork(
            anchor_generator, rpn_head, rpn_fg_iou_thresh, rpn_bg_iou_thresh, rpn_batch_size_per_image,
            rpn_positive_fraction, {"training": rpn_pre_nms_top_n_train, "testing": rpn_pre_nms_top_n_test},
            {"training": rpn_post_nms_top_n_train, "testing": rpn_post_nms_top_n_test}, rpn_nms_thresh,
            score_thresh=rpn_score_thresh)

        box_roi_pool = box_roi_pool if box_roi_pool is not None else MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
        resolution = box_roi_pool.output_size[0]
        box_head = box_head if box_head is not None else TwoMLPHead(channels * resolution ** 2, 1024)
        box_predictor = box_predictor if box_predictor is not None else FastRCNNPredictor(1024, num_classes)
        mask_roi_pool = mask_roi_pool if mask_roi_pool is not None else MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2)
        mask_head = mask_head if mask_head is not None else MaskRCNNHeads(channels, (256, 256, 256, 256), 1)
        mask_predictor = mask_predictor if mask_predictor is not None else MaskRCNNPredictor(256, 256, num_classes)
        roi_heads = RoIHeads(
            box_roi_pool, box_head, box_predictor, box_fg_iou_thresh, box_bg_iou_thresh, box_batch_size_per_image,
            box_positive_fraction, bbox_reg_weights, box_score_thresh, box_nms_thresh, box_detections_per_img,
            mask_roi_pool=mask_roi_pool, mask_head=mask_head, mask_predictor=mask_predictor,
            mask_batch_size_per_image=mask_batch_size_per_image)

        self.transform = GeneralizedRCNNTransform(
            min_size, max_size, image_mean or (0.485, 0.456, 0.406), image_std or (0.229, 0.224, 0.225),
            size_divisible=size_divisible, fixed_size=fixed_size)
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads

    def forward(self, images, targets=None, intermediates=None, stats=None, paste_masks=True):
        """Inference: a list of dicts (boxes, labels, scores, masks) per image. Training: the
        five losses. ``images`` is a list of (3, H, W) float arrays in [0, 1]; ``targets`` a
        list of dicts with boxes (K, 4) xyxy, labels (K,) int64 and masks (K, H, W) uint8.
        What torchvision's model takes is taken too (``model_inputs``): torch tensors and
        tv_tensors, and anything with ``__array__`` or ``__dlpack__``; the outputs are arrays.

        Pass a dict as ``intermediates`` to receive every stage's output (the transformed
        batch, feature maps, anchors, objectness, proposals before and after NMS, sampled RoIs
        and their targets, raw detections) and as ``stats`` for the training statistics.
        ``paste_masks=False`` leaves each mask as its (1, M, M) probabilities in its box (to
        paste one at a time, ``ops.PastedMasks``) instead of a full-size image.
        """
        if self.training and targets is None:
            raise ValueError("training mode needs targets: call model.eval() for inference")
        images, targets = model_inputs(images, targets)
        original_sizes = [tuple(getattr(img, "shape")[-2:]) for img in images]
        images, targets = self._to_model_device(images, targets)
        batch, targets = self.transform(images, targets)
        features = self.backbone(batch.tensors)
        if isinstance(features, (list, tuple)):
            features = OrderedDict((str(i), f) for i, f in enumerate(features))
        proposals, rpn_losses = self.rpn(batch, features, targets, intermediates=intermediates, stats=stats)
        detections, roi_losses = self.roi_heads(features, proposals, batch.image_sizes, targets,
                                                intermediates=intermediates, stats=stats)
        if intermediates is not None:
            intermediates.update(images=batch, features=features, detections_before_postprocess=detections)
        if self.training:
            return {**roi_losses, **rpn_losses}
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes, paste_masks)


    def _to_model_device(self, images, targets):
        """Images and targets moved to the device of the model's parameters (NumPy images into a
        model on the GPU, say); unchanged when they are there already."""
        device = device_of(next(iter(self.parameters())))
        if all(device_of(img) == device for img in images):
            return images, targets
        # the batch in one transfer per dtype (images, boxes, labels, masks), not one per array
        targets = None if targets is None else [dict(t) if isinstance(t, dict) else t for t in targets]
        slots = [(t, k) for t in (targets or []) if isinstance(t, dict) for k, v in t.items() if hasattr(v, "shape")]
        moved = to_device_together(images + [t[k] for t, k in slots], device)
        for (t, k), value in zip(slots, moved[len(images):]):
            t[k] = value
        return moved[:len(images)], targets


def maskrcnn_resnet50_fpn(*, weights=None, progress=True, num_classes=None, weights_backbone="IMAGENET1K_V1",
                          trainable_backbone_layers=None, norm_layer=None, **kwargs):
    """torchvision's ``maskrcnn_resnet50_fpn``, with its arguments and their meaning.

    Args:
        weights: the whole detector's: None, a path to a ``.pth`` file, or torchvision's names
            ('DEFAULT' = 'COCO_V1', 'MaskRCNN_ResNet50_FPN_Weights.COCO_V1', or the enum member),
            found in torch's cache folder (``tm.weights.resolve_weights`` says where). They fix
            ``num_classes`` (91 for COCO) and replace ``weights_backbone``.
        progress: accepted for torchvision's signature; nothing is downloaded.
        num_classes: classes including background; 91 when neither it nor ``weights`` is given.
        weights_backbone: the ResNet-50's ImageNet weights, as ``weights`` ('IMAGENET1K_V1' by
            default, torchvision's; None to start from random), loaded into the backbone alone.
        trainable_backbone_layers: layers trained, from layer4 backwards: 3 when there are
            weights (of either kind) and None is given; all 5 without weights.
        norm_layer: not torchvision's: None chooses as torchvision does, FrozenBatchNorm2d with
            weights (ImageNet statistics, too few images per batch to estimate new ones) and
            BatchNorm2d without (random layers need their statistics learnt).
        kwargs: MaskRCNN's keyword arguments.

    With torchvision's COCO weights (COCO_V1, by name or its file), the frozen batch norms take
    eps = 0, as torchvision sets for that checkpoint, so the outputs are torchvision's. The
    tutorial's fine-tuning, ported, is ``docs/from-torchvision.md``.
    """
    state, name = read_weights(weights, "maskrcnn_resnet50_fpn")
    if state is not None:
        if "fc.weight" in state and "conv1.weight" in state:
            raise ValueError(f"maskrcnn_resnet50_fpn: {weights} holds an ImageNet ResNet's weights, not a detector's: "
                             "pass it as weights_backbone=")
        weights_backbone = None  # the detector's file holds the backbone too
        num_classes = num_classes_in(state, "roi_heads.box_predictor.cls_score.weight", num_classes,
                                     "maskrcnn_resnet50_fpn")
    elif num_classes is None:
        num_classes = 91
    is_trained = weights is not None or weights_backbone is not None
    trainable_backbone_layers = validate_trainable_layers(is_trained, trainable_backbone_layers, 5, 3)
    if norm_layer is None:
        norm_layer = nn.FrozenBatchNorm2d if is_trained else nn.BatchNorm2d
    try:
        body = resnet50(weights=weights_backbone, progress=progress, norm_layer=norm_layer)
    except FileNotFoundError as e:  # most often torchvision's default, IMAGENET1K_V1, not at hand
        raise FileNotFoundError(f"maskrcnn_resnet50_fpn's weights_backbone: {e}; weights_backbone=None starts "
                                "from random weights") from None
    model = MaskRCNN(resnet_fpn_extractor(body, trainable_backbone_layers), num_classes=num_classes, **kwargs)
    if state is not None:
        load_torchvision(model, state)
        if name == "COCO_V1":
            for module in model.modules():
                if isinstance(module, nn.FrozenBatchNorm2d):
                    module.eps = 0.0
    return model


def maskrcnn_resnet18_fpn(num_classes=91, fpn_channels=128, representation_size=256, mask_channels=64,
                          min_size=160, max_size=256, anchor_sizes=(16, 32, 64, 128, 256), scales_per_octave=3,
                          norm="batch", norm_layer=None, box_head_convs=(), **kwargs):
    """A Mask R-CNN small enough to train from scratch on a laptop CPU.

    Same architecture and recipe as ``maskrcnn_resnet50_fpn``, scaled down:

    * backbone ResNet-18 with ``norm`` "batch" (BatchNorm2d: batch statistics train, running
      ones infer) or "instance" (InstanceNorm2d with affine: every image normalised by its own
      statistics, in training and inference alike; the main job's choice), or any
      ``norm_layer``; no ImageNet weights are assumed, every layer trainable; FPN with
      ``fpn_channels`` (128) channels;
    * ``box_head_convs``: empty for torchvision's TwoMLPHead, or the widths of 3x3 convs with
      BatchNorm2d before one fc layer (``FastRCNNConvFCHead``);
    * images resized to a short side of ``min_size`` (160, long side ≤ ``max_size`` 256);
    * anchors from ``anchor_sizes`` (16..256 px, one per level), each level with
      ``scales_per_octave`` (3) sizes s·2^(k/3) (as RetinaNet) and ratios 0.5, 1, 2. With one
      size per level (torchvision's choice) an object between two sizes, e.g. 40 px between 32
      and 64, overlaps no anchor by IoU 0.7 and the RPN gets one positive per object (the
      low-quality match); three sizes give every object several;
    * box head of ``representation_size`` (256) units, mask head of ``mask_channels`` (64): the
      mask head runs on every positive RoI (about 60 per batch of two once the RPN has
      learnt), and with 128 channels its four 3x3 convs cost more than the rest of the model;
    * fewer proposals (600/300 before/after NMS in training, 300/100 at test time) and a
      box sample of 128 RoIs per image;
    * predictors that start near zero (see ``init_predictors_small``), as nothing is pretrained.

    Any MaskRCNN keyword in ``kwargs`` overrides these.
    """
    norms = {"batch": nn.BatchNorm2d, "instance": lambda channels: nn.InstanceNorm2d(channels, affine=True)}
    if norm_layer is None and norm not in norms:
        raise ValueError(f"norm={norm!r}: choose one of {tuple(norms)} (or pass norm_layer)")
    body = resnet18(norm_layer=norm_layer or norms[norm])
    freeze_resnet_layers(body, 5)  # only the unused classifier is frozen
    backbone = BackboneWithFPN(body, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                               [64, 128, 256, 512], fpn_channels)
    defaults = dict(
        min_size=min_size, max_size=max_size,
        rpn_anchor_generator=AnchorGenerator(
            tuple(tuple(s * 2 ** (k / scales_per_octave) for k in range(scales_per_octave)) for s in anchor_sizes),
            ((0.5, 1.0, 2.0),) * len(anchor_sizes)),
        rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100, box_batch_size_per_image=128,
        box_head=(FastRCNNConvFCHead((fpn_channels, 7, 7), box_head_convs, (representation_size,), nn.BatchNorm2d)
                  if box_head_convs else TwoMLPHead(fpn_channels * 7 * 7, representation_size)),
        mask_head=MaskRCNNHeads(fpn_channels, (mask_channels,) * 4, 1),
    )
    defaults.update(kwargs)
    if "box_predictor" not in defaults:
        defaults["box_predictor"] = FastRCNNPredictor(representation_size, num_classes)
    if "mask_predictor" not in defaults:
        defaults["mask_predictor"] = MaskRCNNPredictor(mask_channels, mask_channels, num_classes)
    model = MaskRCNN(backbone, num_classes=None, **defaults)
    init_predictors_small(model)
    return model


def init_predictors_small(model):
    """Draw the last layers (class scores, box deltas, mask logits) from N(0, 0.01²), N(0, 0.001²)
    and N(0, 0.001²) with zero biases, as detectron2 does.

    torchvision's defaults (nn.Linear's uniform, He init of the mask logits) are harmless when
    the backbone is pretrained, but on a randomly initialised one the He-initialised mask logits
    start at magnitudes near 10 (a mask loss of 6-9 instead of log 2), and gradient clipping then
    spends the first hundreds of iterations undoing them. Starting near zero gives every loss its
    uninformed value (log K, 0, log 2) at iteration 0.
    """
    predictor, mask_predictor = model.roi_heads.box_predictor, model.roi_heads.mask_predictor
    for layer, std in ((predictor.cls_score, 0.01), (predictor.bbox_pred, 0.001),
                       (mask_predictor.mask_fcn_logits, 0.001)):
        nn.init.normal_(layer.weight, std=std)
        nn.init.zeros_(layer.bias)
