"""Teach a COCO-trained Mask R-CNN to find people: one script on torchvision
(examples/torchvision_finetuning.py) and its port to tinymaskrcnn (examples/tinymaskrcnn_finetuning.py).

The steps are those of PyTorch's "TorchVision Object Detection Finetuning Tutorial"
(pytorch/tutorials, intermediate_source/torchvision_tutorial.py): give the pretrained model new
box and mask predictors sized for our classes, train with SGD and a step schedule, measure
COCO AP, draw one prediction. The code is this project's. Where the tutorial's setting does not
suit a test, it is changed: the people come from a COCO-format file read with pycocotools rather
than from PennFudan, the epoch loop, the evaluation and the batching that the tutorial fetches
from torchvision's references/detection are written out here, and sizes, learning rate, epochs
and paths are arguments, so that a test can run the whole script on five tiny images.

The port renames the library and converts the outputs once for torchvision's drawing functions,
nothing else: ``diff examples/torchvision_finetuning.py examples/tinymaskrcnn_finetuning.py``,
shown and explained in docs/from-torchvision.md.

    python examples/torchvision_finetuning.py  --images DIR --annotations FILE.json
    python examples/tinymaskrcnn_finetuning.py --images DIR --annotations FILE.json
"""
import argparse
import math
import os
import sys

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, read_image, write_png
from torchvision.ops.boxes import masks_to_boxes
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

import torchvision
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="the folder that the annotation file's file names are in")
    parser.add_argument("--annotations", required=True, help="a COCO instances file with a 'person' category")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--num-test", type=int, default=50, help="how many images are kept out of training")
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--max-size", type=int, default=1333)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader processes (0: load in this one)")
    parser.add_argument("--out", default="prediction.png", help="PNG file for one test image with its detections")
    return parser.parse_args(argv)


class PeopleInCoco(torch.utils.data.Dataset):
    """The images of a COCO instances file that show at least one person not marked as a crowd,
    each with those people as label 1 (0 is the background). The image and the boxes and masks
    are tv_tensors: that is how torchvision's v2 transforms know to flip the targets with the
    image."""

    def __init__(self, coco, image_folder, transforms=None):
        self.coco, self.image_folder, self.transforms = coco, image_folder, transforms
        self.person = coco.getCatIds(catNms=["person"])[0]
        # crowd regions are not instances to learn from: an image with only those has nothing to train on
        people = coco.loadAnns(coco.getAnnIds(catIds=[self.person], iscrowd=False))
        self.ids = sorted({ann["image_id"] for ann in people})

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, idx):
        coco_id = self.ids[idx]
        file_name = self.coco.loadImgs(coco_id)[0]["file_name"]
        image = tv_tensors.Image(read_image(os.path.join(self.image_folder, file_name), ImageReadMode.RGB))
        people = self.coco.loadAnns(self.coco.getAnnIds(imgIds=coco_id, catIds=[self.person], iscrowd=False))
        masks = torch.from_numpy(np.stack([self.coco.annToMask(ann) for ann in people]))
        # boxes from the decoded masks rather than COCO's stored bbox, so that box and mask agree
        boxes = tv_tensors.BoundingBoxes(masks_to_boxes(masks), format="XYXY", canvas_size=F.get_size(image))
        target = {"boxes": boxes, "masks": tv_tensors.Mask(masks),
                  "labels": torch.ones(len(people), dtype=torch.int64),
                  "image_id": coco_id}  # the model ignores it; evaluate() files detections under it
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def person_segmenter(num_classes, min_size, max_size):
    """torchvision's COCO Mask R-CNN with its two predictors replaced. Everything before them
    (backbone, FPN, RPN, the box and mask heads) keeps what COCO taught it; only the last layers,
    sized for ``num_classes``, start from random weights."""
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights="DEFAULT", min_size=min_size, max_size=max_size)
    heads = model.roi_heads
    # each new predictor reads what the old one read: the box head's 1024 features, the mask
    # head's 256 channels (and upsamples through 256 channels, as the COCO predictor does)
    heads.box_predictor = FastRCNNPredictor(heads.box_predictor.cls_score.in_features, num_classes)
    heads.mask_predictor = MaskRCNNPredictor(heads.mask_predictor.conv5_mask.in_channels, 256, num_classes)
    return model


def make_transforms(train):
    """Training flips half the images left to right; both kinds then turn the uint8 pixels into
    floats in [0, 1] and unwrap the tv_tensors into plain tensors for the model."""
    flip = [T.RandomHorizontalFlip(0.5)] if train else []
    return T.Compose(flip + [T.ToDtype(torch.float, scale=True), T.ToPureTensor()])


def as_lists(samples):
    """A batch as a tuple of images and a tuple of targets: the images differ in size, so they
    cannot be stacked into one tensor (the model resizes and pads them itself)."""
    return tuple(zip(*samples))


def train_epoch(model, optimizer, loader, device, epoch, log_every):
    """One pass over ``loader``. The first epoch starts the rate at a thousandth of its value and
    raises it linearly over its first iterations (at most 1000), as torchvision's reference engine
    does: new random predictors on a pretrained trunk give large first gradients."""
    model.train()
    warmup_iters = min(1000, len(loader) - 1)
    warmup = None
    if epoch == 0 and warmup_iters > 0:  # one iteration has nothing to warm up over
        warmup = torch.optim.lr_scheduler.LinearLR(
            optimizer, start_factor=1 / 1000, total_iters=warmup_iters)
    for i, (images, targets) in enumerate(loader):
        images = [image.to(device) for image in images]
        targets = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        total = sum(losses.values())
        if not math.isfinite(total.item()):
            # every later step would be NaN too: stop, naming the losses that diverged
            sys.exit(f"epoch {epoch}, iteration {i}: the loss is {total.item()} "
                     f"({', '.join(f'{k} {v.item()}' for k, v in losses.items())})")
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        if warmup is not None:
            warmup.step()
        if i % log_every == 0 or i == len(loader) - 1:
            parts = ", ".join(f"{k} {v.item():.4f}" for k, v in losses.items())
            print(f"Epoch: [{epoch}] [{i}/{len(loader)}] lr: {optimizer.param_groups[0]['lr']:.6f}  "
                  f"total {total.item():.4f} ({parts})")


def to_numpy(value):
    """A model output as a NumPy array in host memory, whichever library made it and wherever it lives."""
    if hasattr(value, "cpu"):  # a torch tensor, possibly on the GPU
        value = value.cpu()
    return value.get() if hasattr(value, "get") else np.asarray(value)  # .get(): CuPy's copy to the host


def evaluate(model, loader, device):
    """COCO's box AP and mask AP of the model on ``loader``'s images, scored by COCOeval against
    the annotation file the images came from. Boxes and masks go to COCOeval as separate result
    lists, so that each kind's areas (which decide small, medium and large) come from itself."""
    people = loader.dataset.dataset  # the PeopleInCoco under the Subset
    model.eval()
    detections = {"bbox": [], "segm": []}
    image_ids = []
    with torch.no_grad():
        for images, targets in loader:
            outputs = model([image.to(device) for image in images])
            for target, output in zip(targets, outputs):
                image_ids.append(target["image_id"])
                boxes, scores, masks = (to_numpy(output[k]) for k in ("boxes", "scores", "masks"))
                for (x1, y1, x2, y2), score, mask in zip(boxes.tolist(), scores.tolist(), masks[:, 0] > 0.5):
                    found = {"image_id": target["image_id"], "category_id": people.person, "score": score}
                    detections["bbox"].append({**found, "bbox": [x1, y1, x2 - x1, y2 - y1]})  # COCO's xywh
                    detections["segm"].append(
                        {**found, "segmentation": mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))})
    if not detections["bbox"]:  # COCO.loadRes refuses an empty list
        print("AP not measured: no detections on the test images")
        return
    for iou_type, results in detections.items():
        evaluator = COCOeval(people.coco, people.coco.loadRes(results), iou_type)
        evaluator.params.imgIds = image_ids  # only the held-out images, not the whole file
        evaluator.evaluate()
        evaluator.accumulate()
        print(f"COCO AP of the {'boxes' if iou_type == 'bbox' else 'masks'}:")
        evaluator.summarize()


def draw_prediction(model, test_set, device, path):
    """The first test image with the model's detections painted on by torchvision's drawing
    functions: each box with its score, each mask where its probability passes 0.7."""
    image, _ = test_set[0]  # floats in [0, 1], as the model was trained on
    model.eval()
    with torch.no_grad():
        pred = model([image.to(device)])[0]

    canvas = (255 * image).round().to(torch.uint8)  # the drawing functions paint on uint8 images
    captions = [f"person: {score:.3f}" for score in pred["scores"].tolist()]
    # the drawing functions work on the host: the detections come back from the GPU, if they are there
    canvas = draw_bounding_boxes(canvas, pred["boxes"].long().cpu(), captions, colors="red")
    canvas = draw_segmentation_masks(canvas, (pred["masks"][:, 0] > 0.7).cpu(), alpha=0.5, colors="blue")
    write_png(canvas, path)
    print(f"{len(captions)} detections drawn in {path}")


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    num_classes = 2  # the background and a person

    # one reading of the annotation file, seen two ways: flipped at random for training, as it is
    # for testing; one random order of the images decides which side each falls on
    coco = COCO(args.annotations)
    flipped = PeopleInCoco(coco, args.images, make_transforms(train=True))
    as_stored = PeopleInCoco(coco, args.images, make_transforms(train=False))
    order = torch.randperm(len(flipped)).tolist()
    train_set = torch.utils.data.Subset(flipped, order[args.num_test:])
    test_set = torch.utils.data.Subset(as_stored, order[:args.num_test])
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=2, shuffle=True, num_workers=args.workers,
                                               collate_fn=as_lists)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=1, num_workers=args.workers, collate_fn=as_lists)

    model = person_segmenter(num_classes, args.min_size, args.max_size)
    model.to(device)
    # the builder freezes the stem and the first ResNet stage (requires_grad False): only the rest is updated
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=args.lr, momentum=0.9, weight_decay=0.0005)
    # the rate drops tenfold after every third epoch (stepped once per epoch, after the warmup's steps)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.1)
    for epoch in range(args.epochs):
        train_epoch(model, optimizer, train_loader, device, epoch, log_every=10)
        schedule.step()
        evaluate(model, test_loader, device)
    print(f"That's it! {args.epochs} epochs trained and measured.")

    draw_prediction(model, test_set, device, args.out)


if __name__ == "__main__":
    main()
