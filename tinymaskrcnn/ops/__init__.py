"""The detector's ops under torchvision.ops names: box geometry and NMS, RoIAlign, the
multi-level pooler, mask pasting. (The layers' ops, under torch.nn.functional names, are in
``tinymaskrcnn.functional``.)"""
from .boxes import batched_nms, box_area, box_iou, clip_boxes_to_image, nms, remove_small_boxes
from .paste_masks import PastedMasks, paste_masks_in_image
from .poolers import MultiScaleRoIAlign
from .roi_align import roi_align
