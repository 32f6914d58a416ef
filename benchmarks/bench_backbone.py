"""ResNet-50-FPN backbone, float32, ours vs torchvision in the same run with the same weights.

    python benchmarks/bench_backbone.py              # 1×3×800×1088, 3 repeats after a warm-up
    python benchmarks/bench_backbone.py --quick      # 1×3×320×448, 1 repeat
    python benchmarks/bench_backbone.py --repeats 5 --size 800 1088

The backbone is torchvision's detection configuration (FrozenBatchNorm2d, layer2..4 and the FPN
trainable). Two tasks: "forward" (inference, no gradient recorded) and "forward+backward"
(forward, then the gradient of the sum of all FPN outputs for every trainable parameter; the
image needs no gradient, as in training). Each (framework, task) runs in a fresh subprocess,
so its peak resident memory (VmHWM) is its own; "peak" is the whole process (the torch
process also holds the torch libraries), "extra" is the peak minus the resident memory after
the model was loaded, i.e. what the measured work itself needed. Times are medians of the
repeats after one warm-up run (which compiles Numba kernels and warms caches).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

TASKS = ("forward", "forward+backward")


def _status_mb(field):
    """A memory field of /proc/self/status (Linux) in MB, or None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _rss_mb():
    """Current resident memory in MB (0 where unknown)."""
    return _status_mb("VmRSS") or 0.0


def _peak_rss_mb():
    """Peak resident memory of this process in MB.

    VmHWM, not ru_maxrss: on Linux ru_maxrss survives execve, so a worker started from a parent
    holding torch and the model would report the parent's peak instead of its own.
    """
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker(framework, task, pth, size, repeats):
    """One measurement in this process; prints one JSON line."""
    image = np.random.default_rng(0).uniform(-2, 2, (1, 3) + tuple(size)).astype(np.float32)
    if framework == "torch":
        import torch
        from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

        torch.set_num_threads(os.cpu_count())
        model = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=3)
        model.load_state_dict(torch.load(pth))
        x = torch.from_numpy(image)
        grad_off = torch.no_grad
    else:
        import tinymaskrcnn as tm
        from tinymaskrcnn.models.backbone import resnet_fpn_backbone
        from tinymaskrcnn.weights import load_torchvision

        model = resnet_fpn_backbone("resnet50", trainable_layers=3)
        load_torchvision(model, pth)
        x = image
        grad_off = tm.no_grad
    loaded_rss = _rss_mb()

    def run():
        if task == "forward":
            with grad_off():
                model(x)
            return
        out = model(x)
        sum(v.sum() for v in out.values()).backward()
        model.zero_grad()

    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        run()
        if r:  # the first run is the warm-up
            times.append(time.perf_counter() - t0)
    peak = _peak_rss_mb()
    print(json.dumps({"seconds": statistics.median(times), "all": times, "peak_mb": peak,
                      "extra_mb": peak - loaded_rss}))


def _run_worker(framework, task, pth, size, repeats):
    cmd = [sys.executable, __file__, "--worker", framework, task, pth, "--size", *map(str, size),
           "--repeats", str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{framework} {task} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _save_reference_weights(directory):
    """torchvision's ResNet-50-FPN with calibrated random weights (activations of order one)."""
    import torch
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    from tinymaskrcnn.chapters.reference_models import calibrate_frozen_batchnorm, save_state_dict

    torch.manual_seed(0)
    model = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=3)
    calibrate_frozen_batchnorm(model, torch.rand(1, 3, 224, 320, generator=torch.Generator().manual_seed(1)) * 4 - 2)
    return save_state_dict(model, directory)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="320×448 image, one repeat")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--worker", nargs=3, metavar=("FRAMEWORK", "TASK", "PTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.size or ((320, 448) if args.quick else (800, 1088))
    repeats = args.repeats or (1 if args.quick else 3)
    if args.worker:
        _worker(*args.worker, size=size, repeats=repeats)
        return

    with tempfile.TemporaryDirectory() as tmp:
        pth = _save_reference_weights(tmp)
        results = {(fw, task): _run_worker(fw, task, pth, size, repeats) for task in TASKS for fw in ("torch", "ours")}

    print(f"ResNet-50-FPN backbone, float32, 1×3×{size[0]}×{size[1]}, {os.cpu_count()} cores, "
          f"median of {repeats} after a warm-up")
    print(f"{'task':<18}{'torchvision s':>14}{'ours s':>10}{'ratio':>8}{'tv peak MB':>12}{'our peak MB':>13}"
          f"{'ratio':>7}{'tv extra MB':>13}{'our extra MB':>14}{'ratio':>7}")
    for task in TASKS:
        t, o = results["torch", task], results["ours", task]
        print(f"{task:<18}{t['seconds']:>14.3f}{o['seconds']:>10.3f}{o['seconds'] / t['seconds']:>8.2f}"
              f"{t['peak_mb']:>12.0f}{o['peak_mb']:>13.0f}{o['peak_mb'] / t['peak_mb']:>7.2f}"
              f"{t['extra_mb']:>13.0f}{o['extra_mb']:>14.0f}{o['extra_mb'] / max(t['extra_mb'], 1):>7.2f}")


if __name__ == "__main__":
    main()
