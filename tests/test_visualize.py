"""The application's pictures: every drawing runs headless, writes a PNG of the expected size,
and draws what it was given where it belongs; predict_images writes each picture with a JSON
record of the same detections, whose masks read back. (The chapters' figures:
test_chapter_figures.py.)"""
import json
import os
import subprocess
import sys

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage

from tinymaskrcnn import visualize as V
from tinymaskrcnn.data import CocoDetection, make_shapes_dataset
from tinymaskrcnn.engine.inference import predict_images
from tinymaskrcnn.models.transform import GeneralizedRCNNTransform
from tinymaskrcnn.ops import paste_masks_in_image

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on NumPy 2


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    paths = make_shapes_dataset(tmp_path_factory.mktemp("vis") / "set", num_train=0, num_val=4,
                                image_size=(96, 112), max_objects=4)
    ds = CocoDetection(*paths["val"])
    image, target = max((ds[i] for i in range(len(ds))), key=lambda item: len(item[1]["labels"]))
    assert len(target["labels"]) >= 3
    return image, target, ds.category_names


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def prediction_from(target):
    k = len(target["labels"])
    return {"boxes": target["boxes"] + 1.5, "labels": target["labels"], "scores": np.linspace(0.95, 0.3, k),
            "masks": target["masks"][:, None] * np.float32(0.8)}


def png_size(path):
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        return im.size  # (width, height)


def test_runs_without_a_display(tmp_path):
    """A fresh interpreter with no display and no backend chosen draws and saves through pyplot."""
    script = ("import sys, numpy as np, matplotlib; from tinymaskrcnn import visualize as V; "
              "ax = V.draw_detections(np.zeros((20, 30, 3), np.uint8), np.array([[2., 3., 12., 15.]])); "
              "ax.figure.savefig(sys.argv[1]); print(matplotlib.get_backend().lower())")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "headless.png")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert png_size(tmp_path / "headless.png")[0] > 0
    if sys.platform.startswith("linux"):  # macOS has a native backend that needs no display
        assert done.stdout.strip() == "agg"


def test_draw_detections_tints_masks_in_place(sample, tmp_path):
    """Drawn edge to edge at one screen pixel per image pixel, the inside of each mask is the
    image blended with the instance's colour, and pixels away from every box are untouched."""
    image, target, _ = sample
    height, width = image.shape[1:]
    fig, ax = V.image_figure(height, width)
    alpha = 0.5
    assert V.draw_detections(image, target["boxes"], masks=target["masks"], ax=ax, alpha=alpha) is ax
    out = tmp_path / "det.png"
    V.save_figure(fig, out)
    assert png_size(out) == (width, height)
    drawn = np.asarray(Image.open(out).convert("RGB")).astype(np.float64) / 255
    rgb = image.transpose(1, 2, 0)
    near_a_box, on_an_outline = np.zeros((2, height, width), dtype=bool)
    for x1, y1, x2, y2 in target["boxes"].astype(int):
        band = np.zeros((height, width), dtype=bool)
        band[max(y1 - 3, 0):y2 + 3, max(x1 - 3, 0):x2 + 3] = True
        near_a_box |= band
        band[y1 + 3:y2 - 3, x1 + 3:x2 - 3] = False
        on_an_outline |= band
    far = ~near_a_box
    assert far.sum() > 100
    np.testing.assert_allclose(drawn[far], rgb[far], atol=1.5 / 255)
    checked = 0
    for mask in target["masks"].astype(bool):
        # the visible mask's inside, 3 pixels clear of its outline and of every box's
        inside = ndimage.binary_erosion(mask, iterations=3) & ~on_an_outline
        expected = (1 - alpha) * rgb[inside] + alpha * V.class_colour(None)  # no labels, no captions: gold
        np.testing.assert_allclose(drawn[inside], expected, atol=1.5 / 255)
        checked += inside.sum()
    assert checked > 100


def test_draw_detections_captions_and_threshold(sample):
    image, target, names = sample
    prediction = prediction_from(target)
    uint8_image = np.round(image.transpose(1, 2, 0) * 255).astype(np.uint8)
    ax = V.draw_detections(uint8_image, **prediction, class_names=names, score_threshold=0.5)
    shown = prediction["scores"] >= 0.5
    captions = [t.get_text() for t in ax.texts]
    assert captions == [f"{names[label]} {score:.2f}" for label, score in
                        zip(prediction["labels"][shown], prediction["scores"][shown])]
    assert len(ax.patches) == shown.sum()
    fig = ax.figure
    assert fig.get_size_inches()[0] == pytest.approx(6.0)


def test_captions_of_detections_at_one_corner_do_not_overlap(sample):
    """Two detections of one object (a square also called a circle) start at nearly the same
    corner: their captions, as drawn, cover no part of each other; a lone caption sits above
    its box."""
    image, _, names = sample
    boxes = np.array([[20., 30., 80., 90.], [21., 31., 79., 88.], [100., 30., 140., 70.]])
    ax = V.draw_detections(image, boxes, np.array([1, 2, 1]), np.array([0.9, 0.6, 0.8]), class_names=names)
    ax.figure.canvas.draw()
    extents = [t.get_window_extent() for t in ax.texts]
    assert len(extents) == 3
    for i in range(3):
        for j in range(i + 1, 3):
            assert not extents[i].overlaps(extents[j]), (ax.texts[i].get_text(), ax.texts[j].get_text())
    assert ax.texts[2].get_position()[1] < boxes[2, 1]   # above its box: image rows grow downward


def test_colour_is_the_class_not_the_instance(sample):
    """Two instances of one class share a colour, in the ground truth and in the prediction
    alike, and two classes differ; each instance keeps its own box and caption."""
    image, target, names = sample
    boxes = np.array([[5., 5., 30., 30.], [40., 5., 70., 30.], [5., 40., 30., 70.], [40., 40., 70., 70.]])
    truth = {"boxes": boxes[:3], "labels": np.array([2, 2, 1])}
    prediction = {"boxes": boxes[::-1] + 1, "labels": np.array([1, 3, 2, 2]), "scores": np.full(4, 0.9)}
    axes = V.draw_ground_truth_and_prediction(image, truth, prediction, names)

    def colour_of(ax):
        """{caption's class name: [edge colours of its boxes]} of one picture."""
        found = {}
        for patch, text in zip(ax.patches, ax.texts):
            assert matplotlib.colors.same_color(patch.get_edgecolor(), text.get_bbox_patch().get_facecolor()[:3])
            found.setdefault(text.get_text().split()[0], []).append(tuple(patch.get_edgecolor()[:3]))
        return found

    truth_colours, predicted_colours = colour_of(axes[0]), colour_of(axes[1])
    assert len(axes[0].patches) == 3 and len(axes[1].patches) == 4
    for found in (truth_colours, predicted_colours):
        assert len(set(found[names[2]])) == 1  # one class, one colour
        assert len({colours[0] for colours in found.values()}) == len(found)  # classes differ
    for name in (names[1], names[2]):
        assert truth_colours[name][0] == predicted_colours[name][0]  # the same class on either side
    np.testing.assert_allclose(truth_colours[names[1]][0], V.class_colour(1))


def test_draw_ground_truth_and_prediction_side_by_side(sample, tmp_path):
    image, target, names = sample
    prediction = prediction_from(target)
    axes = V.draw_ground_truth_and_prediction(image, target, prediction, names, score_threshold=0.5)
    assert len(axes) == 2 and axes[0].figure is axes[1].figure
    assert axes[0].get_title() == f"ground truth ({len(target['labels'])})"
    assert axes[1].get_title().startswith(f"prediction ({(prediction['scores'] >= 0.5).sum()} with score")
    assert [t.get_text() for t in axes[0].texts] == [names[label] for label in target["labels"]]
    fig = axes[0].figure
    fig.set_dpi(50)
    fig.savefig(tmp_path / "pair.png", dpi=50)
    width_in, height_in = fig.get_size_inches()
    assert png_size(tmp_path / "pair.png") == (round(width_in * 50), round(height_in * 50))


def test_draw_boxes_colours_by_label_and_keeps_positives(sample, tmp_path):
    image, _, _ = sample
    rng = np.random.default_rng(0)
    corners = rng.uniform(-10, 90, (400, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(4, 40, (400, 2))], axis=1)
    labels = rng.choice([-1, 0, 1, 2], size=400, p=[0.2, 0.7, 0.05, 0.05])
    ax = V.draw_boxes(image, boxes, labels, max_boxes=100)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [f"ignored ({(labels < 0).sum()})", f"negative ({(labels == 0).sum()})",
                      f"positive ({(labels > 0).sum()})"]
    drawn = {c.get_label().split()[0]: len(c.get_paths()) for c in ax.collections}
    assert drawn["positive"] == (labels > 0).sum()  # never dropped
    assert sum(drawn.values()) == 100
    positive_colour = matplotlib.colors.to_rgba(V.MATCH_COLOURS["positive"])
    assert tuple(ax.collections[-1].get_edgecolor()[0]) == positive_colour  # drawn last, on top
    ax = V.draw_boxes(image, boxes[:5], ax=plt.subplots()[1])
    assert len(ax.collections) == 1 and len(ax.collections[0].get_paths()) == 5 and ax.get_legend() is None
    ax.figure.savefig(tmp_path / "boxes.png", dpi=40)
    assert png_size(tmp_path / "boxes.png") == tuple(round(s * 40) for s in ax.figure.get_size_inches())


def test_draw_feature_map_grid_and_mean(tmp_path):
    rng = np.random.default_rng(0)
    feature = rng.standard_normal((1, 10, 6, 7)) * np.arange(1, 11)[:, None, None]
    ax = V.draw_feature_map(feature, channels=5)
    mosaic = np.ma.filled(ax.images[0].get_array().astype(np.float64), np.nan)
    assert mosaic.shape == (2 * 7 - 1, 3 * 8 - 1)  # 5 tiles on a 2 x 3 grid, 1-pixel gaps
    for k in range(5):  # each tile is its channel scaled to [0, 1]
        r, c = divmod(k, 3)
        tile, channel = mosaic[r * 7:r * 7 + 6, c * 8:c * 8 + 7], feature[0, k]
        np.testing.assert_allclose(tile, (channel - channel.min()) / (channel.max() - channel.min()))
    assert np.isnan(mosaic[6]).all() and np.isnan(mosaic[7:, 16:]).all()  # gap row and the empty sixth tile
    ax = V.draw_feature_map(feature[0], channels=[9, 2])
    assert ax.images[0].get_array().shape == (6, 2 * 8 - 1)
    ax = V.draw_feature_map(feature[0], channels="mean")
    mean = feature[0].mean(axis=0)
    np.testing.assert_allclose(ax.images[0].get_array(), (mean - mean.min()) / (mean.max() - mean.min()))
    ax.figure.savefig(tmp_path / "feature.png", dpi=30)
    assert png_size(tmp_path / "feature.png") == tuple(round(s * 30) for s in ax.figure.get_size_inches())
    with pytest.raises(ValueError, match="pick at least one channel in 0..9"):
        V.draw_feature_map(feature, channels=[10])
    with pytest.raises(ValueError, match=r"expected \(C, H, W\)"):
        V.draw_feature_map(np.zeros((2, 3, 4, 4)))


def test_plot_losses_from_jsonl(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rng = np.random.default_rng(0)
    records = [{"iteration": 10 * i, "loss_classifier": float(rng.uniform(0.5, 1)),
                "loss_box_reg": float(rng.uniform(0.1, 0.3)), "lr": 0.02} for i in range(30)]
    text = [json.dumps(r) for r in records]
    text.insert(15, json.dumps({"epoch": 1, "bbox_AP": 0.3}))  # an evaluation line: skipped
    path.write_text("\n".join(text) + "\n")
    out = tmp_path / "plots" / "losses.png"
    ax = V.plot_losses(path, out, log_scale=True, smoothing=0.5)
    assert png_size(out) == (800, 450)
    assert not plt.get_fignums()  # the file's figure is not left open in pyplot
    assert ax.get_yscale() == "log"
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert list(lines) == ["loss_classifier", "loss_box_reg", "total"]
    raw_total = [line for line in ax.get_lines() if matplotlib.colors.same_color(line.get_color(), "black")][0]
    np.testing.assert_allclose(raw_total.get_xdata(), [r["iteration"] for r in records])
    np.testing.assert_allclose(raw_total.get_ydata(), [r["loss_classifier"] + r["loss_box_reg"] for r in records])
    # the moving average: ((1 - w) v1 + w (1 - w) v0) / ((1 - w) + w (1 - w)) at the second point
    v0, v1 = (r["loss_classifier"] for r in records[:2])
    assert lines["loss_classifier"].get_ydata()[1] == pytest.approx((0.5 * v1 + 0.25 * v0) / 0.75)
    ax = V.plot_losses([{"step": 1, "loss": 2.0, "loss_mask": 1.0}, {"step": 2, "loss": 1.5, "loss_mask": 0.5}])
    assert [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")] == \
           ["loss_mask", "total"]
    path.write_text(json.dumps(records[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        V.plot_losses(path)
    with pytest.raises(ValueError, match="no record has a loss"):
        V.plot_losses([{"epoch": 1}])


class FixedModel:
    """A stand-in detector: every image gets the same prediction, its masks the (N, 1, M, M)
    probabilities the model gives with paste_masks=False; it records its train/eval mode."""
    transform = GeneralizedRCNNTransform(min_size=64, max_size=96)

    def __init__(self, prediction):
        self.prediction, self.training = prediction, True

    def eval(self):
        self.training = False

    def train(self, mode=True):
        self.training = mode

    def __call__(self, images, paste_masks=True):
        assert not self.training and not paste_masks  # masks are pasted one at a time, by PastedMasks
        return [self.prediction]


def unpasted(prediction, rng):
    """``prediction`` with (N, 1, 28, 28) mask probabilities, as the model gives them unpasted."""
    return {**prediction, "masks": rng.uniform(0, 1, (len(prediction["boxes"]), 1, 28, 28)).astype(np.float32)}


def test_save_prediction_writes_a_png_enlarged_for_small_images(sample, tmp_path):
    image, target, names = sample
    prediction = prediction_from(target)
    height, width = image.shape[1:]
    png = V.save_prediction(image, prediction, names, tmp_path / "out" / "a.png", scale=1)
    assert png == str(tmp_path / "out" / "a.png") and png_size(tmp_path / "out" / "a.png") == (width, height)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.png"]  # no temporary file left
    # small images are enlarged by a whole factor so the captions can be read
    V.save_prediction(image, prediction, names, tmp_path / "b.png")
    factor = int(np.ceil(400 / min(height, width)))
    assert png_size(tmp_path / "b.png") == (width * factor, height * factor)
    with pytest.raises(ValueError, match="prediction must be a dict with boxes"):
        V.save_prediction(image, [prediction], names, tmp_path / "c.png")


def test_predict_images_writes_the_picture_and_json_that_decodes(sample, tmp_path, rng):
    image, target, names = sample
    prediction = unpasted(prediction_from(target), rng)
    height, width = image.shape[1:]
    model = FixedModel(prediction)
    written = predict_images(model, [image], names, tmp_path / "out", ["a"], score_threshold=0.5)
    assert written == [str(tmp_path / "out" / "a.png"), str(tmp_path / "out" / "a.json")] and model.training
    factor = int(np.ceil(400 / min(height, width)))
    assert png_size(tmp_path / "out" / "a.png") == (width * factor, height * factor)
    record = json.loads((tmp_path / "out" / "a.json").read_text())
    shown = prediction["scores"] >= 0.5
    assert record["image_size"] == [height, width] and 0 < shown.sum() < len(shown)
    assert record["score_threshold"] == 0.5 and record["mask_threshold"] == 0.5
    np.testing.assert_allclose(record["boxes"], prediction["boxes"][shown])
    assert record["labels"] == prediction["labels"][shown].tolist()
    assert record["names"] == [names[label] for label in prediction["labels"][shown]]
    np.testing.assert_allclose(record["scores"], prediction["scores"][shown])
    assert len(record["masks"]) == shown.sum()
    pasted = paste_masks_in_image(prediction["masks"], prediction["boxes"], (height, width))
    for rle, probabilities in zip(record["masks"], pasted[shown]):
        np.testing.assert_array_equal(mask_utils.decode(rle), probabilities[0] > 0.5)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.json", "a.png"]  # no temporary files left


def test_clear_errors(sample):
    image, target, names = sample
    with pytest.raises(ValueError, match="draw the image before normalisation"):
        V.draw_detections(image * 3 - 1, target["boxes"])
    with pytest.raises(ValueError, match=r"expected \(3, H, W\) float in \[0, 1\] or \(H, W, 3\) uint8"):
        V.draw_detections(image.transpose(1, 2, 0), target["boxes"])
    with pytest.raises(ValueError, match=r"masks have shape .* one full-image mask per box"):
        V.draw_detections(image, target["boxes"], masks=target["masks"][:, :-1])
    with pytest.raises(ValueError, match="labels has 1 entries but there are"):
        V.draw_detections(image, target["boxes"], labels=[1])
    with pytest.raises(ValueError, match=r"boxes must have shape \(N, 4\)"):
        V.draw_boxes(image, np.zeros((3, 5)))
    with pytest.raises(ValueError, match="label 3 has no entry in class_names"):
        V.draw_detections(image, target["boxes"][:1], labels=[3], class_names=["__background__", "a"])
    with pytest.raises(ValueError, match="smoothing"):
        V.plot_losses([{"loss": 1.0}], smoothing=1.0)
