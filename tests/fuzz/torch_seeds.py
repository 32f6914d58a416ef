"""The ``.pth`` seeds, written by torch itself: ``python torch_seeds.py OUT_DIR``.

Run as a script in its own process (``readers.PthReader`` starts it), so that the fuzzing process
never imports torch: forking a process that holds torch's thread pools is not safe, and every
case is a fork. The modules mirror ``readers.tiny_detector`` name for name, so the detector's
and the ImageNet classifier's layouts both load into it, as ``load_pretrained`` tells them apart.
"""
import sys
from pathlib import Path

import torch
from torch import nn


def tiny_detector():
    """backbone.body.{conv1, bn1, layer1.0} and roi_heads.box_predictor.cls_score."""
    model = nn.Module()
    model.backbone, model.roi_heads = nn.Module(), nn.Module()
    model.backbone.body = nn.Module()
    model.backbone.body.conv1 = nn.Conv2d(3, 4, 3, bias=False)
    model.backbone.body.bn1 = nn.BatchNorm2d(4)
    model.backbone.body.layer1 = nn.Sequential(nn.Conv2d(4, 4, 1))
    model.roi_heads.box_predictor = nn.Module()
    model.roi_heads.box_predictor.cls_score = nn.Linear(4, 3)
    return model


def main(out_dir):
    torch.manual_seed(0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    detector = tiny_detector().state_dict()
    imagenet = {k.removeprefix("backbone.body."): v for k, v in detector.items() if k.startswith("backbone.body.")}
    imagenet.update({"fc.weight": torch.randn(10, 4), "fc.bias": torch.zeros(10)})
    base = torch.arange(24, dtype=torch.float32)
    # what a training script saves around the weights: dtypes, and tensors sharing a storage
    wrapped = {"model": detector, "epoch": 3, "optimizer": {"lr": 0.1, "momentum": [0.9]},
               "extra": {"half": base.half(), "bf16": base.bfloat16(), "long": base.long(), "bool": base > 3,
                         "view": base[5:17].view(3, 4), "transposed": base.view(4, 6).t(),
                         "expanded": base[:1].expand(1000), "empty": torch.zeros(0, 3)}}
    for name, obj in (("detector", detector), ("imagenet", imagenet), ("wrapped", wrapped)):
        torch.save(obj, out / f"{name}.pth")
        torch.save(obj, out / f"{name}-legacy.pth", _use_new_zipfile_serialization=False)


if __name__ == "__main__":
    main(sys.argv[1])
