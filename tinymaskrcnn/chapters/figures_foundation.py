"""Figures of the foundation chapters: the graph the tape recorded (chapter 1), which input
window becomes which im2col column (chapter 2), what a normaliser leaves of each channel's statistics and where max pooling routes its
gradient (chapter 3).

As in ``tinymaskrcnn.visualize``, whose primitives draw them, each function takes optional Axes
and returns those it drew on; without them it makes a pyplot figure for the notebook to show.
"""
import numpy as np
from matplotlib.patches import Circle, Rectangle

from ..core.backend import to_numpy
from ..visualize import PALETTE, new_axes


# ---------------------------------------------------------------------------------------------
# Both chapters: a small array as a grid of numbers
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Chapter 1: the tape's graph
# ---------------------------------------------------------------------------------------------

def draw_tape(order, names=None, ax=None, title=None):
    """The graph a tape recorded, leaves on the left and the output on the right; returns the Axes.

    ``order`` is ``topological_order(output._node)`` (every node after its inputs), ``names`` an
    optional dict id(node) -> label for the leaves. A node's column is its depth (the longest
    path from a leaf), so each arrow, input -> the Function that consumed it, points rightwards;
    backward walks the same arrows from right to left.
    """
    names = {} if names is None else names
    depth, rows = {}, {}
    for node in order:
        inputs = [i for i in (node.fn.inputs if node.fn is not None else ()) if i is not None]
        depth[id(node)] = 1 + max((depth[id(i)] for i in inputs), default=-1)
        rows.setdefault(depth[id(node)], []).append(node)
    place = {id(n): (d, k - (len(column) - 1) / 2) for d, column in rows.items() for k, n in enumerate(column)}
    heights = [len(c) for c in rows.values()]
    ax = new_axes(ax, max(heights) + 0.6, 1.6 * len(rows), width_inches=1.8 * len(rows))
    for node in order:
        x, y = place[id(node)]
        for i in (node.fn.inputs if node.fn is not None else ()):
            if i is not None:
                ax.annotate("", xy=(x - 0.3, y), xytext=(place[id(i)][0] + 0.3, place[id(i)][1]),
                            arrowprops=dict(arrowstyle="->", color="#555555"))
        is_leaf = node.fn is None
        label = names.get(id(node), "leaf") if is_leaf else type(node.fn).__name__
        ax.text(x, y, f"{label}\nshape {tuple(node.shape)}", ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round", facecolor=PALETTE[2 if is_leaf else 0], alpha=0.25))
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylim(max(heights) / 2 + 0.2, -max(heights) / 2 - 0.2)
    ax.set_axis_off()
    ax.set_title(title if title is not None else "the tape: leaves (green) to the output", fontsize=9)
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
    ax = new_axes(ax, 3.2, 4.5, width_inches=4.5)
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
        axes[0].add_patch(Circle((left + b + 0.5, top + a + 0.5), 0.36, fill=False, edgecolor=colour,
                                 linewidth=1.6))
        axes[1].add_patch(Rectangle((j + 0.06, i + 0.06), 0.88, 0.88, fill=False, edgecolor=colour, linewidth=1.6))
    return axes
