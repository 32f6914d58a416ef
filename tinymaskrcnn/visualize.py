"""Pictures of what the detector sees and does: detections, ground truth, anchors and
proposals, feature maps, loss curves.

Every drawing function takes an optional ``ax`` (a matplotlib Axes; two for the side-by-side
view) and returns the Axes it drew on (``ax.figure`` is the figure), so notebook cells can
put several pictures in one figure. Without ``ax`` a pyplot figure is made, which a notebook
shows; functions that write files (``plot_losses`` with ``out_png``, ``save_prediction``)
use a bare ``Figure`` instead, so a training loop leaks no pyplot state. Nothing needs a
display: matplotlib picks its Agg backend on a headless machine.

Images are (3, H, W) floats in [0, 1] (the model's input) or (H, W, 3) uint8 (a file's pixels).
Boxes are xyxy in pixel-edge coordinates (pixel ``i`` spans ``[i, i + 1)``), so the image is
drawn over ``extent=(0, W, H, 0)`` and a tight box hugs its mask exactly.
"""
import json
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .core.backend import to_numpy
from .data.coco import mask_to_rle
from .core.files import atomic_write, write_json_atomic

# matplotlib's tab10 colours, as RGB in [0, 1]: distinct and readable on photographs
PALETTE = np.array([[0.122, 0.467, 0.706], [1.000, 0.498, 0.055], [0.173, 0.627, 0.173],
                    [0.839, 0.153, 0.157], [0.580, 0.404, 0.741], [0.549, 0.337, 0.294],
                    [0.890, 0.467, 0.761], [0.498, 0.498, 0.498], [0.737, 0.741, 0.133],
                    [0.090, 0.745, 0.812]])
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


def _boxes(boxes):
    boxes = to_numpy(boxes).astype(np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) (x1, y1, x2, y2), got {boxes.shape}")
    return boxes


def _instances(boxes, labels, scores, masks, size, score_threshold, mask_threshold):
    """Checked NumPy boxes, labels, scores and boolean masks of the detections scoring at least
    ``score_threshold`` (all of them when ``scores`` is None)."""
    boxes = _boxes(boxes)
    n = len(boxes)
    labels = None if labels is None else to_numpy(labels).reshape(-1)
    scores = None if scores is None else to_numpy(scores).astype(np.float64).reshape(-1)
    for name, values in (("labels", labels), ("scores", scores)):
        if values is not None and len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries but there are {n} boxes")
    if masks is not None:
        masks = to_numpy(masks)
        if masks.shape not in ((n, 1) + size, (n,) + size):
            raise ValueError(f"masks have shape {masks.shape}: expected ({n}, 1, {size[0]}, {size[1]}) or "
                             f"({n}, {size[0]}, {size[1]}), one full-image mask per box")
        masks = masks.reshape((n,) + size) > mask_threshold
    keep = np.ones(n, dtype=bool) if scores is None else scores >= score_threshold
    pick = lambda a: None if a is None else a[keep]
    return boxes[keep], pick(labels), pick(scores), pick(masks)


def _class_name(label, class_names):
    if class_names is None:
        return f"class {label}"
    try:
        if label < 0:  # a list would quietly count from its end
            raise IndexError
        return str(class_names[label])
    except (IndexError, KeyError):
        raise ValueError(f"label {label} has no entry in class_names ({len(class_names)} names, indexed by label; "
                         "CocoDetection.category_names has '__background__' at 0)") from None


def _caption(label, score, class_names):
    """ "name score", or whichever of the two is known."""
    name = None if label is None else _class_name(int(label), class_names)
    return " ".join(part for part in (name, None if score is None else f"{score:.2f}") if part is not None)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------

def _new_axes(ax, height, width, width_inches=6.0):
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


def _show_image(ax, rgb):
    height, width = rgb.shape[:2]
    ax.imshow(rgb, extent=(0, width, height, 0), interpolation="nearest")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()


# ---------------------------------------------------------------------------------------------
# Detections and ground truth
# ---------------------------------------------------------------------------------------------

def draw_detections(image, boxes, labels=None, scores=None, masks=None, class_names=None, score_threshold=0.5,
                    ax=None, mask_threshold=0.5, alpha=0.45, fontsize=8, title=None):
    """Draw detections (or ground truth) over an image; returns the Axes.

    Each instance gets its own colour: its mask (binarised at ``mask_threshold``) tinted with
    opacity ``alpha`` and outlined, its box, and a caption "name score". Detections scoring
    below ``score_threshold`` are left out. ``class_names[label]`` names a label
    (``CocoDetection.category_names``); masks are (N, 1, H, W) probabilities or (N, H, W).
    """
    rgb = as_rgb(image)
    height, width = rgb.shape[:2]
    boxes, labels, scores, masks = _instances(boxes, labels, scores, masks, (height, width), score_threshold,
                                              mask_threshold)
    ax = _new_axes(ax, height, width)
    colours = PALETTE[np.arange(len(boxes)) % len(PALETTE)]
    if masks is not None:
        for mask, colour in zip(masks, colours):
            rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colour  # rgb is our own copy
    _show_image(ax, rgb)
    centres_x, centres_y = np.arange(width) + 0.5, np.arange(height) + 0.5
    for k, ((x1, y1, x2, y2), colour) in enumerate(zip(boxes, colours)):
        if masks is not None and masks[k].any() and not masks[k].all():
            ax.contour(centres_x, centres_y, masks[k].astype(np.float32), levels=[0.5], colors=[colour],
                       linewidths=1.0)
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.5))
        caption = _caption(None if labels is None else labels[k], None if scores is None else scores[k],
                           class_names)
        if caption:
            # above the box when there is room, else just inside its top edge
            above = y1 > 0.06 * height
            ax.text(x1, y1, caption, fontsize=fontsize, color="white", va="bottom" if above else "top",
                    clip_on=True, bbox=dict(facecolor=colour, alpha=0.8, pad=1.0, edgecolor="none"))
    if title is not None:
        ax.set_title(title, fontsize=fontsize + 2)
    return ax


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
    num_true = len(_boxes(target["boxes"]))
    draw_detections(image, target["boxes"], target.get("labels"), None, target.get("masks"), class_names,
                    ax=ax[0], title=f"ground truth ({num_true})", **kwargs)
    scores = prediction.get("scores")
    shown = len(_boxes(prediction["boxes"])) if scores is None else \
        int((to_numpy(scores) >= score_threshold).sum())
    draw_detections(image, prediction["boxes"], prediction.get("labels"), scores, prediction.get("masks"),
                    class_names, score_threshold, ax=ax[1],
                    title=f"prediction ({shown} with score ≥ {score_threshold:g})", **kwargs)
    return ax


def save_prediction(image, prediction, class_names, out_png, out_json, score_threshold=0.5, mask_threshold=0.5,
                    scale=None):
    """Write one image's detections as a PNG (the image at ``scale`` times its size, drawn by
    ``draw_detections``) and a JSON file, both atomically; returns their paths.

    ``scale`` None enlarges small images by a whole factor until the short side reaches 400
    pixels (so captions stay legible), and leaves larger ones at their own size.

    The JSON holds the detections scoring at least ``score_threshold``: ``boxes`` (xyxy
    pixels), ``labels``, ``names``, ``scores`` and ``masks`` as compressed COCO RLE of the mask
    binarised at ``mask_threshold`` (``pycocotools.mask.decode`` reads them back), with
    ``image_size`` [H, W] and both thresholds.
    """
    if not isinstance(prediction, dict) or "boxes" not in prediction:
        raise ValueError("prediction must be a dict with boxes, labels, scores (and masks), as the model returns")
    rgb = as_rgb(image)
    height, width = rgb.shape[:2]
    boxes, labels, scores, masks = _instances(prediction["boxes"], prediction.get("labels"),
                                              prediction.get("scores"), prediction.get("masks"), (height, width),
                                              score_threshold, mask_threshold)
    if scale is None:
        scale = max(1, int(np.ceil(400 / min(height, width))))
    fig, ax = image_figure(height, width, scale)
    # captions about a thirtieth of the picture's short side tall (in points), within readable bounds
    fontsize = float(np.clip(min(height, width) * scale / 30 * 72 / fig.dpi, 6, 12))
    draw_detections(image, boxes, labels, scores, masks, class_names, score_threshold, ax=ax, fontsize=fontsize)
    record = {"image_size": [height, width], "score_threshold": score_threshold, "mask_threshold": mask_threshold,
              "boxes": boxes.tolist(),
              "labels": [] if labels is None else [int(v) for v in labels],
              "names": [] if labels is None else [_class_name(int(v), class_names) for v in labels],
              "scores": [] if scores is None else scores.tolist(),
              "masks": [] if masks is None else [mask_to_rle(m) for m in masks]}
    return save_figure(fig, out_png), write_json_atomic(record, out_json)


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
    boxes = _boxes(boxes)
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
    ax = _new_axes(ax, height, width)
    _show_image(ax, rgb)
    for name, idx in groups.items():
        outlines = _outlines(boxes[idx])
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
    ax = _new_axes(ax, *mosaic.shape)
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
    ax = _new_axes(ax, 4.5, 8, width_inches=8)
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


# ---------------------------------------------------------------------------------------------
# Chapter 2: which input window becomes which im2col column
# ---------------------------------------------------------------------------------------------

def draw_im2col(x, cols, kernel_size, stride=1, padding=0, columns=(0,), axes=None):
    """An image plane and its im2col matrix side by side, chosen windows matched to their columns.

    ``x`` is one (H, W) plane and ``cols`` its im2col matrix (kh·kw, Ho·Wo) for the given kernel,
    stride and zero padding (no dilation), as the caller computed it: row ki·kw + kj holds what
    kernel tap (ki, kj) sees at every output position, column oh·Wo + ow everything output
    (oh, ow) sees. Left: the padded plane (padding shaded) with the window of each column in
    ``columns`` outlined; right: the matrix with those columns outlined in the same colours.
    Returns the two Axes.
    """
    x, cols = to_numpy(x).astype(np.float64), to_numpy(cols).astype(np.float64)
    (kh, kw), (sh, sw), (ph, pw) = (k if isinstance(k, (tuple, list)) else (k, k)
                                    for k in (kernel_size, stride, padding))
    if x.ndim != 2:
        raise ValueError(f"x has shape {x.shape}: expected one (H, W) plane")
    ho, wo = (x.shape[0] + 2 * ph - kh) // sh + 1, (x.shape[1] + 2 * pw - kw) // sw + 1
    if cols.shape != (kh * kw, ho * wo):
        raise ValueError(f"cols has shape {cols.shape}, but a {kh}×{kw} kernel with stride {(sh, sw)} and padding "
                         f"{(ph, pw)} over {x.shape} gives an im2col matrix of shape {(kh * kw, ho * wo)}")
    if axes is None:
        import matplotlib.pyplot as plt

        _, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained",
                               gridspec_kw={"width_ratios": [x.shape[1] + 2 * pw, ho * wo]})
    padded = np.pad(x, ((ph, ph), (pw, pw)))
    in_padding = np.pad(np.zeros_like(x), ((ph, ph), (pw, pw)), constant_values=1)
    _grid_of_numbers(axes[0], padded, f"input, padded by {(ph, pw)}", shade=in_padding, fmt="{:g}")
    _grid_of_numbers(axes[1], cols, f"im2col: {kh * kw} rows (taps) × {ho * wo} columns (outputs)", fmt="{:g}")
    axes[1].set_xticks(np.arange(ho * wo) + 0.5, [f"{i},{j}" for i, j in np.ndindex(ho, wo)], minor=True)
    axes[1].set_yticks(np.arange(kh * kw) + 0.5, [f"{i},{j}" for i, j in np.ndindex(kh, kw)], minor=True)
    axes[1].tick_params(which="minor", length=0, labelsize=6, labelbottom=True, labelleft=True)
    axes[1].set_xlabel("output (oh, ow)", fontsize=8)
    axes[1].set_ylabel("kernel tap (ki, kj)", fontsize=8)
    for n, column in enumerate(columns):
        if not 0 <= column < ho * wo:
            raise ValueError(f"column {column} is out of range: the matrix has {ho * wo} columns")
        colour = PALETTE[n % len(PALETTE)]
        oh, ow = divmod(column, wo)
        inset = 0.08 + 0.06 * n
        axes[0].add_patch(Rectangle((ow * sw + inset, oh * sh + inset), kw - 2 * inset, kh - 2 * inset, fill=False,
                                    edgecolor=colour, linewidth=2))
        axes[1].add_patch(Rectangle((column + 0.08, 0.08), 0.84, kh * kw - 0.16, fill=False, edgecolor=colour,
                                    linewidth=2))
    return axes


# ---------------------------------------------------------------------------------------------
# Chapter 3: normalisation statistics, max pooling's gradient routing
# ---------------------------------------------------------------------------------------------

def draw_channel_statistics(outputs, per_image=True, ax=None, title=None):
    """Scatter the mean and standard deviation of each channel of normalised outputs; returns the Axes.

    ``outputs`` maps a label to an (N, C, H, W) array. With ``per_image`` each point is one
    (image, channel) plane, as a layer sees one image at inference; otherwise one channel over
    the whole batch, as batch norm computes it in training. A normaliser that did its job puts
    every point on the cross at mean 0, standard deviation 1.
    """
    ax = _new_axes(ax, 3.2, 4.5, width_inches=4.5)
    for k, (label, values) in enumerate(outputs.items()):
        values = to_numpy(values).astype(np.float64)
        if values.ndim != 4:
            raise ValueError(f"outputs[{label!r}] has shape {values.shape}: expected (N, C, H, W)")
        axes = (2, 3) if per_image else (0, 2, 3)
        mean, std = values.mean(axis=axes).ravel(), values.std(axis=axes).ravel()
        ax.scatter(mean, std, s=22, color=PALETTE[k % len(PALETTE)], alpha=0.75, label=f"{label} ({len(mean)})",
                   marker="os^Dv"[k % 5], zorder=3)
    ax.plot([0], [1], marker="+", color="black", markersize=18, markeredgewidth=1.2, linestyle="none",
            label="mean 0, std 1", zorder=2)
    ax.set_xlabel("mean" + (" per image and channel" if per_image else " per channel over the batch"), fontsize=8)
    ax.set_ylabel("standard deviation", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    if title is not None:
        ax.set_title(title, fontsize=9)
    return ax


def draw_batched_nms(boxes, scores, idxs, keep, axes=None):
    """Batched NMS's offset trick: the boxes as they are (left) and shifted by class (right).

    Each box of class c is moved by c · (max coordinate + 1) along both axes, so boxes of
    different classes can no longer overlap and one NMS serves every class. Kept boxes (the
    indices ``keep``) are solid, suppressed ones dashed; each box is labelled with its score.
    Returns the two Axes.
    """
    boxes = _boxes(boxes)
    scores, idxs = to_numpy(scores).reshape(-1), to_numpy(idxs).reshape(-1).astype(np.int64)
    kept = np.zeros(len(boxes), dtype=bool)
    kept[to_numpy(keep).astype(np.int64)] = True
    if axes is None:
        import matplotlib.pyplot as plt

        _, axes = plt.subplots(1, 2, figsize=(9, 4), layout="constrained")
    offsets = idxs * (boxes.max() + 1)
    for ax, shifted, title in ((axes[0], boxes, "the boxes: classes overlap"),
                               (axes[1], boxes + offsets[:, None], "shifted by class · (max coordinate + 1)")):
        for (x1, y1, x2, y2), c, s, k in zip(shifted, idxs, scores, kept):
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=_class_colour(c + 1),
                                   linestyle="-" if k else "--", linewidth=2 if k else 1))
            ax.text(x1, y1, f"{s:.2f}", fontsize=7, color=_class_colour(c + 1), va="bottom")
        ax.set_xlim(shifted[:, 0].min() - 2, shifted[:, 2].max() + 2)
        ax.set_ylim(shifted[:, 3].max() + 2, shifted[:, 1].min() - 4)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)
    return axes


def draw_mask_rows(image, boxes, targets, predictions, pasted, labels=None, class_names=None, axes=None):
    """One row per RoI: its crop of the image, its M×M mask target, the M×M prediction, and the
    prediction pasted into the image; returns the (K, 4) array of Axes.

    ``boxes`` (K, 4) are the RoIs; ``targets`` and ``predictions`` (K, M, M) probabilities in
    [0, 1] (the targets are soft: RoIAlign averages the 0/1 ground truth at the mask's edges);
    ``pasted`` (K, H, W) or (K, 1, H, W) the pasted probabilities. The crop and the pasted column
    show the box's region with a small margin; the pasted mask is tinted in its class colour and
    its 0.5 contour drawn, where it is cut from the probabilities.
    """
    rgb = as_rgb(image)
    height, width = rgb.shape[:2]
    boxes = _boxes(boxes)
    targets, predictions = to_numpy(targets), to_numpy(predictions)
    pasted = to_numpy(pasted).reshape(len(boxes), height, width) if len(boxes) else np.zeros((0, height, width))
    if targets.shape != predictions.shape or targets.ndim != 3 or len(targets) != len(boxes):
        raise ValueError(f"targets {targets.shape} and predictions {predictions.shape} must both be (K, M, M) "
                         f"with K = {len(boxes)} boxes")
    labels = np.ones(len(boxes), dtype=np.int64) if labels is None else to_numpy(labels).astype(np.int64)
    if axes is None:
        import matplotlib.pyplot as plt

        _, axes = plt.subplots(len(boxes), 4, figsize=(8, 2 * len(boxes)), layout="constrained", squeeze=False)
    columns = ("image crop", f"target {targets.shape[1]}×{targets.shape[2]}", "prediction", "pasted")
    for k, ((x1, y1, x2, y2), row) in enumerate(zip(boxes, axes)):
        margin = 0.15 * max(x2 - x1, y2 - y1)
        view = (max(x1 - margin, 0), min(x2 + margin, width), min(y2 + margin, height), max(y1 - margin, 0))
        colour = _class_colour(labels[k])
        row[0].imshow(rgb, extent=(0, width, height, 0), interpolation="nearest")
        row[0].add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.5))
        for ax, grid in ((row[1], targets[k]), (row[2], predictions[k])):
            ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        tinted = rgb * (1 - 0.5 * pasted[k][..., None]) + 0.5 * pasted[k][..., None] * colour
        row[3].imshow(tinted, extent=(0, width, height, 0), interpolation="nearest")
        if pasted[k].max() > 0.5 > pasted[k].min():
            row[3].contour(np.arange(width) + 0.5, np.arange(height) + 0.5, pasted[k], levels=[0.5],
                           colors=[colour], linewidths=1.0)
        for j, ax in enumerate(row):
            if j in (0, 3):
                ax.set_xlim(view[0], view[1])
                ax.set_ylim(view[2], view[3])
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_title(columns[j], fontsize=9)
        name = _class_name(labels[k], class_names)
        row[0].set_ylabel(name if name is not None else f"RoI {k}", fontsize=8)
    return axes


def _grid_of_numbers(ax, values, title, shade=None, cmap="Greys", fmt="{:.1f}", fontsize=7):
    """Draw a small 2-D array as a grid of cells with its values written in; ``shade`` colours the cells."""
    height, width = values.shape
    shade = np.zeros_like(values) if shade is None else shade
    ax.imshow(shade, cmap=cmap, vmin=0, vmax=max(float(np.abs(shade).max()), 1e-12) * 2.5,  # light: text reads
              extent=(0, width, height, 0), interpolation="nearest")
    for (i, j), v in np.ndenumerate(values):
        ax.text(j + 0.5, i + 0.5, fmt.format(v) if v else "0", ha="center", va="center", fontsize=fontsize)
    ax.set_xticks(np.arange(width + 1), minor=False)
    ax.set_yticks(np.arange(height + 1), minor=False)
    ax.tick_params(length=0, labelbottom=False, labelleft=False)
    ax.grid(True, color="#999999", linewidth=0.5)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_title(title, fontsize=9)


def draw_max_pool_routing(x, grad_output, grad_input, kernel_size, stride, axes=None):
    """Max pooling forward and backward on one (H, W) plane, in three panels; returns the Axes.

    Left: the input with every pooling window outlined in its own colour and the window's
    maximum circled (the first of equal maxima, as torch). Middle: the upstream gradient, one
    value per window. Right: ``grad_input``, which the caller computed by backward: each
    window's gradient lands on its maximum, and an input that wins several overlapping windows
    receives their sum. No padding or dilation.
    """
    x, g, dx = (to_numpy(a).astype(np.float64) for a in (x, grad_output, grad_input))
    if x.ndim != 2 or dx.shape != x.shape or g.ndim != 2:
        raise ValueError(f"x {x.shape}, grad_output {g.shape}, grad_input {dx.shape}: expected 2-D planes, "
                         "grad_input shaped like x")
    (kh, kw), (sh, sw) = (k if isinstance(k, (tuple, list)) else (k, k) for k in (kernel_size, stride))
    oh, ow = (x.shape[0] - kh) // sh + 1, (x.shape[1] - kw) // sw + 1
    if g.shape != (oh, ow):
        raise ValueError(f"grad_output has shape {g.shape}, but a {kh}×{kw} window with stride {sh}×{sw} over "
                         f"{x.shape} gives {(oh, ow)} outputs")
    if axes is None:
        import matplotlib.pyplot as plt

        _, axes = plt.subplots(1, 3, figsize=(9, 3.2), layout="constrained",
                               gridspec_kw={"width_ratios": [x.shape[1], ow + 1, x.shape[1]]})
    _grid_of_numbers(axes[0], x, f"input x: {kh}×{kw} windows, stride {sw}")
    _grid_of_numbers(axes[1], g, "upstream gradient dL/dy", shade=np.abs(g), cmap="Oranges")
    _grid_of_numbers(axes[2], dx, "dL/dx: routed to each maximum", shade=np.abs(dx), cmap="Oranges")
    for n, (i, j) in enumerate(np.ndindex(oh, ow)):
        colour = PALETTE[n % len(PALETTE)]
        inset = 0.06 + 0.05 * (n % 3)  # overlapping windows stay distinguishable
        top, left = i * sh, j * sw
        axes[0].add_patch(Rectangle((left + inset, top + inset), kw - 2 * inset, kh - 2 * inset, fill=False,
                                    edgecolor=colour, linewidth=1.6))
        a, b = np.unravel_index(np.argmax(x[top:top + kh, left:left + kw]), (kh, kw))
        axes[0].add_patch(matplotlib.patches.Circle((left + b + 0.5, top + a + 0.5), 0.36, fill=False,
                                                    edgecolor=colour, linewidth=1.6))
        axes[1].add_patch(Rectangle((j + 0.06, i + 0.06), 0.88, 0.88, fill=False, edgecolor=colour, linewidth=1.6))
    return axes


# ---------------------------------------------------------------------------------------------
# Chapters 5-7: boxes, anchors, the RPN
# ---------------------------------------------------------------------------------------------

def _outlines(boxes):
    """The (N, 4, 2) corner polygons of (N, 4) xyxy boxes, for a PolyCollection."""
    x1, y1, x2, y2 = boxes.T
    return np.stack([np.stack([x1, y1], 1), np.stack([x2, y1], 1), np.stack([x2, y2], 1),
                     np.stack([x1, y2], 1)], axis=1)


def blank_image(height, width, grey=0.96):
    """A plain light (3, height, width) image to draw boxes on when no photograph is needed."""
    return np.full((3, int(height), int(width)), float(grey))


def draw_box_groups(image, groups, ax=None, title=None, linewidth=1.5, filled=(), points=None, markersize=6):
    """Draw named groups of boxes over an image, one colour and legend entry per group; returns the Axes.

    ``groups``: a dict name → (N, 4) boxes (an empty group still gets its legend entry, "(0)").
    Groups named in ``filled`` are also tinted inside (e.g. the intersection of two boxes).
    ``points``: a dict name → (N, 2) (x, y) points (anchor centres), drawn as dots with their
    own colours after the boxes', ``markersize`` points across (one number, or one per group).
    Names in the legend carry their counts.
    """
    rgb = as_rgb(image)
    height, width = rgb.shape[:2]
    points = {} if points is None else points
    unknown = set(filled) - set(groups)
    if unknown:
        raise ValueError(f"filled names {sorted(unknown)} are not groups; the groups are {list(groups)}")
    ax = _new_axes(ax, height, width)
    _show_image(ax, rgb)
    for k, (name, boxes) in enumerate(groups.items()):
        boxes = _boxes(np.reshape(to_numpy(boxes), (-1, 4)))
        colour = PALETTE[k % len(PALETTE)]
        outlines = _outlines(boxes)
        face = np.append(colour, 0.35) if name in filled else "none"
        ax.add_collection(PolyCollection(outlines, facecolors=face, edgecolors=colour, linewidths=linewidth,
                                         label=f"{name} ({len(boxes)})"))
    marker_sizes = np.broadcast_to(np.asarray(markersize, dtype=np.float64), (len(points),))
    for k, ((name, xy), size) in enumerate(zip(points.items(), marker_sizes), start=len(groups)):
        xy = to_numpy(xy).astype(np.float64).reshape(-1, 2)
        ax.plot(xy[:, 0], xy[:, 1], "o", color=PALETTE[k % len(PALETTE)], markersize=size, linestyle="none",
                label=f"{name} ({len(xy)})")
    if groups or points:
        ax.legend(loc="upper right", fontsize=7, framealpha=0.8)
    if title is not None:
        ax.set_title(title, fontsize=9)
    return ax


def draw_matrix(matrix, ax=None, title=None, xlabel=None, ylabel=None, cmap="viridis", vmin=None, vmax=None,
                annotate=False, colorbar=True):
    """A 2-D array as a heat map (IoU matrices, objectness per grid cell); returns the Axes.

    ``annotate`` writes each value in its cell (for small matrices); ``vmin``/``vmax`` fix the
    colour scale (e.g. 0 and 1 for IoUs and probabilities, so that two maps compare).
    """
    matrix = to_numpy(matrix).astype(np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"matrix has shape {matrix.shape}: expected 2-D (rows, columns); "
                         "for a feature map (C, H, W) use draw_feature_map or pick one channel")
    ax = _new_axes(ax, *matrix.shape)
    shown = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    if colorbar:
        ax.figure.colorbar(shown, ax=ax, shrink=0.8)
    if annotate:
        middle = np.nanmean([np.nanmin(matrix), np.nanmax(matrix)]) if vmin is None or vmax is None else (vmin + vmax) / 2
        for (r, c), v in np.ndenumerate(matrix):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7, color="black" if v > middle else "white")
    ax.set_xlabel(xlabel or "")
    ax.set_ylabel(ylabel or "")
    if title is not None:
        ax.set_title(title, fontsize=9)
    return ax


# ---------------------------------------------------------------------------------------------
# Chapters 8-10: RoIAlign, the box head, the mask head
# ---------------------------------------------------------------------------------------------

def _draw_map(ax, feature, values, cmap="Greys"):
    """A 2-D map with pixel (i, j) centred at (x=j, y=i), as RoIAlign's coordinates put it."""
    feature = to_numpy(feature).astype(np.float64)
    if feature.ndim != 2:
        raise ValueError(f"feature has shape {feature.shape}: give one channel of one image, an (H, W) map")
    height, width = feature.shape
    ax.imshow(feature, cmap=cmap, extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="nearest",
              alpha=0.6)
    if values:
        for (i, j), v in np.ndenumerate(feature):
            ax.text(j, i, f"{v:g}", ha="center", va="center", fontsize=7, color="black")
    ax.set_xticks(range(width))
    ax.set_yticks(range(height))
    ax.tick_params(labelsize=7)
    ax.set_xlim(-1.2, width + 0.2)
    ax.set_ylim(height + 0.2, -1.2)
    return height, width


def draw_roi_align(feature, box, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False, ax=None,
                   values=False, title=None):
    """Where RoIAlign samples a map for one box; returns the Axes.

    ``feature`` is one (H, W) map, drawn with pixel centres at integer coordinates (RoIAlign's
    own convention), ``box`` (x1, y1, x2, y2) in image coordinates. The RoI as the samples see
    it (scaled, shifted by half a pixel when ``aligned``, at least one pixel wide when not) is
    outlined in blue, its bins dashed, and every sample point marked: a filled dot reads the
    map bilinearly, a hollow one lies more than a pixel outside and adds zero. ``values``
    writes each pixel's value. The sample positions come from
    ``tinymaskrcnn.kernels.roi_align.sample_coordinates``, the rule the kernels use.
    """
    from .kernels.roi_align import sample_coordinates

    ax = _new_axes(ax, 1, 1, width_inches=4.0)
    height, width = _draw_map(ax, feature, values)
    ph, pw = (output_size, output_size) if np.isscalar(output_size) else output_size
    x1, y1, x2, y2 = (np.float64(v) for v in box)
    rule = (np.float64(spatial_scale), int(sampling_ratio), bool(aligned))
    y0, h, ys = sample_coordinates(y1, y2, ph, *rule)
    x0, w, xs = sample_coordinates(x1, x2, pw, *rule)
    ax.add_patch(Rectangle((x0, y0), w, h, fill=False, edgecolor="#1f77b4", linewidth=2))
    for p in range(1, ph):
        ax.plot([x0, x0 + w], [y0 + p * h / ph] * 2, color="#1f77b4", linestyle="--", linewidth=0.8)
    for p in range(1, pw):
        ax.plot([x0 + p * w / pw] * 2, [y0, y0 + h], color="#1f77b4", linestyle="--", linewidth=0.8)
    gy, gx = np.meshgrid(ys.ravel(), xs.ravel(), indexing="ij")
    inside = (gy >= -1) & (gy <= height) & (gx >= -1) & (gx <= width)
    ax.scatter(gx[inside], gy[inside], s=14, color="#d62728", zorder=3)
    ax.scatter(gx[~inside], gy[~inside], s=14, facecolors="none", edgecolors="#d62728", zorder=3)
    grid = f"{ys.shape[1]}×{xs.shape[1]}"
    ax.set_title(title if title is not None else
                 f"aligned={aligned}, ratio {sampling_ratio}: {grid} a bin", fontsize=9)
    return ax


def draw_roi_pool(feature, box, output_size, spatial_scale=1.0, ax=None, values=False, title=None):
    """Which pixels RoIPool (Fast R-CNN) max-pools into each bin for one box; returns the Axes.

    RoIPool rounds the scaled box to whole pixels and splits it into bins of whole pixels
    (torchvision.ops.roi_pool's rule: bin p spans floor(p·s) .. ceil((p+1)·s) for a bin size s,
    so neighbouring bins may share a row). Each bin's pixels are tinted in turn; the exact box
    is dashed, so the quantisation shows as the gap between the two.
    """
    ax = _new_axes(ax, 1, 1, width_inches=4.0)
    height, width = _draw_map(ax, feature, values)
    ph, pw = (output_size, output_size) if np.isscalar(output_size) else output_size
    x1, y1, x2, y2 = (float(v) * spatial_scale for v in box)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="black", linestyle="--", linewidth=1.5))

    def bins(lo, hi, pooled, size):
        start, end = int(np.floor(lo + 0.5)), int(np.floor(hi + 0.5))  # round half away from zero (lo, hi ≥ 0)
        step = max(end - start + 1, 1) / pooled
        return [(min(max(int(np.floor(p * step)) + start, 0), size), min(max(int(np.ceil((p + 1) * step)) + start, 0), size))
                for p in range(pooled)]

    for py, (r0, r1) in enumerate(bins(y1, y2, ph, height)):
        for px, (c0, c1) in enumerate(bins(x1, x2, pw, width)):
            colour = PALETTE[(py * pw + px) % len(PALETTE)]
            ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, facecolor=colour, alpha=0.35,
                                   edgecolor=colour, linewidth=1.5))
    ax.set_title(title if title is not None else "RoIPool: the box rounded to whole pixels", fontsize=9)
    return ax


def _class_colour(label):
    """A class's colour (background, label 0, grey), the same in every chapter's picture."""
    return np.array([0.6, 0.6, 0.6]) if label <= 0 else PALETTE[(int(label) - 1) % len(PALETTE)]


def draw_roi_refinement(image, rois, labels, refined=None, class_names=None, ax=None, title=None):
    """Sampled RoIs coloured by their label, and where the box head moves them; returns the Axes.

    ``rois`` (K, 4) and ``labels`` (K,): background RoIs (label 0) are thin grey outlines, the
    others take their class's colour. With ``refined`` (K, 4), each foreground RoI also gets a
    dashed outline of its refined box and an arrow from its centre to the refined box's centre.
    A legend counts the RoIs of each label (``class_names[label]`` names it).
    """
    rgb = as_rgb(image)
    rois = _boxes(rois)
    labels = to_numpy(labels).reshape(-1).astype(np.int64)
    if len(labels) != len(rois):
        raise ValueError(f"labels has {len(labels)} entries but there are {len(rois)} RoIs")
    if refined is not None:
        refined = _boxes(refined)
        if refined.shape != rois.shape:
            raise ValueError(f"refined has shape {refined.shape}; it needs one box per RoI, {rois.shape}")
    ax = _new_axes(ax, *rgb.shape[:2])
    _show_image(ax, rgb)
    for label in np.unique(labels):  # background first, so the objects' RoIs are drawn on top
        idx = np.flatnonzero(labels == label)
        x1, y1, x2, y2 = rois[idx].T
        outlines = np.stack([np.stack(c, 1) for c in ((x1, y1), (x2, y1), (x2, y2), (x1, y2))], axis=1)
        name = "background" if label == 0 else (_class_name(label, class_names) or str(label))
        ax.add_collection(PolyCollection(outlines, facecolors="none", edgecolors=[_class_colour(label)],
                                         linewidths=0.5 if label == 0 else 1.2, label=f"{name} ({len(idx)})"))
        if refined is None or label == 0:
            continue
        for (a1, b1, a2, b2), (c1, d1, c2, d2) in zip(rois[idx], refined[idx]):
            ax.add_patch(Rectangle((c1, d1), c2 - c1, d2 - d1, fill=False, edgecolor=_class_colour(label),
                                   linestyle="--", linewidth=1.0))
            ax.annotate("", xy=((c1 + c2) / 2, (d1 + d2) / 2), xytext=((a1 + a2) / 2, (b1 + b2) / 2),
                        arrowprops=dict(arrowstyle="->", color="white", linewidth=1.0))
    ax.legend(loc="upper right", fontsize=7, framealpha=0.8)
    if title is not None:
        ax.set_title(title, fontsize=9)
    return ax


# ---------------------------------------------------------------------------------------------
# Chapter 13: a gallery of failures
# ---------------------------------------------------------------------------------------------

def draw_failure_gallery(failures, class_names=None, columns=3, margin=0.5, panel_inches=2.6):
    """One panel per failure, cropped around the ground-truth object; returns the Figure.

    Each failure is a dict with ``image`` (3, H, W), ``target`` (boxes, labels, masks), ``gt``
    (the object's index), ``prediction`` (boxes, labels, masks), ``det`` (the index of the
    detection that overlaps it best, or None), ``kind`` (e.g. "missed") and ``score`` (the
    number the failure was ranked by). The object's mask is outlined and its box drawn in green,
    the detection in red with its class; the crop adds ``margin`` times the box's size around it.
    """
    import matplotlib.pyplot as plt

    if not failures:
        raise ValueError("no failures to draw: the list is empty")
    rows = -(-len(failures) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(panel_inches * columns, panel_inches * rows),
                             layout="constrained", squeeze=False)
    for ax, failure in zip(axes.flat, failures):
        rgb = as_rgb(failure["image"])
        height, width = rgb.shape[:2]
        target, g, d = failure["target"], failure["gt"], failure["det"]
        x1, y1, x2, y2 = _boxes(target["boxes"])[g]
        pad_x, pad_y = margin * (x2 - x1), margin * (y2 - y1)
        _show_image(ax, rgb)
        ax.set_xlim(max(x1 - pad_x, 0), min(x2 + pad_x, width))
        ax.set_ylim(min(y2 + pad_y, height), max(y1 - pad_y, 0))
        centres_x, centres_y = np.arange(width) + 0.5, np.arange(height) + 0.5
        gt_mask = to_numpy(target["masks"])[g].astype(np.float32)
        ax.contour(centres_x, centres_y, gt_mask, levels=[0.5], colors=["#2ca02c"], linewidths=1.2)
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="#2ca02c", linewidth=1.5))
        title = f"{failure['kind']} ({failure['score']:.2f})\ntruth: {_class_name(to_numpy(target['labels'])[g], class_names)}"
        if d is not None:
            prediction = failure["prediction"]
            bx1, by1, bx2, by2 = _boxes(prediction["boxes"])[d]
            ax.add_patch(Rectangle((bx1, by1), bx2 - bx1, by2 - by1, fill=False, edgecolor="#d62728", linewidth=1.5))
            if prediction.get("masks") is not None:
                mask = to_numpy(prediction["masks"])[d].reshape(height, width).astype(np.float32)
                if 0 < (mask > 0.5).sum() < mask.size:
                    ax.contour(centres_x, centres_y, mask, levels=[0.5], colors=["#d62728"], linewidths=1.0)
            title += f", said: {_class_name(to_numpy(prediction['labels'])[d], class_names)}"
        ax.set_title(title, fontsize=8)
    for ax in axes.flat[len(failures):]:
        ax.set_axis_off()
    return fig


# ---------------------------------------------------------------------------------------------
# Chapter 15: GPU kernels
# ---------------------------------------------------------------------------------------------

def grid_stride_owner(total, blocks, threads):
    """Who computes each of ``total`` elements in a grid-stride loop over ``blocks`` × ``threads``
    threads: (thread, block, pass) arrays, where thread is ``cuda.grid(1)`` of the thread that
    does element e, and pass counts the loop's turns before it (0 for its first element)."""
    if blocks < 1 or threads < 1:
        raise ValueError(f"a launch needs at least one block of one thread, got {blocks} blocks of {threads}")
    e = np.arange(total)
    thread = e % (blocks * threads)
    return thread, thread // threads, e // (blocks * threads)


def draw_thread_layout(shape, blocks, threads, ax=None, title=None, labels=True):
    """Which thread of a grid-stride launch computes each element of an output of ``shape``;
    returns the Axes.

    The output (2-D to 4-D, e.g. RoIAlign's (K, C, ph, pw)) is flattened in C order, as the
    kernels number their elements; each (…, H, W) plane is one panel (panels of a 4-D output in
    rows of the first index). A cell's colour is its block, its number its thread
    (``cuda.grid(1)``), and cells a thread reaches on a later turn of the loop are paler.
    """
    shape = tuple(int(s) for s in shape)
    if not 2 <= len(shape) <= 4 or min(shape) < 1:
        raise ValueError(f"shape {shape}: give a 2-D to 4-D output shape with no empty axis")
    height, width = shape[-2:]
    rows, cols = (shape[0], shape[1]) if len(shape) == 4 else (1, shape[0] if len(shape) == 3 else 1)
    thread, block, turn = grid_stride_owner(int(np.prod(shape)), blocks, threads)
    colours = PALETTE[block % len(PALETTE)]
    colours = colours + (1 - colours) * (np.minimum(turn, 3) / 4)[:, None]  # paler on later turns
    # panels side by side with a one-cell gap (NaN, drawn white)
    mosaic = np.ones((rows * (height + 1) - 1, cols * (width + 1) - 1, 3))
    ax = _new_axes(ax, *mosaic.shape[:2])
    for plane in range(rows * cols):
        r, c = divmod(plane, cols)
        top, left = r * (height + 1), c * (width + 1)
        cells = slice(plane * height * width, (plane + 1) * height * width)
        mosaic[top:top + height, left:left + width] = colours[cells].reshape(height, width, 3)
        if labels:
            for (i, j), t in np.ndenumerate(thread[cells].reshape(height, width)):
                ax.text(left + j, top + i, str(t), ha="center", va="center", fontsize=7)
        if len(shape) > 2:
            name = f"k={r}, c={c}" if len(shape) == 4 else f"plane {c}"
            ax.text(left + (width - 1) / 2, top - 0.7, name, ha="center", va="bottom", fontsize=8)
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_ylim(mosaic.shape[0] - 0.5, -1.5)
    ax.set_axis_off()
    turns = int(turn.max()) + 1
    ax.set_title(title if title is not None else
                 f"{blocks} block(s) × {threads} threads over {int(np.prod(shape))} elements: "
                 f"{turns} turn(s) of the loop", fontsize=9)
    return ax


def unpack_mask_words(mask, n=None):
    """The (n, n) boolean matrix of NMS's 64-bit overlap words: entry (i, j) is bit j % 64 of
    word ``mask[i, j // 64]``, i.e. whether box i suppresses box j (boxes in score order)."""
    mask = np.asarray(to_numpy(mask))
    if mask.ndim != 2 or mask.dtype != np.uint64:
        raise ValueError(f"mask has shape {mask.shape} and dtype {mask.dtype}: expected the (n, n_blocks) uint64 "
                         "words of the NMS mask kernel")
    n = mask.shape[0] if n is None else int(n)
    bits = (mask[:, :, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    return bits.reshape(mask.shape[0], -1)[:n, :n].astype(bool)


def draw_nms_mask(mask, keep=None, ax=None, title=None, block=64):
    """The NMS overlap bits as a matrix, with the thread blocks that computed them; returns the Axes.

    Row i (box i in score order) shows the later boxes it suppresses. The 64 × 64 tiles are
    thread blocks (column block Q, row block R); the grey ones below the diagonal exit at once.
    ``keep`` (positions in score order) marks the boxes the gather keeps with a green bar.
    """
    bits = unpack_mask_words(mask)
    n = bits.shape[0]
    ax = _new_axes(ax, n, n, width_inches=4.5)
    ax.imshow(bits, cmap="Greys", vmin=0, vmax=1.6, interpolation="nearest",
              extent=(-0.5, n - 0.5, n - 0.5, -0.5))
    blocks = -(-n // block)
    for r in range(blocks):
        for q in range(blocks):
            x0, y0 = q * block - 0.5, r * block - 0.5
            w, h = min(block, n - q * block), min(block, n - r * block)
            if q < r:
                ax.add_patch(Rectangle((x0, y0), w, h, facecolor="#d0d0d0", edgecolor="none"))
            ax.add_patch(Rectangle((x0, y0), w, h, fill=False, edgecolor="#1f77b4", linewidth=1))
            if blocks > 1:
                ax.text(x0 + w / 2, y0 + h / 2, f"({q},{r})", ha="center", va="center", fontsize=8,
                        color="#1f77b4", alpha=0.8)
    if keep is not None:
        keep = np.asarray(to_numpy(keep), dtype=np.int64)
        ax.scatter(np.full(len(keep), -0.5 - n / 40), keep, marker="s", s=max(4, 600 / n), color="#2ca02c",
                   clip_on=False)
    ax.set_xlim(-0.5 - n / 20, n - 0.5)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlabel("box j (score order)", fontsize=8)
    ax.set_ylabel("box i", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(title if title is not None else f"{n} boxes, {blocks}×{blocks} blocks of {block} threads",
                 fontsize=9)
    return ax


def draw_atomic_adds(counts, boxes=(), ax=None, title=None):
    """How many threads add into each pixel of a gradient (an (H, W) map of counts); returns the Axes.

    Pixels with a count above one need atomic adds. ``boxes`` (x1, y1, x2, y2) are outlined in
    the map's coordinates (pixel centres at integers, as RoIAlign's samples see them).
    """
    counts = np.asarray(to_numpy(counts))
    if counts.ndim != 2:
        raise ValueError(f"counts has shape {counts.shape}: give one (H, W) map of counts")
    height, width = counts.shape
    ax = _new_axes(ax, height, width, width_inches=4.0)
    ax.imshow(counts, cmap="Oranges", vmin=0, vmax=max(int(counts.max()), 1) * 1.3, interpolation="nearest")
    for (i, j), v in np.ndenumerate(counts):
        if v:
            ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=7)
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="#1f77b4", linewidth=1.5))
    ax.set_xticks(range(width))
    ax.set_yticks(range(height))
    ax.tick_params(labelsize=7)
    ax.set_title(title if title is not None else
                 f"threads adding into each pixel: {int((counts > 1).sum())} pixels shared", fontsize=9)
    return ax
