"""The GPU device check: versions, the GPU tests, float64 parity GPU = CPU path, speed against
torch/torchvision on the same GPU. Run it through benchmarks/device_check.sh OUT_DIR, which runs it
from a copy of the checkout with the kernels laid inside the package (nothing installed).

    python benchmarks/device_check.py --out-dir OUT            # on a GPU machine
    python benchmarks/device_check.py --out-dir OUT --quick    # the tests and parity only
    python benchmarks/device_check.py --out-dir OUT --cpu      # dry run: CPU, tiny sizes

OUT receives device_check.json, rewritten after every section so that a run cut short keeps what
it measured, tests.log (the tests' whole output) and summary.txt, the short summary also printed
last: tests passed/failed/skipped, the parity error, each speed ratio. The exit status is 0 when
every section ran, the tests passed and the parity holds.

TF32 is off on both sides (torch.backends.*.allow_tf32 = False; CUPY_TF32=0), so both multiply
in full float32. ``--cpu`` runs every section's code on the CPU path with small sizes, to test
this script where there is no GPU; its figures are not GPU figures. Nothing here needs
pycocotools or nbclient, which the GPU machine lacks.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("CUPY_TF32", "0")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TAKE_ALL = dict(rpn_batch_size_per_image=10 ** 7, box_batch_size_per_image=10 ** 7)


def versions():
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("numba", "numba_cuda", "cupy", "torch", "torchvision", "tinymaskrcnn"):
        try:
            out[name] = getattr(__import__(name), "__version__", "?")
        except Exception as e:  # noqa: BLE001 - a version report, not a requirement
            out[name] = f"missing ({type(e).__name__})"
    try:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(0)
        out["device"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        out["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        out["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
    except Exception as e:  # noqa: BLE001
        out["device"] = f"no GPU ({type(e).__name__}: {e})"
    return out


def gpu_tests(cpu, out_dir):
    """The test suite's GPU and CUDA-kernel tests, and the check of the package's ``xp.`` calls
    against CuPy's namespace, with the GPU, CuPy (and references) required."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), REQUIRE_REFERENCE="1")
    if not cpu:
        env.update(REQUIRE_GPU="1", REQUIRE_CUPY="1")
    files = ["tests/test_gpu.py", "tests/test_cuda_kernels.py", "tests/test_mpi_gpu.py",
             "tests/test_device_standin.py::test_every_xp_name_the_package_uses_exists_in_cupy_with_the_keywords_used"]
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *files], cwd=ROOT,
                       env=env, capture_output=True, text=True)
    (out_dir / "tests.log").write_text(r.stdout + r.stderr)
    return {"files": files, "returncode": r.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "summary": (r.stdout.strip().splitlines() or [""])[-1], "tail": r.stdout[-3000:] + r.stderr[-1000:]}


def _model(tm, pth, dtype, **kw):
    return tm.models.maskrcnn_resnet50_fpn(weights=pth, **kw).to(dtype=dtype)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a - b).max(initial=0.0) / max(np.abs(b).max(initial=0.0), 1e-300))


def _run(tm, model, device, image, target):
    """Inference outputs, then one training step's losses and gradients, all as NumPy."""
    from tinymaskrcnn.core.backend import to_device, to_numpy
    model.to(device=device)
    model.eval()
    tm.random.manual_seed(0)
    with tm.no_grad():
        out = {k: to_numpy(v) for k, v in model([to_device(image, device)])[0].items()}
    model.train()
    model.zero_grad()
    tm.random.manual_seed(0)
    target = {k: to_device(v, device) for k, v in target.items()}
    losses = model([to_device(image, device)], [target])
    total = None
    for v in losses.values():
        total = v if total is None else total + v
    total.backward()
    grads = {n: to_numpy(p.grad) for n, p in model.named_parameters() if p.grad is not None}
    model.to(device="cpu")
    return out, {k: to_numpy(v.data) for k, v in losses.items()}, grads


def parity(cpu, pth, size):
    """float64 Mask R-CNN on the GPU vs the CPU path: inference outputs, losses, every gradient."""
    import tinymaskrcnn as tm
    h, w = size
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (3, h, w))
    masks = np.zeros((2, h, w), np.uint8)
    masks[0, h // 8:h // 2, w // 8:w // 2], masks[1, h // 3:h - 4, w // 3:w - 4] = 1, 1
    target = {"boxes": np.array([[w / 8, h / 8, w / 2, h / 2], [w / 3, h / 3, w - 4, h - 4]]),
              "labels": np.array([1, 18]), "masks": masks}
    model = _model(tm, pth, np.float64, min_size=min(size), max_size=max(size), box_score_thresh=0.0, **TAKE_ALL)
    ref = _run(tm, model, "cpu", image, target)
    got = _run(tm, model, "cpu" if cpu else "cuda", image, target)
    errors = {}
    for part, (g, r) in zip(("outputs", "losses", "gradients"), zip(got, ref)):
        errors[part] = {k: _rel(g[k], r[k]) for k in r} if set(g) == set(r) else {"keys differ": float("inf")}
    worst = max(max(e.values(), default=0.0) for e in errors.values())
    return {"image": [h, w], "detections": int(len(ref[0]["boxes"])), "max_rel_error": worst,
            "max_rel_error_by_part": {p: max(e.values(), default=0.0) for p, e in errors.items()},
            "gradients_compared": len(errors["gradients"]), "pass": bool(worst <= 1e-10)}


def _timer(sync, repeats):
    def run(fn):
        fn()  # compile kernels, warm caches and allocators
        sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    return run


def speed(cpu, pth, repeats):
    """Seconds (median) ours vs torch on the same device, float32, TF32 off."""
    import torch
    import torchvision
    import tinymaskrcnn as tm
    import tinymaskrcnn.functional as F
    from tinymaskrcnn.core.backend import to_device
    from tinymaskrcnn.ops.poolers import MultiScaleRoIAlign
    from tinymaskrcnn.chapters.reference_models import torchvision_maskrcnn

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = "cpu" if cpu else "cuda"
    if cpu:
        ours_sync = theirs_sync = lambda: None  # noqa: E731
    else:
        import cupy
        ours_sync, theirs_sync = cupy.cuda.Device().synchronize, torch.cuda.synchronize
    ours_t, theirs_t = _timer(ours_sync, repeats), _timer(theirs_sync, repeats)
    ours = lambda a: to_device(np.ascontiguousarray(a, np.float32), dev)  # noqa: E731
    theirs = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(dev)  # noqa: E731
    rng = np.random.default_rng(0)
    scale = 4 if cpu else 1
    res = {"device": dev, "tf32": False, "repeats": repeats}

    def record(name, a, b, **info):
        res[name] = {"ours_s": a, "torch_s": b, "ratio": a / b, **info}

    # 3x3 convolution, 256 -> 256 channels on FPN level 0 of an 800x1088 batch
    c, hh, ww = 256 // scale, 200 // scale, 272 // scale
    x, wt = rng.standard_normal((1, c, hh, ww)), rng.standard_normal((c, c, 3, 3)) * 0.05
    xo, wo_, xt, wt_ = ours(x), ours(wt), theirs(x), theirs(wt)
    record("conv3x3", ours_t(lambda: F.conv2d(xo, wo_, padding=1)),
           theirs_t(lambda: torch.nn.functional.conv2d(xt, wt_, padding=1)), shape=[1, c, hh, ww])
    # MultiScaleRoIAlign, 1000 boxes over four FPN levels, 7x7, sampling ratio 2
    img = (800 // scale, 1066 // scale)
    feats = {str(i): rng.standard_normal((1, c, -(-1088 // scale) // 2 ** (i + 2), -(-1088 // scale) // 2 ** (i + 2)))
             for i in range(4)}
    feats = {k: v[:, :, :max(1, img[0] // 2 ** (int(k) + 2)), :] for k, v in feats.items()}
    xy = rng.uniform(0, min(img) * 0.7, (1000, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(8, min(img) * 0.3, (1000, 2))], 1)
    pool_o, pool_t = MultiScaleRoIAlign(list(feats), 7, 2), torchvision.ops.MultiScaleRoIAlign(list(feats), 7, 2)
    fo, ft = {k: ours(v) for k, v in feats.items()}, {k: theirs(v) for k, v in feats.items()}
    with torch.no_grad(), tm.no_grad():
        record("multiscale_roi_align", ours_t(lambda: pool_o(fo, [ours(boxes)], [img])),
               theirs_t(lambda: pool_t(ft, [theirs(boxes)], [img])), boxes=1000)
    # NMS of 4000 boxes
    xy = rng.uniform(0, 1000, (4000, 2))
    b4 = np.concatenate([xy, xy + rng.uniform(10, 200, (4000, 2))], 1)
    s4 = rng.uniform(0, 1, 4000)
    bo, so, bt, st = ours(b4), ours(s4), theirs(b4), theirs(s4)
    record("nms_4000", ours_t(lambda: tm.ops.nms(bo, so, 0.7)),
           theirs_t(lambda: torchvision.ops.nms(bt, st, 0.7)), kept=int(len(tm.ops.nms(bo, so, 0.7))))
    # Mask R-CNN ResNet-50-FPN: inference and one training step at 800x1066
    image = rng.uniform(0, 1, (3, 800 // scale, 1066 // scale))
    kw = dict(box_score_thresh=0.0, min_size=800 // scale, max_size=1333 // scale)
    mo = _model(tm, pth, np.float32, **kw).to(device=dev)
    mt = torchvision_maskrcnn(**kw)
    mt.load_state_dict(torch.load(pth))
    mt.to(dev)
    mo.eval()
    mt.eval()
    io, it = ours(image), theirs(image)
    with torch.no_grad(), tm.no_grad():
        record("maskrcnn_inference", ours_t(lambda: mo([io])), theirs_t(lambda: mt([it])), image=list(image.shape))
    h, w = image.shape[1:]
    masks = np.zeros((3, h, w), np.uint8)
    bx = np.array([[.1, .1, .4, .5], [.5, .2, .9, .6], [.2, .6, .6, .95]]) * [w, h, w, h]
    for m, (x1, y1, x2, y2) in zip(masks, bx.astype(int)):
        m[y1:y2, x1:x2] = 1
    labels = np.array([1, 3, 18])
    to = {"boxes": ours(bx), "labels": to_device(labels, dev), "masks": to_device(masks, dev)}
    tt = {"boxes": theirs(bx), "labels": torch.from_numpy(labels).to(dev), "masks": torch.from_numpy(masks).to(dev)}
    mo.train()
    mt.train()

    def step_ours():
        losses = mo([io], [to])
        sum(losses.values()).backward()
        mo.zero_grad()

    def step_theirs():
        sum(mt([it], [tt]).values()).backward()
        mt.zero_grad()

    record("maskrcnn_train_step", ours_t(step_ours), theirs_t(step_theirs), image=list(image.shape))
    return res


def summary(result):
    """The lines a person reads first: the tests' count, the parity, each speed ratio."""
    lines = [f"device check ({result['mode']}), {result['versions'].get('device', '?')}"]
    for name in ("tests", "parity", "speed"):
        part = result.get(name)
        if part is None:
            lines.append(f"{name}: skipped")
        elif "error" in part:
            lines.append(f"{name}: ERROR {part['error'].strip().splitlines()[-1]}")
        elif name == "tests":
            lines.append(f"tests: {part['summary']} ({part['seconds']} s)")
        elif name == "parity":
            lines.append(f"parity float64 GPU = CPU: max relative error {part['max_rel_error']:.2e} "
                         f"({'pass' if part['pass'] else 'FAIL'}, bound 1e-10)")
        else:
            for key, value in part.items():
                if isinstance(value, dict) and "ratio" in value:
                    lines.append(f"speed {key}: ours {value['ours_s']:.4f} s, torch {value['torch_s']:.4f} s, "
                                 f"ratio {value['ratio']:.2f}")
    seconds = result.get("section_seconds", {})
    lines.append("seconds: " + ", ".join(f"{k} {v}" for k, v in seconds.items()))
    return "\n".join(lines)


def passed(result):
    """Every section that ran ran without error, the tests passed and the parity holds."""
    ran = [result[k] for k in ("tests", "parity", "speed") if k in result]
    if any("error" in part for part in ran):
        return False
    return result.get("tests", {}).get("returncode", 0) == 0 and result.get("parity", {}).get("pass", True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", required=True, type=Path, help="folder for every result file")
    parser.add_argument("--cpu", action="store_true", help="dry run on the CPU path with small sizes")
    parser.add_argument("--quick", action="store_true", help="the tests and parity only (about 2 minutes)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / "device_check.json"
    result = {"mode": "cpu dry run (no GPU figures)" if args.cpu else "gpu",
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def section(name, fn, *a):
        t0 = time.perf_counter()
        try:
            result[name] = fn(*a)
        except Exception:  # noqa: BLE001 - record and go on to the next section
            result[name] = {"error": traceback.format_exc()[-3000:]}
        result.setdefault("section_seconds", {})[name] = round(time.perf_counter() - t0, 1)
        out.write_text(json.dumps(result, indent=2, default=float))
        print(f"{name}: done in {result['section_seconds'][name]} s", flush=True)

    section("versions", versions)
    if not args.cpu:
        from tinymaskrcnn.core.backend import check_cuda
        check_cuda()  # one clear error before anything else when there is no GPU
    from tinymaskrcnn.chapters.reference_models import save_state_dict, torchvision_maskrcnn
    with tempfile.TemporaryDirectory() as folder:
        pth = save_state_dict(torchvision_maskrcnn(), folder)
        section("tests", gpu_tests, args.cpu, args.out_dir)
        section("parity", parity, args.cpu, pth, (96, 128) if args.cpu else (320, 416))
        if not args.quick:
            section("speed", speed, args.cpu, pth, 1 if args.cpu else args.repeats)
    text = summary(result)
    (args.out_dir / "summary.txt").write_text(text + "\n")
    print(text)
    sys.exit(0 if passed(result) else 1)


if __name__ == "__main__":
    main()
