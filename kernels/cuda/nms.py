"""Greedy NMS on the GPU: overlap bit masks in parallel, then a sequential gather (torchvision's layout).

Greedy NMS (``kernels/nms.py``) visits boxes in score order and is sequential by nature: whether
box j survives depends on which earlier boxes survived. Its costly part is not: the IoU of every
pair. So the work is split in two kernels.

1. ``nms_mask_kernel``: the boxes, sorted by score, are cut into blocks of 64. Thread block
   (row block R, column block Q), with Q >= R, has 64 threads; it stages the 64 boxes of block Q
   in shared memory, and thread t compares box i = 64R + t with every box j of block Q that
   comes after it, setting bit j - 64Q of a 64-bit word when IoU(i, j) > threshold. The words
   form a matrix mask (n, n_blocks): row i says which later boxes box i suppresses.
2. ``nms_gather_kernel``: one thread block walks the boxes in order, keeping box i unless its bit
   is set in the running ``removed`` words, and when it keeps it, ORs row i of the mask into
   ``removed`` (its threads share the words of the row). A barrier ends each step.

The IoU threshold: torchvision's CUDA kernel compares the IoU (in the boxes' dtype) with a
float32 threshold, its CPU kernel with a float64 one; they disagree on an IoU that equals
float32(threshold), e.g. 0.3f > 0.3 on the CPU but not 0.3f > 0.3f. Here the comparison is the
CPU kernel's (the IoU in the boxes' dtype, the threshold a float64), so the GPU and CPU paths of
this project keep the same boxes. The IoU itself has no multiply-add to fuse (areas, then
intersection, then one division), so it is bit-identical to the CPU kernel's.
"""
import numpy as np
from numba import cuda, int64, uint64

from .. import array_module
from . import device_array, kernel_args, stream_for

BLOCK = 64  # boxes per block: one bit of a 64-bit word each
GATHER_THREADS = 64


@cuda.jit(device=True)
def _iou(a, b):
    """IoU of two (4,) xyxy boxes, in their dtype, as the CPU kernel computes it (0/0 is NaN)."""
    zero = type(a[0])(0)
    w = max(zero, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(zero, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@cuda.jit
def nms_mask_kernel(boxes, categories, threshold, mask):
    """Thread layout: a 2-D grid of blocks (column block, row block) of 64 threads; thread t of
    block (Q, R) owns box 64R + t and word mask[64R + t, Q]. Blocks below the diagonal exit.
    A box suppresses only boxes of its own category (all 0 for plain NMS)."""
    n = boxes.shape[0]
    col_block, row_block = cuda.blockIdx.x, cuda.blockIdx.y
    if row_block > col_block:
        return
    t = cuda.threadIdx.x
    tile = cuda.shared.array((BLOCK, 4), dtype=boxes.dtype)
    tile_categories = cuda.shared.array(BLOCK, dtype=int64)
    j0 = col_block * BLOCK
    cols = min(n - j0, BLOCK)
    if t < cols:
        for d in range(4):
            tile[t, d] = boxes[j0 + t, d]
        tile_categories[t] = categories[j0 + t]
    cuda.syncthreads()
    i = row_block * BLOCK + t
    if i >= n:
        return
    bits = uint64(0)
    for j in range(t + 1 if row_block == col_block else 0, cols):  # only boxes after i
        if categories[i] == tile_categories[j] and _iou(boxes[i], tile[j]) > threshold:
            bits |= uint64(1) << uint64(j)
    mask[i, col_block] = bits


@cuda.jit
def nms_gather_kernel(mask, removed, keep):
    """Thread layout: one block; thread t owns the words removed[t], removed[t + blockDim], ...
    Every thread reads box i's bit, so all take the same branch; the barrier orders the steps."""
    n, n_blocks = mask.shape
    t, threads = cuda.threadIdx.x, cuda.blockDim.x
    for i in range(n):
        word = i // BLOCK
        # bit i is never set by step i itself (a row holds only later boxes), so reading the
        # word while its owner ORs into it is safe
        if (removed[word] >> uint64(i % BLOCK)) & uint64(1) == uint64(0):
            if t == 0:
                keep[i] = 1
            for q in range(word + t, n_blocks, threads):
                removed[q] |= mask[i, q]
        cuda.syncthreads()


def nms(boxes, scores, iou_threshold, categories=None):
    """Indices (int64) kept by greedy NMS, highest score first; stable order among equal scores.
    With ``categories`` (N,) integers, boxes of different categories never suppress each other:
    NMS per category in one launch (what ops/boxes.py's batched_nms does on the CPU with one
    NMS per category), with no round trip to the host per category."""
    xp = array_module(boxes)
    n = boxes.shape[0]
    order = xp.argsort(-scores, kind="stable")
    if n == 0:
        return order.astype(np.int64)
    sorted_boxes = device_array(boxes[order])
    sorted_categories = xp.zeros(n, np.int64) if categories is None else device_array(categories[order].astype(np.int64))
    n_blocks = -(-n // BLOCK)
    mask = xp.zeros((n, n_blocks), np.uint64)
    removed = xp.zeros(n_blocks, np.uint64)
    keep = xp.zeros(n, np.uint8)
    stream = stream_for(sorted_boxes)
    nms_mask_kernel[(n_blocks, n_blocks), BLOCK, stream](*kernel_args(sorted_boxes, sorted_categories,
                                                                      np.float64(iou_threshold), mask))
    nms_gather_kernel[1, min(GATHER_THREADS, n_blocks), stream](*kernel_args(mask, removed, keep))
    return order[xp.nonzero(keep)[0]].astype(np.int64)
