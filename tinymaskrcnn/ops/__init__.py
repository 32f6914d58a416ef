"""The ops: one file per family, forward and backward side by side.

``tm.ops`` also holds the detection ops under torchvision.ops names.
"""
from .boxes import batched_nms, box_iou, nms
