"""The ``.pth`` seeds, written by torch itself: ``python torch_seeds.py OUT_DIR``.

Run as a script in its own process (``readers.PthReader`` starts it), so that the fuzzing process
never imports torch: forking a process that holds torch's thread pools is not safe, and every
case is a fork. The modules are layout.tiny_detector's, as ``readers`` builds them, so the detector's
and the ImageNet classifier's layouts both load into it, as ``load_pretrained`` tells them apart.
"""
import sys
from pathlib import Path

import torch
from torch import nn

from layout import tiny_detector  # run as a script: its own folder is first on the path


def main(out_dir):
    torch.manual_seed(0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    detector = tiny_detector(nn).state_dict()
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
