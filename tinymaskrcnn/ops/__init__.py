"""The ops: one file per family, forward and backward side by side.

``tm.ops`` also holds the detection ops under torchvision.ops names, and the switch between
the fast convolution and the textbook one (``with tm.ops.conv_implementation("reference"):``).
"""
from .conv import conv_implementation, set_conv_implementation
from .boxes import batched_nms, box_iou, nms
from .paste_masks import paste_masks_in_image
from .roi_align import roi_align
