"""The detector, stage by stage: backbone → RPN → RoI heads, each usable alone."""
from .anchors import AnchorGenerator
from .backbone import BackboneWithFPN, IntermediateLayerGetter, resnet_fpn_backbone, resnet_fpn_extractor
from .fpn import FeaturePyramidNetwork, LastLevelMaxPool
from .mask_rcnn import MaskRCNN, maskrcnn_resnet18_fpn, maskrcnn_resnet50_fpn
from ..ops.poolers import MultiScaleRoIAlign
from .resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50, resnet101, resnet152
from .roi_heads import FastRCNNConvFCHead, FastRCNNPredictor, MaskRCNNHeads, MaskRCNNPredictor, RoIHeads, TwoMLPHead
from .rpn import RegionProposalNetwork, RPNHead
from .transform import GeneralizedRCNNTransform, ImageList
