"""Training works end to end: a small conv net memorises a handful of random images.

Random labels on random images have nothing to generalise, so a loss near zero shows only that
every piece (layers, backward passes, the tape, SGD) fits together. It is the first check to run
on any new model (Karpathy's "overfit one batch").
"""
import numpy as np

import tinymaskrcnn as tm
import tinymaskrcnn.functional as F
from tinymaskrcnn import nn, optim


def _small_convnet(num_classes):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),    # 16 → 8
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),  # 8 → 4
        nn.Flatten(), nn.Linear(16 * 4 * 4, num_classes))


def test_small_convnet_overfits_eight_random_images():
    tm.manual_seed(0)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((8, 3, 16, 16)).astype(np.float32)
    labels = rng.integers(0, 8, size=8)
    model = _small_convnet(num_classes=8)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = F.cross_entropy(model(tm.Tensor(images)), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert loss.dtype == np.float32
    assert 1.5 < losses[0] < 3.0, f"initial loss {losses[0]:.3f}: expected about ln 8 = 2.08 from random init"
    assert losses[-1] < 0.05, f"loss went from {losses[0]:.3f} to {losses[-1]:.3f}, not below 0.05 in 25 steps"
    model.eval()  # the running statistics learnt in training classify the same images correctly
    with tm.no_grad():
        predicted = model(tm.Tensor(images)).data.argmax(axis=1)
    np.testing.assert_array_equal(predicted, labels)
