"""Data: the synthetic shapes set, COCO data sets, transforms and a resumable loader.

``coco.py`` the data set over a COCO instances file, ``annotations.py`` the checks of its
annotations (and COCO's RLE), ``images.py`` image files, ``subset.py`` smaller COCO files,
``shapes.py`` the synthetic set, ``transforms.py`` and ``loader.py`` what training draws from them.
"""
from .coco import CocoDetection, check_datasets, load_instances
from .images import image_paths, load_image
from .loader import DataLoader
from .shapes import SHAPES, classification_set, ensure_shapes_dataset, find_shapes_dataset, make_shapes_dataset, scene, shape_mask, tight_box
from .subset import coco_subset
from .transforms import Compose, RandomHorizontalFlip, SanitizeTarget, hflip, sanitize_target
