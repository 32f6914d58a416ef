"""Mask R-CNN (ResNet-50-FPN), float32, ours vs torchvision in the same run with the same weights.

    python benchmarks/bench_maskrcnn.py            # inference 800×1066 + training steps
    python benchmarks/bench_maskrcnn.py --quick    # smaller images, one repeat

Inference runs on one 800×1066 image with box_score_thresh=0, so both models keep 100
detections and do the same mask-head and pasting work. Training steps run at 800×1066 and at
512×512 with three GT objects. Each measurement runs in a fresh subprocess so its peak resident
memory is its own. Prints a table with the ratio ours / torchvision and a stage
breakdown of inference (transform, backbone, RPN, box head, mask head, postprocess/paste).
Peak memory is each subprocess's VmHWM.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def _image(h, w, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (3, h, w)).astype(np.float32)


def _targets(h, w, n=3, seed=1):
    rng = np.random.default_rng(seed)
    boxes, masks = [], np.zeros((n, h, w), dtype=np.uint8)
    for i in range(n):
        x1, y1 = rng.uniform(0, w * 0.6), rng.uniform(0, h * 0.6)
        x2, y2 = x1 + rng.uniform(w * 0.1, w * 0.4), y1 + rng.uniform(h * 0.1, h * 0.4)
        boxes.append([x1, y1, x2, y2])
        masks[i, int(y1):int(y2), int(x1):int(x2)] = 1
    return {"boxes": np.array(boxes, dtype=np.float32), "labels": rng.integers(1, 91, n).astype(np.int64), "masks": masks}


class _Clock:
    """Accumulates wall time per stage name."""

    def __init__(self):
        self.times = {}

    def __call__(self, name, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0
        return out


def _staged_inference(model, images, clock, framework):
    """Run the model stage by stage (the same stages in both frameworks) under ``clock``."""
    if framework == "torch":
        import torch

        images = [torch.from_numpy(i) for i in images]
    sizes = [tuple(i.shape[-2:]) for i in images]
    batch, _ = clock("transform", model.transform, images)
    features = clock("backbone", model.backbone, batch.tensors)
    proposals, _ = clock("rpn", model.rpn, batch, features)
    heads = model.roi_heads
    mask_parts = heads.mask_roi_pool, heads.mask_head, heads.mask_predictor
    heads.mask_roi_pool = heads.mask_head = heads.mask_predictor = None
    detections, _ = clock("box head", heads, features, proposals, batch.image_sizes)
    heads.mask_roi_pool, heads.mask_head, heads.mask_predictor = mask_parts
    # the mask head needs the box head's detections: time both, subtract the box head
    detections, _ = clock("mask head", heads, features, proposals, batch.image_sizes)
    clock.times["mask head"] -= clock.times["box head"]
    out = clock("paste", model.transform.postprocess, detections, batch.image_sizes, sizes)
    return out


def _peak_rss_gb():
    """This process's peak resident memory (VmHWM). ru_maxrss is not used: on Linux it carries
    the parent's peak across exec, so a small child would report its parent's size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2 ** 20
    return float("nan")


def _measure(framework, task, pth, repeats):
    """One measurement in this process; prints a JSON line."""
    if framework == "torch":
        import torch

        torch.set_num_threads(os.cpu_count())
        from tinymaskrcnn.chapters.reference_models import torchvision_maskrcnn

        model = torchvision_maskrcnn(box_score_thresh=0.0)
        model.load_state_dict(torch.load(pth))
        grad_off, to_in = torch.no_grad, lambda a: torch.from_numpy(a)
    else:
        import tinymaskrcnn as tm

        model = tm.models.maskrcnn_resnet50_fpn(weights=pth, box_score_thresh=0.0)
        grad_off, to_in = tm.no_grad, lambda a: a

    h, w = {"infer": (800, 1066), "train800": (800, 1066), "train512": (512, 512)}[task]
    if task == "infer":
        model.eval()
        image = _image(h, w)
        stage_times = []
        with grad_off():
            for r in range(repeats + 1):  # the first run compiles kernels / warms caches
                clock = _Clock()
                t0 = time.perf_counter()
                out = _staged_inference(model, [image], clock, framework)
                total = time.perf_counter() - t0
                if r:
                    stage_times.append((total, clock.times))
        totals = [t for t, _ in stage_times]
        best = stage_times[int(np.argsort(totals)[len(totals) // 2])][1]
        result = {"seconds": statistics.median(totals), "stages": best, "detections": int(len(out[0]["boxes"]))}
    else:
        if task == "train512":
            model.transform.min_size, model.transform.max_size = (512,), 512
        model.train()
        image, target = _image(h, w), _targets(h, w)
        times = []
        for r in range(repeats + 1):
            t0 = time.perf_counter()
            if framework == "torch":
                losses = model([to_in(image)], [{k: torch.from_numpy(v) for k, v in target.items()}])
                sum(losses.values()).backward()
                model.zero_grad()
            else:
                losses = model([image], [target])
                sum(losses.values()).backward()
                model.zero_grad()
            if r:
                times.append(time.perf_counter() - t0)
        result = {"seconds": statistics.median(times)}
    result["peak_rss_gb"] = _peak_rss_gb()
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tasks", default="infer,train800,train512")
    parser.add_argument("--_run", nargs=3, metavar=("FRAMEWORK", "TASK", "PTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._run:
        _measure(*args._run, args.repeats)
        return

    from tinymaskrcnn.chapters.reference_models import save_state_dict, torchvision_maskrcnn

    pth = save_state_dict(torchvision_maskrcnn(), tempfile.gettempdir())
    try:
        rows = []
        for task in args.tasks.split(","):
            res = {}
            for fw in ("torch", "ours"):
                proc = subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats), "--_run", fw, task, pth],
                                      capture_output=True, text=True)
                if proc.returncode:
                    sys.exit(f"{fw} {task} failed:\n{proc.stderr}")
                res[fw] = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append((task, res))
    finally:
        os.unlink(pth)

    print(f"{'task':10s} {'torchvision s':>14s} {'ours s':>9s} {'ratio':>6s} {'torch GB':>9s} {'ours GB':>8s} {'ratio':>6s}")
    for task, r in rows:
        t, o = r["torch"], r["ours"]
        print(f"{task:10s} {t['seconds']:14.2f} {o['seconds']:9.2f} {o['seconds'] / t['seconds']:6.2f} "
              f"{t['peak_rss_gb']:9.2f} {o['peak_rss_gb']:8.2f} {o['peak_rss_gb'] / t['peak_rss_gb']:6.2f}")
        if "stages" in t:
            print(f"  detections: torchvision {t['detections']}, ours {o['detections']}")
            for stage in t["stages"]:
                ts, os_ = t["stages"][stage], o["stages"].get(stage, float("nan"))
                print(f"  {stage:12s} {ts:10.3f} {os_:9.3f} {os_ / ts:6.2f}")


if __name__ == "__main__":
    main()
