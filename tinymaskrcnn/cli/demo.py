"""What ``tinymaskrcnn demo`` runs: the foundation chapter in one command.

1. ``gradient_report``: every layer a small conv net uses has a hand-written backward pass;
   each is compared, in float64, with central finite differences of its forward pass.
2. ``small_conv_net`` learns to tell the synthetic shapes apart (``train_classifier``: SGD with
   momentum, a warmup then a cosine schedule) and is scored on held-out images (``accuracy``).

The command line (``cli/__init__.py``) makes the data, calls these and prints the report.
"""
import numpy as np
from tqdm import tqdm

from .. import functional as F
from .. import nn, optim
from ..core.autograd import Tensor, no_grad
from ..core.gradcheck import gradcheck


def gradient_report():
    """(layer, worst relative error) for each layer a small conv net uses: its backward pass
    against finite differences (float64), on random inputs of a few elements."""
    rng = np.random.default_rng(0)
    T = lambda *shape, grad=True: Tensor(rng.standard_normal(shape), requires_grad=grad)
    labels = np.array([0, 2, 1])
    probabilities, regression_targets = rng.uniform(size=(3, 4)), rng.standard_normal((3, 4))
    checks = [
        ("conv2d (stride 2, padding 1)", lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), [T(2, 3, 7, 6), T(4, 3, 3, 3), T(4)]),
        ("conv_transpose2d (stride 2)", lambda x, w: F.conv_transpose2d(x, w, stride=2), [T(1, 3, 4, 5), T(3, 2, 2, 2)]),
        ("batch_norm (training)", lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), [T(3, 4, 3, 3), T(4), T(4)]),
        ("relu", lambda x: F.relu(x), [T(2, 3, 4)]),
        ("max_pool2d (3x3, stride 2)", lambda x: F.max_pool2d(x, 3, 2, 1), [T(1, 2, 7, 7)]),
        ("interpolate (bilinear x2)", lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False), [T(1, 2, 3, 4)]),
        ("linear", lambda x, w, b: F.linear(x, w, b), [T(3, 5), T(4, 5), T(4)]),
        ("cross_entropy", lambda x: F.cross_entropy(x, labels), [T(3, 4)]),
        ("binary_cross_entropy_with_logits", lambda x: F.binary_cross_entropy_with_logits(x, probabilities), [T(3, 4)]),
        ("smooth_l1_loss (beta 1/9)", lambda x: F.smooth_l1_loss(x, regression_targets, beta=1 / 9), [T(3, 4)]),
    ]
    return [(name, max(gradcheck(fn, inputs))) for name, fn, inputs in checks]


def small_conv_net(num_classes=3, width=16, image_size=32):
    """conv-BN-ReLU-pool twice, then a linear classifier: the smallest network that uses
    every layer of the foundation chapter."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * (image_size // 4) ** 2, num_classes),
    )


def train_classifier(model, images, labels, steps, batch_size, lr, seed=0):
    """Train ``model`` to give ``labels`` for ``images`` with cross-entropy; returns the loss of
    each step.

    SGD (momentum 0.9, weight decay 1e-4), its rate warmed up over a fifth of the steps (at
    most 20), then cosine-annealed. Each batch is the next ``batch_size`` images of a seeded
    random order, reshuffled once too few are left: every image is seen once per epoch.
    """
    opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    sched = optim.WarmupCosineLR(opt, total_iters=steps, warmup_iters=min(20, steps // 5))
    rng = np.random.default_rng(seed)
    order, pos = rng.permutation(len(images)), 0
    losses = []
    bar = tqdm(range(steps), desc="train", unit="step")
    for _ in bar:
        if pos + batch_size > len(order):
            order, pos = rng.permutation(len(images)), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        loss = F.cross_entropy(model(Tensor(images[idx])), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{sched.get_last_lr()[0]:.3g}")
    return losses


def accuracy(model, images, labels, batch_size=256):
    """The fraction of ``images`` that ``model`` classifies as ``labels``. Puts the model in
    eval mode first (batch norm then uses its running statistics, not the batch's)."""
    model.eval()
    with no_grad():
        predicted = np.concatenate([model(Tensor(images[i:i + batch_size])).data.argmax(1)
                                    for i in range(0, len(images), batch_size)])
    return float((predicted == labels).mean())
