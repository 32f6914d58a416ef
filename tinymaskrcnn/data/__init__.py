"""Data: the synthetic shapes set, COCO data sets, transforms and a resumable loader."""
from .coco import CocoDetection, check_datasets, coco_subset, image_paths, load_image, load_instances
from .loader import DataLoader
from .shapes import SHAPES, classification_set, ensure_shapes_dataset, make_shapes_dataset, scene, shape_mask, tight_box
from .transforms import Compose, RandomHorizontalFlip, SanitizeTarget, hflip, sanitize_target
