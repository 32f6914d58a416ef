"""The ``tinymaskrcnn`` command line.

``tinymaskrcnn demo`` is the foundation chapter's main job: it checks the hand-written
gradients of every layer against finite differences, then trains a small convolutional
network on synthetic shapes with progress and prints a report. Later chapters add training and
evaluation of the full detector.
"""
import argparse
import sys
import time

import numpy as np


def _gradient_report():
    """Finite-difference checks (float64) of each layer a small conv net uses."""
    import tinymaskrcnn as tm
    import tinymaskrcnn.functional as F
    from tinymaskrcnn.gradcheck import gradcheck

    rng = np.random.default_rng(0)
    T = lambda *shape, grad=True: tm.Tensor(rng.standard_normal(shape), requires_grad=grad)
    labels = np.array([0, 2, 1])
    checks = [
        ("conv2d (stride 2, padding 1)", lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), [T(2, 3, 7, 6), T(4, 3, 3, 3), T(4)]),
        ("conv_transpose2d (stride 2)", lambda x, w: F.conv_transpose2d(x, w, stride=2), [T(1, 3, 4, 5), T(3, 2, 2, 2)]),
        ("batch_norm (training)", lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), [T(3, 4, 3, 3), T(4), T(4)]),
        ("relu", lambda x: F.relu(x), [T(2, 3, 4)]),
        ("max_pool2d (3x3, stride 2)", lambda x: F.max_pool2d(x, 3, 2, 1), [T(1, 2, 7, 7)]),
        ("interpolate (bilinear x2)", lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False), [T(1, 2, 3, 4)]),
        ("linear", lambda x, w, b: F.linear(x, w, b), [T(3, 5), T(4, 5), T(4)]),
        ("cross_entropy", lambda x: F.cross_entropy(x, labels), [T(3, 4)]),
        ("binary_cross_entropy_with_logits", lambda x: F.binary_cross_entropy_with_logits(x, rng.uniform(size=(3, 4))), [T(3, 4)]),
        ("smooth_l1_loss (beta 1/9)", lambda x: F.smooth_l1_loss(x, rng.standard_normal((3, 4)), beta=1 / 9), [T(3, 4)]),
    ]
    rows = []
    for name, fn, inputs in checks:
        rows.append((name, max(gradcheck(fn, inputs))))
    return rows


def small_conv_net(num_classes=3, width=16, image_size=32):
    """conv-BN-ReLU-pool twice, then a linear classifier: the smallest network that uses
    every layer of the foundation chapter."""
    from tinymaskrcnn import nn

    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * (image_size // 4) ** 2, num_classes),
    )


def demo(args):
    import tinymaskrcnn as tm
    import tinymaskrcnn.functional as F
    from tinymaskrcnn import optim
    from tinymaskrcnn.data.shapes import SHAPES, classification_set
    from tqdm import tqdm

    print("tinymaskrcnn demo: hand-written gradients, then a small conv net on synthetic shapes\n")
    t0 = time.perf_counter()
    rows = _gradient_report()
    print(f"{'layer':36s} {'relative error vs finite differences':>36s}")
    for name, err in rows:
        print(f"{name:36s} {err:36.2e}")
    worst = max(e for _, e in rows)
    print(f"(float64, central differences; worst {worst:.1e}; {time.perf_counter() - t0:.1f} s)\n")
    if worst > 1e-6:
        print("error: a gradient disagrees with finite differences", file=sys.stderr)
        return 1

    tm.manual_seed(args.seed)
    train_x, train_y = classification_set(args.train_images, 32, seed=args.seed)
    test_x, test_y = classification_set(args.test_images, 32, seed=args.seed + 1)
    model = small_conv_net(num_classes=len(SHAPES))
    n_params = sum(p.size for p in model.parameters())
    print(f"training {n_params} parameters on {len(train_x)} images of {', '.join(SHAPES)} "
          f"({args.steps} steps, batch {args.batch_size}, float32)")
    opt = optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    sched = optim.WarmupCosineLR(opt, max_iters=args.steps, warmup_iters=min(20, args.steps // 5))
    rng = np.random.default_rng(args.seed)
    order, pos = rng.permutation(len(train_x)), 0
    t0 = time.perf_counter()
    losses = []
    bar = tqdm(range(args.steps), desc="train", unit="step")
    for _ in bar:
        if pos + args.batch_size > len(order):
            order, pos = rng.permutation(len(train_x)), 0
        idx = order[pos:pos + args.batch_size]
        pos += args.batch_size
        loss = F.cross_entropy(model(tm.Tensor(train_x[idx])), train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{sched.get_last_lr()[0]:.3g}")
    train_time = time.perf_counter() - t0

    model.eval()
    with tm.no_grad():
        accuracy = {}
        for split, (x, y) in {"train": (train_x, train_y), "test": (test_x, test_y)}.items():
            pred = np.concatenate([model(tm.Tensor(x[i:i + 256])).data.argmax(1) for i in range(0, len(x), 256)])
            accuracy[split] = float((pred == y).mean())
    print("\nreport")
    print(f"  loss: first 20 steps {np.mean(losses[:20]):.3f} -> last 20 steps {np.mean(losses[-20:]):.3f}")
    print(f"  accuracy: train {accuracy['train']:.1%}, held-out {accuracy['test']:.1%} (chance {1 / len(SHAPES):.1%})")
    print(f"  time: {train_time:.1f} s ({1000 * train_time / args.steps:.0f} ms/step)")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="tinymaskrcnn", description="Mask R-CNN from scratch in NumPy and Numba.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="check every layer's gradients and train a small conv net on synthetic shapes")
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--train-images", type=int, default=1024)
    p.add_argument("--test-images", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
