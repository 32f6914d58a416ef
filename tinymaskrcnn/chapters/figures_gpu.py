"""Figures of the GPU chapter (15): which thread of a grid-stride launch computes which element,
the bits of the NMS mask kernel and the thread blocks that computed them, and the pixels of a
gradient that several threads add into (where atomics are needed).

As in ``tinymaskrcnn.visualize``, whose primitives draw them, each function takes optional Axes
and returns those it drew on; without them it makes a pyplot figure for the notebook to show.
"""
import numpy as np
from matplotlib.patches import Rectangle

from ..core.backend import to_numpy
from ..visualize import PALETTE, new_axes


# ---------------------------------------------------------------------------------------------
# Who computes what: the grid-stride loop
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
    ax = new_axes(ax, *mosaic.shape[:2])
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


# ---------------------------------------------------------------------------------------------
# NMS's overlap bits and the atomic adds of a backward pass
# ---------------------------------------------------------------------------------------------

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
    ax = new_axes(ax, n, n, width_inches=4.5)
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
    ax = new_axes(ax, height, width, width_inches=4.0)
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
