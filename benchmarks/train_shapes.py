"""The main job's accuracy within a time budget: ours, and torchvision's recipe on the same terms.

    python benchmarks/train_shapes.py                      # both, 15 minutes of training each
    python benchmarks/train_shapes.py --only torchvision   # one side
    python benchmarks/train_shapes.py --minutes 5          # a shorter budget
    python benchmarks/train_shapes.py --processes 1        # both in one single-threaded process
    python benchmarks/train_shapes.py --steps 30           # only the step time: 30 iterations each, no evaluation

Both sides train data-parallel on the same number of single-threaded processes (--processes,
default: one per core up to the batch size, as ``tinymaskrcnn train``): ours through MPI
(engine/data_parallel.py), torchvision through torch's DistributedDataParallel on Gloo, each
process a share of the same batches. The step times of both are measured in the same run, so
their ratio holds on a machine loaded by other work.

"ours" is ``tinymaskrcnn train`` with its defaults (the README's main job) and whatever
iteration count those defaults give, timed: the budget is only checked, not imposed.

"torchvision" trains torchvision's MaskRCNN on the same shapes set with the same backbone
(ResNet-18-FPN with the same normalisation, InstanceNorm2d by default, every layer trainable, no
pretrained weights), the same image size, anchors and head sizes as ``maskrcnn_resnet18_fpn``, the same
batches (our DataLoader, seed and flips) and the same optimiser and schedule (torch's AdamW or SGD
as the config says, linear warmup, cosine decay, gradient clipping), but torchvision's own layer
initialisation, and its mask head trains on every positive RoI (torchvision has no
``mask_batch_size_per_image``). Its iteration count is chosen to fill the budget: it times 20 iterations first,
then runs as many as the remaining time allows. Both are scored by the same COCOeval code on the
shapes validation set.
"""
import argparse
import dataclasses
import functools
import json
import os
import time

import numpy as np

from tinymaskrcnn import engine, nn


def _torchvision_model(num_classes, kwargs):
    """torchvision's MaskRCNN built like our maskrcnn_resnet18_fpn (see its docstring)."""
    import torch
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    import tinymaskrcnn as tm

    ours = tm.models.maskrcnn_resnet18_fpn(num_classes=num_classes, **kwargs)  # to copy its settings
    fpn_channels = ours.backbone.out_channels
    representation = ours.roi_heads.box_head.fc7.weight.shape[0]
    mask_channels = ours.roi_heads.mask_predictor.conv5_mask.weight.shape[1]
    instance = isinstance(ours.backbone.body.bn1, tm.nn.InstanceNorm2d)
    norm_layer = functools.partial(torch.nn.InstanceNorm2d, affine=True) if instance else torch.nn.BatchNorm2d
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, norm_layer=norm_layer, trainable_layers=5)
    backbone.fpn = type(backbone.fpn)([64, 128, 256, 512], fpn_channels, extra_blocks=backbone.fpn.extra_blocks)
    backbone.out_channels = fpn_channels
    t, r, h = ours.transform, ours.rpn, ours.roi_heads
    return MaskRCNN(
        backbone, num_classes=None, min_size=t.min_size, max_size=t.max_size,
        rpn_anchor_generator=AnchorGenerator(r.anchor_generator.sizes, r.anchor_generator.aspect_ratios),
        rpn_pre_nms_top_n_train=r._pre_nms_top_n["training"], rpn_post_nms_top_n_train=r._post_nms_top_n["training"],
        rpn_pre_nms_top_n_test=r._pre_nms_top_n["testing"], rpn_post_nms_top_n_test=r._post_nms_top_n["testing"],
        rpn_batch_size_per_image=r.fg_bg_sampler.batch_size_per_image,
        box_batch_size_per_image=h.fg_bg_sampler.batch_size_per_image,
        rpn_positive_fraction=r.fg_bg_sampler.positive_fraction,
        box_positive_fraction=h.fg_bg_sampler.positive_fraction,
        box_detections_per_img=h.detections_per_img,
        box_head=TwoMLPHead(fpn_channels * 7 * 7, representation),
        box_predictor=FastRCNNPredictor(representation, num_classes),
        mask_head=MaskRCNNHeads(fpn_channels, (mask_channels,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels, num_classes))


def _schedule(config, iterations):
    """The engine's own learning-rate schedule for ``iterations``, run on a stand-in optimizer
    (our schedulers drive our optimizers); torchvision's optimizer copies its lr every step."""
    stand_in = engine.build_optimizer([nn.Parameter(np.zeros(1, np.float32))], config)
    return engine.build_scheduler(stand_in, dataclasses.replace(config, iterations=iterations))


def run_torchvision(config, seconds, out_dir, iterations=None, processes=1, evaluate=True, threads=1):
    """torchvision's side on ``processes`` single-threaded processes (DDP on Gloo when more than
    one): {"iterations", "train_seconds", "metrics"} of rank 0."""
    import torch.multiprocessing

    if processes == 1:
        return _torchvision_rank(0, 1, config, seconds, out_dir, iterations, evaluate, threads=threads)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    result = os.path.join(out_dir, "rank0.json")
    os.makedirs(out_dir, exist_ok=True)
    torch.multiprocessing.spawn(_torchvision_rank, (processes, config, seconds, out_dir, iterations, evaluate, result),
                                nprocs=processes)
    with open(result) as f:
        return json.load(f)


def _torchvision_rank(rank, processes, config, seconds, out_dir, iterations, evaluate, result=None, threads=1):
    import torch
    import torch.distributed as dist

    from tinymaskrcnn.data import CocoDetection
    from tinymaskrcnn.data.loader import DataLoader
    from tinymaskrcnn.data.transforms import Compose, RandomHorizontalFlip, SanitizeTarget
    from tinymaskrcnn.engine.data_parallel import share
    from tinymaskrcnn.engine.evaluation import Evaluator

    torch.set_num_threads(threads)  # one core a process, as ours (--threads: more in one process)
    if processes > 1:
        dist.init_process_group("gloo", rank=rank, world_size=processes)
    torch.manual_seed(config.seed)
    splits = engine.resolve_data(config)
    train_set = CocoDetection(*splits["train"], skip_empty=True)
    val_set = CocoDetection(*splits["val"])
    kwargs = {**engine.SHAPES_MODEL_DEFAULTS, **config.model_kwargs}
    model = _torchvision_model(train_set.num_classes, kwargs)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # DDP broadcasts rank 0's parameters; its Allreduce averages the ranks' gradients in buckets
    # while the backward pass runs (every parameter gets a gradient in every step here)
    trained = torch.nn.parallel.DistributedDataParallel(model) if processes > 1 else model
    config = engine.with_optimizer_defaults(config)
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    loader = DataLoader(train_set, config.batch_size, shuffle=True, seed=config.seed, drop_last=processes > 1,
                        transforms=Compose([RandomHorizontalFlip(config.hflip), SanitizeTarget(drop=True)]))

    def batches():
        while True:
            for images, targets in loader:
                part = share(len(images), processes, rank)  # this rank's share, as ours
                images, targets = images[part], targets[part]
                yield ([torch.from_numpy(np.ascontiguousarray(i)) for i in images],
                       [{"boxes": torch.from_numpy(t["boxes"]), "labels": torch.from_numpy(t["labels"]),
                         "masks": torch.from_numpy(t["masks"])} for t in targets])

    stream, start, it, times = batches(), time.perf_counter(), 0, []
    schedule = _schedule(config, iterations or 10 ** 9)  # its length matters only after the warmup
    while iterations is None or it < iterations:
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = schedule.get_last_lr()[0]
        images, targets = next(stream)
        losses = trained(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        if config.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, config.clip_grad_norm)
        optimizer.step()
        schedule.step()
        it += 1
        times.append(time.perf_counter() - t0)
        if it == 20 and iterations is None:  # the budget fixes the schedule's length, as a user would set it
            per_iteration = (time.perf_counter() - start) / it
            count = torch.tensor([max(it + 1, config.warmup_iters + 1, int(seconds / per_iteration))])
            if processes > 1:
                dist.broadcast(count, 0)  # rank 0's count, so that every rank stops together
            iterations = int(count)
            if rank == 0:
                print(f"torchvision: {per_iteration:.2f} s/iteration -> {iterations} iterations")
            schedule = _schedule(config, iterations)
            for _ in range(it):
                schedule.step()
    train_seconds = time.perf_counter() - start
    if processes > 1:
        dist.destroy_process_group()
    row = {"iterations": iterations, "train_seconds": train_seconds, "step_seconds": step_seconds(times),
           "metrics": None}
    if rank != 0 or not evaluate:
        return _written(row, result)

    model.eval()
    evaluator = Evaluator(val_set)
    with torch.no_grad():
        for images, targets in DataLoader(val_set, 1, shuffle=False):  # one at a time, as engine.evaluate
            outputs = model([torch.from_numpy(np.ascontiguousarray(i)) for i in images])
            evaluator.update(targets, [{k: v.numpy() for k, v in o.items()} for o in outputs])
    row["metrics"] = evaluator.summarize(out_dir=out_dir, verbose=False)
    return _written(row, result)


def _written(row, path):
    """``row``, also written to ``path`` (how a spawned rank 0 hands its result back)."""
    if path is not None:
        with open(path, "w") as f:
            json.dump(row, f)
    return row


def run_ours(config):
    import numba
    from threadpoolctl import threadpool_limits

    if config.processes == 1:  # one single-threaded process, as torchvision's side (the ranks are already)
        numba.set_num_threads(1)
        threadpool_limits(1)
    start = time.perf_counter()
    result = engine.train(config)
    elapsed = time.perf_counter() - start
    rows = [json.loads(line) for line in open(result["metrics_jsonl"])]
    times = [r["time"] for r in rows if "time" in r]
    return {"iterations": config.iterations, "train_seconds": sum(times), "total_seconds": elapsed,
            "step_seconds": step_seconds(times), "metrics": result["metrics"]}


def step_seconds(times, skip=5):
    """The median seconds of an iteration after the first ``skip`` (compilation, warm-up)."""
    return float(np.median(times[skip:])) if len(times) > skip else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget of each side")
    parser.add_argument("--only", choices=("ours", "torchvision"))
    parser.add_argument("--out", default="runs/train_shapes", help="run folders go under it")
    parser.add_argument("--iterations", type=int, help="torchvision: this many iterations instead of the budget")
    parser.add_argument("--processes", type=int, help="single-threaded processes of each side (default: as "
                        "tinymaskrcnn train, one per core up to the batch size)")
    parser.add_argument("--threads", type=int, default=1, help="torchvision's threads with --processes 1 (default 1)")
    parser.add_argument("--steps", type=int, help="only time this many iterations of each side (no evaluation)")
    parser.add_argument("--config", default="{}", help="TrainConfig fields as JSON, for both sides")
    args = parser.parse_args()
    fields = json.loads(args.config)
    processes = args.processes or engine.processes(engine.TrainConfig(**fields))
    if args.steps:
        fields["iterations"] = args.steps
    rows = {}
    if args.only != "torchvision":
        config = engine.TrainConfig(out_dir=os.path.join(args.out, "ours"), progress=False, overwrite=True,
                                    processes=processes, **fields)
        rows["ours"] = run_ours(config)
    if args.only != "ours":
        config = engine.TrainConfig(**fields)
        iterations = args.steps or args.iterations
        if iterations:
            config.iterations = iterations
        rows["torchvision"] = run_torchvision(config, 60 * args.minutes, os.path.join(args.out, "torchvision"),
                                              iterations, processes, evaluate=not args.steps, threads=args.threads)
    print(f"\nshapes, {processes} single-threaded process(es) a side, {os.cpu_count()} cores; load average "
          f"{os.getloadavg()[0]:.2f}" + ("" if args.steps else f"; {args.minutes:g} min budget"))
    print(f"{'':12s} {'iterations':>10s} {'s/step':>7s} {'train min':>9s} {'mask AP':>8s} {'mask AP50':>9s} "
          f"{'box AP':>7s} {'box AP50':>8s}")
    for name, row in rows.items():
        scores = ""
        if row["metrics"] and not args.steps:
            segm, bbox = row["metrics"]["segm"], row["metrics"]["bbox"]
            scores = f" {segm['AP']:8.3f} {segm['AP50']:9.3f} {bbox['AP']:7.3f} {bbox['AP50']:8.3f}"
        print(f"{name:12s} {row['iterations']:10d} {row['step_seconds']:7.3f} {row['train_seconds'] / 60:9.1f}{scores}")
    if len(rows) == 2:
        ratio = rows["ours"]["step_seconds"] / rows["torchvision"]["step_seconds"]
        print(f"ours / torchvision, seconds a step: {ratio:.2f}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
