"""Pictures of what the detector sees and does: detections, ground truth, anchors and
proposals, feature maps, loss curves (what ``tinymaskrcnn predict`` and a training run draw).

Every drawing function takes an optional ``ax`` (a matplotlib Axes; two for the side-by-side
view) and returns the Axes it drew on (``ax.figure`` is the figure), so notebook cells can
put several pictures in one figure. Without ``ax`` a pyplot figure is made, which a notebook
shows; functions that write files (``plot_losses`` with ``out_png``, ``save_prediction``)
use a bare ``Figure`` instead, so a training loop leaks no pyplot state. Nothing needs a
display: matplotlib picks its Agg backend on a headless machine.

Images are (3, H, W) floats in [0, 1] (the model's input) or (H, W, 3) uint8 (a file's pixels).
Boxes are xyxy in pixel-edge coordinates (pixel ``i`` spans ``[i, i + 1)``), so the image is
drawn over ``extent=(0, W, H, 0)`` and a tight box hugs its mask exactly.

The chapters' teaching figures (im2col windows, RoIAlign's samples, GPU thread layouts, ...)
live in ``tinymaskrcnn.chapters.figures_*``, drawn with the primitives here: ``as_rgb``,
``as_boxes``, ``class_name``, ``class_colour``, ``new_axes``, ``show_image``, ``box_outlines``
and ``PALETTE``.
"""
import json
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .core.backend import to_numpy
from .core.files import atomic_write
from .ops.paste_masks import PastedMasks

# matplotlib's tab10 colours, as RGB in [0, 1]: distinct and readable on photographs
PALETTE = np.array([[0.122, 0.467, 0.706], [1.000, 0.498, 0.055], [0.173, 0.627, 0.173],
                    [0.839, 0.153, 0.157], [0.580, 0.404, 0.741], [0.549, 0.337, 0.294],
                    [0.890, 0.467, 0.761], [0.498, 0.498, 0.498], [0.737, 0.741, 0.133],
                    [0.090, 0.745, 0.812]])
UNLABELLED = np.array([1.000, 0.843, 0.000])  # gold: instances drawn without labels
# sampling labels of anchors and RoIs: > 0 positive (a class), 0 negative, -1 ignored
MATCH_COLOURS = {"positive": "#2ca02c", "negative": "#d62728", "ignored": "#b0b0b0"}


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

def as_rgb(image):
    """(H, W, 3) float64 in [0, 1] from a (3, H, W) float image in [0, 1] or an (H, W, 3) uint8 one."""
    image = to_numpy(image)
    if image.ndim == 3 and image.dtype == np.uint8 and image.shape[2] == 3:
        return image.astype(np.float64) / 255.0
    if image.ndim == 3 and image.dtype.kind == "f" and image.shape[0] == 3:
        rgb = image.transpose(1, 2, 0).astype(np.float64)
        if rgb.size and (rgb.min() < -1e-3 or rgb.max() > 1 + 1e-3):
            raise ValueError(f"a float image must lie in [0, 1], got values in [{rgb.min():.3g}, {rgb.max():.3g}]: "
                             "draw the image before normalisation (the model normalises inside)")
        return np.clip(rgb, 0.0, 1.0)
    raise ValueError(f"image has shape {image.shape} and dtype {image.dtype}: expected (3, H, W) float in [0, 1] "
                     "or (H, W, 3) uint8")


def as_boxes(boxes):
    """(N, 4) float64 NumPy boxes (x1, y1, x2, y2), their shape checked."""
    boxes = to_numpy(boxes).astype(np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) (x1, y1, x2, y2), got {boxes.shape}")
    return boxes


def select_detections(boxes, labels, scores, masks, size, score_threshold):
    """Checked NumPy boxes, labels and scores of the detections scoring at least
    ``score_threshold`` (all of them when ``scores`` is None), and their masks: a NumPy array of
    (N, 1, H, W) or (N, H, W) probabilities, or ``ops.PastedMasks`` (still unpasted), ``size``
    being (H, W). ``binary_masks`` then gives them one at a time. The pictures and
    ``predict``'s JSON (``engine.inference.prediction_record``) keep the same detections
    through it."""
    boxes = as_boxes(boxes)
    n = len(boxes)
    labels = None if labels is None else to_numpy(labels).reshape(-1)
    scores = None if scores is None else to_numpy(scores).astype(np.float64).reshape(-1)
    for name, values in (("labels", labels), ("scores", scores)):
        if values is not None and len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries but there are {n} boxes")
    if masks is not None:
        masks = masks if isinstance(masks, PastedMasks) else to_numpy(masks)
        if tuple(masks.shape) not in ((n, 1) + size, (n,) + size):
            raise ValueError(f"masks have shape {tuple(masks.shape)}: expected ({n}, 1, {size[0]}, {size[1]}) or "
                             f"({n}, {size[0]}, {size[1]}), one full-image mask per box")
    keep = np.ones(n, dtype=bool) if scores is None else scores >= score_threshold
    pick = lambda a: None if a is None else a[keep]
    return boxes[keep], pick(labels), pick(scores), pick(masks)


def binary_masks(masks, mask_threshold):
    """Each of ``masks`` (as ``select_detections`` gives them) as an (H, W) boolean mask,
    binarised at ``mask_threshold``, one at a time: PastedMasks pastes each only now, so a
    picture or a JSON record never holds every full-size mask at once."""
    for mask in masks:
        mask = to_numpy(mask)
        yield mask.reshape(mask.shape[-2:]) > mask_threshold


def class_name(label, class_names):
    """``class_names[label]`` ("class 3" without names); a label with no name is an error."""
    if class_names is None:
        return f"class {label}"
    try:
        if label < 0:  # a list would quietly count from its end
            raise IndexError
        return str(class_names[label])
    except (IndexError, KeyError):
        raise ValueError(f"label {label} has no entry in class_names ({len(class_names)} names, indexed by label; "
                         "CocoDetection.category_names has '__background__' at 0)") from None


def class_colour(label):
    """A class's RGB colour, the same in every picture: ``PALETTE[(label - 1) % 10]`` for a class,
    grey for the background (label 0 or less), gold for an instance without a label (None).
    Keyed by the label, not by the instance's place in a list, so that a prediction and its
    ground truth, or one class across chapters, always match."""
    if label is None:
        return UNLABELLED
    return np.array([0.6, 0.6, 0.6]) if label <= 0 else PALETTE[(int(label) - 1) % len(PALETTE)]


def _caption(label, score, class_names):
    """ "name score", or whichever of the two is known."""
    name = None if label is None else class_name(int(label), class_names)
    return " ".join(part for part in (name, None if score is None else f"{score:.2f}") if part is not None)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------

def new_axes(ax, height, width, width_inches=6.0):
    """``ax``, or the Axes of a new pyplot figure shaped like a (height, width) picture."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt  # only here: files are drawn on bare Figures, without pyplot

    _, ax = plt.subplots(figsize=(width_inches, width_inches * height / max(width, 1)), layout="constrained")
    return ax


def image_figure(height, width, scale=1.0, dpi=100):
    """A bare Figure whose single Axes covers it edge to edge, so that saving it gives a PNG of
    exactly (height·scale, width·scale) pixels with the image filling it."""
    fig = Figure(figsize=(width * scale / dpi, height * scale / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    return fig, ax


def save_figure(fig, out_png):
    """Write ``fig`` as a PNG atomically (a reader never sees half a file); returns the path."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out_png, lambda f: fig.savefig(f, format="png", dpi=fig.dpi))
    return str(out_png)


def show_image(ax, rgb):
    """Draw an (H, W, 3) picture with pixel ``i`` spanning ``[i, i + 1)``, axes hidden."""
    height, width = rgb.shape[:2]
    ax.imshow(rgb, extent=(0, width, height, 0), interpolation="nearest")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()


def box_outlines(boxes):
    """The (N, 4, 2) corner polygons of (N, 4) xyxy boxes, for a PolyCollection."""
    x1, y1, x2, y2 = boxes.T
    return np.stack([np.stack([x1, y1], 1), np.stack([x2, y1], 1), np.stack([x2, y2], 1),
                     np.stack([x1, y2], 1)], axis=1)


# ---------------------------------------------------------------------------------------------
# Detections and ground truth
# ---------------------------------------------------------------------------------------------

def draw_detections(image, boxes, labels=None, scores=None, masks=None, class_names=None, score_threshold=0.5,
                    ax=None, mask_threshold=0.5, alpha=0.45, fontsize=8, title=None):
    """Draw detections (or ground truth) over an image; returns the Axes.

    Each instance takes its class's colour (``class_colour``, gold for all without ``labels``):
    its mask (binarised at ``mask_threshold``) tinted with opacity ``alpha``, its box, and a
    caption "name score"; each mask is also outlined in a darker shade, so two touching
    instances of one class still show where one ends. Detections scoring
    below ``score_threshold`` are left out. ``class_names[label]`` names a label
    (``CocoDetection.category_names``); masks are (N, 1, H, W) probabilities or (N, H, W).
    """
    rgb = as_rgb(image)
    height, width = rgb.shape[:2]
    boxes, labels, scores, masks = select_detections(boxes, labels, scores, masks, (height, width), score_threshold)
    ax = new_axes(ax, height, width)
    colours = [class_colour(label) for label in ([None] * len(boxes) if labels is None else labels)]
    outlines = [None] * len(boxes)
    if masks is not None:
        for k, (mask, colour) in enumerate(zip(binary_masks(masks, mask_threshold), colours)):
            rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colour  # rgb is our own copy
            outlines[k] = _outline_window(mask)
    show_image(ax, rgb)
    centres_x, centres_y = np.arange(width) + 0.5, np.arange(height) + 0.5
    captions = [_caption(None if labels is None else labels[k], None if scores is None else scores[k], class_names)
                for k in range(len(boxes))]
    tops = _caption_tops(ax, boxes, captions, fontsize, height, width)
    for k, ((x1, y1, x2, y2), colour) in enumerate(zip(boxes, colours)):
        if outlines[k] is not None:
            rows, cols, window = outlines[k]
            ax.contour(centres_x[cols], centres_y[rows], window, levels=[0.5], colors=[0.55 * colour],
                       linewidths=1.0)
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.5))
        if captions[k]:
            ax.text(x1, tops[k], captions[k], fontsize=fontsize, color="white", va="top", clip_on=True,
                    bbox=dict(facecolor=colour, alpha=0.8, pad=1.0, edgecolor="none"))
    if title is not None:
        ax.set_title(title, fontsize=fontsize + 2)
    return ax


def _caption_tops(ax, boxes, captions, fontsize, height, width):
    """The image row of each caption's top edge: a line above its box when there is room, else
    just inside the box's top edge, then moved down a line at a time while it would cover a
    caption placed before it (two detections of one object start at nearly the same corner).
    A caption's size in image pixels is estimated from the font size and the Axes' size."""
    extent = ax.get_window_extent()   # the Axes in display pixels, as laid out so far
    per_point = ax.figure.dpi / 72.0
    line = (fontsize + 3.0) * per_point * height / max(extent.height, 1.0)
    char = 0.62 * fontsize * per_point * width / max(extent.width, 1.0)
    placed, tops = [], []
    for (x1, y1, _, _), caption in zip(boxes, captions):
        top = y1 - line if y1 > line else y1
        right = x1 + char * len(caption)
        while caption and any(x1 < r and x < right and top < t + line and t < top + line for x, r, t in placed):
            top += line
        if caption:
            placed.append((x1, right, top))
        tops.append(top)
    return tops


def _outline_window(mask):
    """(rows, cols, float32 window) of the part of a boolean mask its outline runs through: its
    bounding box grown by a pixel (clipped to the image), outside which the mask is all zero,
    so the 0.5 contour of the window is the whole mask's. None when there is no outline (an
    empty or a full mask). A contour over the whole image would cost the image's size per
    detection: hundreds of MB each on a photo."""
    if not mask.any() or mask.all():
        return None
    (rows,), (cols,) = np.nonzero(mask.any(axis=1)), np.nonzero(mask.any(axis=0))
    rows = slice(max(rows[0] - 1, 0), min(rows[-1] + 2, mask.shape[0]))
    cols = slice(max(cols[0] - 1, 0), min(cols[-1] + 2, mask.shape[1]))
    return rows, cols, mask[rows, cols].astype(np.float32)


def draw_ground_truth_and_prediction(image, target, prediction, class_names=None, score_threshold=0.5, ax=None,
                                     **kwargs):
    """The ground truth (left) and the model's prediction (right) side by side; returns the pair
    of Axes. ``target`` and ``prediction`` are dicts of boxes, labels (scores) and masks;
    ``ax`` is a pair of Axes; other keywords go to ``draw_detections``."""
    rgb = as_rgb(image)
    height, width = rgb.shape[:2]
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(1, 2, figsize=(12, 6 * height / max(width, 1)), layout="constrained")
    elif len(ax) != 2:
        raise ValueError(f"ax must be a pair of Axes (ground truth, prediction), got {len(ax)}")
    for name, d in (("target", target), ("prediction", prediction)):
        if not isinstance(d, dict) or "boxes" not in d:
            raise ValueError(f"{name} must be a dict with at least 'boxes' (and labels, masks), got "
                             f"{sorted(d) if isinstance(d, dict) else type(d).__name__}")
    num_true = len(as_boxes(target["boxes"]))
    draw_detections(image, target["boxes"], target.get("labels"), None, target.get("masks"), class_names,
                    ax=ax[0], title=f"ground truth ({num_true})", **kwargs)
    scores = prediction.get("scores")
    shown = len(as_boxes(prediction["boxes"])) if scores is None else \
        int((to_numpy(scores) >= score_threshold).sum())
    draw_detections(image, prediction["boxes"], prediction.get("labels"), scores, prediction.get("masks"),
                    class_names, score_threshold, ax=ax[1],
                    title=f"prediction ({shown} with score ≥ {score_threshold:g})", **kwargs)
    return ax


MAX_PICTURE_SIDE = 2048  # pixels along the long side of a picture save_prediction draws


def save_prediction(image, prediction, class_names, out_png, score_threshold=0.5, mask_threshold=0.5, scale=None):
    """Write one image's detections as a PNG atomically: the image at ``scale`` times its size,
    drawn by ``draw_detections``; returns its path (``engine.predict_images`` writes the same
    detections as JSON beside it).

    ``scale`` None enlarges small images by a whole factor until the short side reaches 400
    pixels (so captions stay legible), leaves larger ones at their own size, and draws any
    whose long side would pass MAX_PICTURE_SIDE pixels at that length: a 12-megapixel photo or
    a strip 100,000 pixels long costs the memory of a bounded picture, not of its own size.
    Drawn smaller (a scale below 1), the image is averaged down to the picture's pixels and
    the masks taken at that size (``ops.PastedMasks`` are pasted there directly).
    """
    if not isinstance(prediction, dict) or "boxes" not in prediction:
        raise ValueError("prediction must be a dict with boxes, labels, scores (and masks), as the model returns")
    height, width = _image_size(image)
    if scale is None:
        scale = min(max(1, int(np.ceil(400 / min(height, width)))), MAX_PICTURE_SIDE / max(height, width))
    boxes, masks = prediction["boxes"], prediction.get("masks")
    if scale < 1:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        ratio = np.array([size[1] / width, size[0] / height] * 2)
        image, boxes, masks = _shrunk(image, size), as_boxes(boxes) * ratio, _masks_at(masks, (height, width), size)
        (height, width), scale = size, 1
    fig, ax = image_figure(height, width, scale)
    # captions about a thirtieth of the picture's short side tall (in points), within readable bounds
    fontsize = float(np.clip(min(height, width) * scale / 30 * 72 / fig.dpi, 6, 12))
    draw_detections(image, boxes, prediction.get("labels"), prediction.get("scores"), masks, class_names,
                    score_threshold, ax=ax, mask_threshold=mask_threshold, fontsize=fontsize)
    return save_figure(fig, out_png)


def _image_size(image):
    """(H, W) of an image in either form ``as_rgb`` takes, without converting it."""
    image = to_numpy(image)
    if image.ndim == 3 and image.dtype == np.uint8 and image.shape[2] == 3:
        return image.shape[:2]
    if image.ndim == 3 and image.dtype.kind == "f" and image.shape[0] == 3:
        return image.shape[1:]
    return as_rgb(image).shape[:2]  # raises its error naming the forms it takes


def _shrunk(image, size):
    """``image`` (either form) resized down to ``size`` (H, W), each picture pixel the mean of
    the image pixels it covers (Pillow's box filter), one channel at a time for a float image."""
    from PIL import Image

    image = to_numpy(image)
    target = (size[1], size[0])
    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize(target, Image.Resampling.BOX))
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32))
                                .resize(target, Image.Resampling.BOX)) for channel in image])


def _masks_at(masks, size, new_size):
    """Masks of an image of ``size`` for its picture of ``new_size``: PastedMasks pasted at that
    size, full-size masks sampled at the picture pixels' centres (nearest); None stays None."""
    if masks is None or isinstance(masks, PastedMasks):
        return masks if masks is None else masks.at_size(*new_size)
    masks = to_numpy(masks)
    if tuple(masks.shape[-2:]) != tuple(size):
        return masks  # draw_detections names the mismatch
    rows, cols = ((np.arange(n) + 0.5) * old / n for n, old in zip(new_size, size))
    return masks.reshape((len(masks),) + tuple(size))[:, rows.astype(np.intp)[:, None], cols.astype(np.intp)]


# ---------------------------------------------------------------------------------------------
# Anchors, proposals, sampled RoIs
# ---------------------------------------------------------------------------------------------

def draw_boxes(image, boxes, labels=None, ax=None, max_boxes=500, linewidth=0.8, colour="#ffd700", seed=0,
               title=None):
    """Draw many boxes (anchors, proposals, sampled RoIs) over an image; returns the Axes.

    With ``labels`` the boxes are coloured by their matching label: > 0 positive (green), 0
    negative (red), -1 ignored (grey), with a legend counting each; without, all take
    ``colour``. At most ``max_boxes`` are drawn (a seeded random choice, None: all), always
    keeping every positive, since thousands of outlines hide the image.
    """
    rgb = as_rgb(image)
    height, width = rgb.shape[:2]
    boxes = as_boxes(boxes)
    if labels is None:
        groups = {None: np.arange(len(boxes))}
    else:
        labels = to_numpy(labels).reshape(-1)
        if len(labels) != len(boxes):
            raise ValueError(f"labels has {len(labels)} entries but there are {len(boxes)} boxes")
        # drawn in this order, so positives end up on top
        groups = {"ignored": np.flatnonzero(labels < 0), "negative": np.flatnonzero(labels == 0),
                  "positive": np.flatnonzero(labels > 0)}
    counts = {name: len(idx) for name, idx in groups.items()}
    if max_boxes is not None and len(boxes) > max_boxes:
        positives = groups.get("positive", np.zeros(0, dtype=np.int64))
        rest = np.setdiff1d(np.arange(len(boxes)), positives)
        size = min(len(rest), max(max_boxes - len(positives), 0))
        kept = np.union1d(positives, np.random.default_rng(seed).choice(rest, size=size, replace=False))
        groups = {name: np.intersect1d(idx, kept) for name, idx in groups.items()}
    ax = new_axes(ax, height, width)
    show_image(ax, rgb)
    for name, idx in groups.items():
        outlines = box_outlines(boxes[idx])
        edge = colour if name is None else MATCH_COLOURS[name]
        legend = None if name is None else f"{name} ({counts[name]})"
        ax.add_collection(PolyCollection(outlines, facecolors="none", edgecolors=edge, linewidths=linewidth,
                                         label=legend))
    if labels is not None:
        ax.legend(loc="upper right", fontsize=7, framealpha=0.8)
    shown = sum(len(idx) for idx in groups.values())
    ax.set_title(title if title is not None else f"{shown} of {len(boxes)} boxes", fontsize=9)
    return ax


# ---------------------------------------------------------------------------------------------
# Feature maps
# ---------------------------------------------------------------------------------------------

def draw_feature_map(feature, channels=16, ax=None, cmap="viridis", title=None):
    """Show a feature map (C, H, W) or (1, C, H, W); returns the Axes.

    ``channels``: a number n (the first n channels), a list of channel indices, or "mean" (the
    mean over all channels). Several channels are tiled into one grid, each scaled to its own
    range so that the pattern of every channel shows, whatever its magnitude.
    """
    feature = to_numpy(feature).astype(np.float64)
    if feature.ndim == 4 and feature.shape[0] == 1:
        feature = feature[0]
    if feature.ndim != 3:
        raise ValueError(f"feature has shape {feature.shape}: expected (C, H, W) or (1, C, H, W); "
                         "for a batch pick one image, feature[i]")
    num_channels, height, width = feature.shape
    if isinstance(channels, str):
        if channels != "mean":
            raise ValueError(f"channels={channels!r}: expected a count, a list of indices or 'mean'")
        tiles, what = feature.mean(axis=0, keepdims=True), f"mean of {num_channels} channels"
    else:
        index = np.arange(min(int(channels), num_channels)) if np.isscalar(channels) else np.asarray(channels)
        if index.size == 0 or index.min() < 0 or index.max() >= num_channels:
            raise ValueError(f"channels={channels!r}: pick at least one channel in 0..{num_channels - 1}")
        tiles = feature[index]
        what = f"channels {index.tolist()}" if len(index) <= 8 else f"{len(index)} channels"
    low = tiles.min(axis=(1, 2), keepdims=True)
    span = tiles.max(axis=(1, 2), keepdims=True) - low
    tiles = np.where(span > 0, (tiles - low) / np.where(span > 0, span, 1), 0.5)
    # a grid as square as possible, one NaN pixel between tiles (drawn as the background)
    cols = int(np.ceil(np.sqrt(len(tiles))))
    rows = int(np.ceil(len(tiles) / cols))
    mosaic = np.full((rows * (height + 1) - 1, cols * (width + 1) - 1), np.nan)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        mosaic[r * (height + 1):r * (height + 1) + height, c * (width + 1):c * (width + 1) + width] = tile
    ax = new_axes(ax, *mosaic.shape)
    palette = matplotlib.colormaps[cmap].with_extremes(bad="white")
    ax.imshow(mosaic, cmap=palette, vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title if title is not None else f"{num_channels}×{height}×{width}: {what}", fontsize=9)
    return ax


# ---------------------------------------------------------------------------------------------
# Loss curves
# ---------------------------------------------------------------------------------------------

def _read_records(metrics):
    """The list of dicts from a metrics.jsonl path (one JSON object a line) or a list of dicts."""
    if isinstance(metrics, (str, Path)):
        path = Path(metrics)
        if not path.is_file():
            raise FileNotFoundError(f"metrics file not found: {path}")
        records = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {number} is not JSON ({e}); expected one JSON object a line") \
                        from None
        return records
    return list(metrics)


def smooth(values, weight):
    """Exponential moving average with bias correction: the first points are not pulled toward
    zero. ``weight`` 0 gives the values back; NaN points are skipped."""
    out, average, total_weight = np.empty(len(values)), 0.0, 0.0
    for i, v in enumerate(values):
        if np.isfinite(v):
            average = weight * average + (1 - weight) * v
            total_weight = weight * total_weight + (1 - weight)
        out[i] = average / total_weight if total_weight > 0 else np.nan
    return out


def plot_losses(metrics, out_png=None, log_scale=False, smoothing=0.6, ax=None):
    """Plot each loss and their total against the iteration; returns the Axes.

    ``metrics``: the path of a metrics.jsonl file or a list of dicts. Loss keys are those
    starting with "loss" (the record's "loss", if any, is the total; otherwise the total is the
    sum of the others); the x axis is "iteration" or "step" when the records have it, else the
    record number. Records without a loss (evaluation lines) are skipped. Raw values are drawn
    faint, their exponential moving average (``smoothing`` in [0, 1)) solid. With ``out_png``
    the plot is written there atomically.
    """
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing={smoothing!r}: expected a weight in [0, 1) (0: no smoothing)")
    records = [r for r in _read_records(metrics) if isinstance(r, dict) and any(k.startswith("loss") for k in r)]
    if not records:
        raise ValueError("no record has a loss (a key starting with 'loss', e.g. loss_classifier); "
                         "pass the trainer's metrics.jsonl")
    names = list(dict.fromkeys(k for r in records for k in r if k.startswith("loss") and k != "loss"))
    series = {name: np.array([float(r.get(name, np.nan)) for r in records]) for name in names}
    series["total"] = np.array([float(r["loss"]) if "loss" in r else
                                sum(float(r[n]) for n in names if n in r) for r in records])
    steps = np.array([r.get("iteration", r.get("step", i)) for i, r in enumerate(records)], dtype=np.float64)

    if ax is None and out_png is not None:
        ax = Figure(figsize=(8, 4.5), dpi=100, layout="constrained").add_subplot()
    ax = new_axes(ax, 4.5, 8, width_inches=8)
    for k, (name, values) in enumerate(series.items()):
        colour = "black" if name == "total" else PALETTE[k % len(PALETTE)]
        ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
        ax.plot(steps, smooth(values, smoothing), color=colour, linewidth=2.0 if name == "total" else 1.4,
                label=name)
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("iteration" if any("iteration" in r or "step" in r for r in records) else "record")
    ax.set_ylabel("loss")
    ax.set_title(f"losses (faint: raw; solid: moving average, weight {smoothing:g})", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if out_png is not None:
        save_figure(ax.figure, out_png)
    return ax
