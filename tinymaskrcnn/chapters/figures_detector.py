"""Figures of the detector chapters: groups of boxes and heat maps (chapters 5-7: boxes, anchors,
the RPN), where RoIAlign samples and RoIPool rounds (8), how batched NMS keeps classes apart and
the box head moves its RoIs (9), each RoI's mask target and prediction (10), and a gallery of
the model's failures (13).

As in ``tinymaskrcnn.visualize``, whose primitives draw them, each function takes optional Axes
and returns those it drew on; without them it makes a pyplot figure for the notebook to show.
"""
import numpy as np
from matplotlib.collections import PolyCollection
from matplotlib.patches import Rectangle

from ..core.backend import to_numpy
from ..ops.roi_align import sample_coordinates
from ..visualize import PALETTE, as_boxes, as_rgb, box_outlines, class_colour, class_name, new_axes, show_image


# ---------------------------------------------------------------------------------------------
# Chapters 5-7: boxes, anchors, the RPN
# ---------------------------------------------------------------------------------------------

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
    ax = new_axes(ax, height, width)
    show_image(ax, rgb)
    for k, (name, boxes) in enumerate(groups.items()):
        boxes = as_boxes(np.reshape(to_numpy(boxes), (-1, 4)))
        colour = PALETTE[k % len(PALETTE)]
        outlines = box_outlines(boxes)
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
    ax = new_axes(ax, *matrix.shape)
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
# Chapter 8: RoIAlign and RoIPool
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
    writes each pixel's value. The sample positions come from ``sample_coordinates``
    (``tinymaskrcnn.ops.roi_align``), the rule the kernels use.
    """
    ax = new_axes(ax, 1, 1, width_inches=4.0)
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
    ax = new_axes(ax, 1, 1, width_inches=4.0)
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


# ---------------------------------------------------------------------------------------------
# Chapters 9-10: the box head, the mask head
# ---------------------------------------------------------------------------------------------

def draw_batched_nms(boxes, scores, idxs, keep, axes=None):
    """Batched NMS's offset trick: the boxes as they are (left) and shifted by class (right).

    Each box of class c is moved by c · (max coordinate + 1) along both axes, so boxes of
    different classes can no longer overlap and one NMS serves every class. Kept boxes (the
    indices ``keep``) are solid, suppressed ones dashed; each box is labelled with its score.
    Returns the two Axes.
    """
    boxes = as_boxes(boxes)
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
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=class_colour(c + 1),
                                   linestyle="-" if k else "--", linewidth=2 if k else 1))
            ax.text(x1, y1, f"{s:.2f}", fontsize=7, color=class_colour(c + 1), va="bottom")
        ax.set_xlim(shifted[:, 0].min() - 2, shifted[:, 2].max() + 2)
        ax.set_ylim(shifted[:, 3].max() + 2, shifted[:, 1].min() - 4)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)
    return axes


def draw_roi_refinement(image, rois, labels, refined=None, class_names=None, ax=None, title=None):
    """Sampled RoIs coloured by their label, and where the box head moves them; returns the Axes.

    ``rois`` (K, 4) and ``labels`` (K,): background RoIs (label 0) are thin grey outlines, the
    others take their class's colour. With ``refined`` (K, 4), each foreground RoI also gets a
    dashed outline of its refined box and an arrow from its centre to the refined box's centre.
    A legend counts the RoIs of each label (``class_names[label]`` names it).
    """
    rgb = as_rgb(image)
    rois = as_boxes(rois)
    labels = to_numpy(labels).reshape(-1).astype(np.int64)
    if len(labels) != len(rois):
        raise ValueError(f"labels has {len(labels)} entries but there are {len(rois)} RoIs")
    if refined is not None:
        refined = as_boxes(refined)
        if refined.shape != rois.shape:
            raise ValueError(f"refined has shape {refined.shape}; it needs one box per RoI, {rois.shape}")
    ax = new_axes(ax, *rgb.shape[:2])
    show_image(ax, rgb)
    for label in np.unique(labels):  # background first, so the objects' RoIs are drawn on top
        idx = np.flatnonzero(labels == label)
        name = "background" if label == 0 else (class_name(label, class_names) or str(label))
        ax.add_collection(PolyCollection(box_outlines(rois[idx]), facecolors="none",
                                         edgecolors=[class_colour(label)], linewidths=0.5 if label == 0 else 1.2,
                                         label=f"{name} ({len(idx)})"))
        if refined is None or label == 0:
            continue
        for (a1, b1, a2, b2), (c1, d1, c2, d2) in zip(rois[idx], refined[idx]):
            ax.add_patch(Rectangle((c1, d1), c2 - c1, d2 - d1, fill=False, edgecolor=class_colour(label),
                                   linestyle="--", linewidth=1.0))
            ax.annotate("", xy=((c1 + c2) / 2, (d1 + d2) / 2), xytext=((a1 + a2) / 2, (b1 + b2) / 2),
                        arrowprops=dict(arrowstyle="->", color="white", linewidth=1.0))
    ax.legend(loc="upper right", fontsize=7, framealpha=0.8)
    if title is not None:
        ax.set_title(title, fontsize=9)
    return ax


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
    boxes = as_boxes(boxes)
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
        colour = class_colour(labels[k])
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
        name = class_name(labels[k], class_names)
        row[0].set_ylabel(name if name is not None else f"RoI {k}", fontsize=8)
    return axes


# ---------------------------------------------------------------------------------------------
# Chapter 13: a gallery of failures
# ---------------------------------------------------------------------------------------------

def draw_failure_gallery(failures, class_names=None, columns=3, margin=0.5, panel_inches=2.6):
    """One panel per failure, cropped around the ground-truth object; returns the Figure.

    Each failure is a dict with ``image`` (3, H, W), ``target`` (boxes, labels, masks), ``gt``
    (the object's index), ``prediction`` (boxes, labels, masks), ``det`` (the index of the
    detection that overlaps it best, or None), ``kind`` (e.g. "missed") and ``score`` (the
    number the failure was ranked by). Each outline takes its class's colour (``class_colour``):
    the object's mask and box solid, the detection's dashed, so a wrong class shows as two
    colours; the crop adds ``margin`` times the box's size around it.
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
        x1, y1, x2, y2 = as_boxes(target["boxes"])[g]
        pad_x, pad_y = margin * (x2 - x1), margin * (y2 - y1)
        show_image(ax, rgb)
        ax.set_xlim(max(x1 - pad_x, 0), min(x2 + pad_x, width))
        ax.set_ylim(min(y2 + pad_y, height), max(y1 - pad_y, 0))
        centres_x, centres_y = np.arange(width) + 0.5, np.arange(height) + 0.5
        gt_mask = to_numpy(target["masks"])[g].astype(np.float32)
        truth = to_numpy(target["labels"])[g]
        ax.contour(centres_x, centres_y, gt_mask, levels=[0.5], colors=[class_colour(truth)], linewidths=1.2)
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=class_colour(truth), linewidth=1.5))
        title = f"{failure['kind']} ({failure['score']:.2f})\ntruth (solid): {class_name(truth, class_names)}"
        if d is not None:
            prediction = failure["prediction"]
            said = to_numpy(prediction["labels"])[d]
            bx1, by1, bx2, by2 = as_boxes(prediction["boxes"])[d]
            ax.add_patch(Rectangle((bx1, by1), bx2 - bx1, by2 - by1, fill=False, edgecolor=class_colour(said),
                                   linewidth=1.5, linestyle="--"))
            if prediction.get("masks") is not None:
                mask = to_numpy(prediction["masks"])[d].reshape(height, width).astype(np.float32)
                if 0 < (mask > 0.5).sum() < mask.size:
                    ax.contour(centres_x, centres_y, mask, levels=[0.5], colors=[class_colour(said)], linewidths=1.0,
                               linestyles="--")
            title += f", said: {class_name(said, class_names)}"
        ax.set_title(title, fontsize=8)
    for ax in axes.flat[len(failures):]:
        ax.set_axis_off()
    return fig
