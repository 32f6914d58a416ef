# %% [markdown]
# # Chapter 15 — GPU kernels
#
# Every op of the model so far ran on NumPy arrays, with Numba CPU kernels for the loops that
# array code cannot express. On a GPU the same model code runs on CuPy arrays, and those loops
# become **Numba-CUDA kernels**: functions that thousands of GPU threads run at once, each on its
# own piece of the output. This chapter reads two of them beside their CPU twins and runs them:
#
# * `kernels/cuda/__init__.py`: how a launch is laid out (grids, blocks, grid-stride loops);
# * `kernels/cuda/roi_align.py`: RoIAlign, one thread per output bin, the backward with atomic adds;
# * `kernels/cuda/nms.py`: NMS, 64-bit overlap masks in parallel, then a sequential gather;
# * `tinymaskrcnn/core/backend.py`: how one op runs on NumPy or CuPy arrays (`get_array_module`);
# * `docs/gpu.md`: the whole GPU path, and how it is tested without a GPU.
#
# **No GPU is needed.** Numba's CUDA *simulator* runs each GPU thread as a Python thread on the
# CPU: slow (about 0.1 ms a thread, so every launch here stays at a few thousand threads), but
# it runs the kernels' own code, so their results can be held equal to the twins'.
#
# **Why the first line matters.** Numba reads `NUMBA_ENABLE_CUDASIM` once, when it is first
# imported, and `import tinymaskrcnn` imports numba (for the CPU kernels). So the variable is set
# before any other import; set later, it is silently ignored. A notebook runs in a fresh kernel,
# so this works here; in a script, set it in the shell (`NUMBA_ENABLE_CUDASIM=1 python ...`), as
# the project's simulator tests do. On a machine with an NVIDIA GPU, delete that line: the same
# cells then launch the kernels on the device. The simulator replaces only `numba.cuda`: the
# CPU kernels (`@njit`) compile and run as usual, as the checks below show.

# %%
import os

os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before numba is imported (see above); delete it on a GPU machine

import contextlib
import inspect

import matplotlib.pyplot as plt
import numpy as np

import tinymaskrcnn as tm
from tinymaskrcnn.core import backend
from tinymaskrcnn.functional import dispatch
from tinymaskrcnn.chapters import figures_gpu as figures
from tinymaskrcnn.chapters import exercise, quick, rejects
from tinymaskrcnn.kernels import nms as cpu_nms, roi_align as cpu_roi

plt.rcParams["figure.dpi"] = 72
rng = np.random.default_rng(0)


class ChapterSkipped(Exception):
    """Stops 'Run all' with only its message (IPython shows what _render_traceback_ returns)."""

    def _render_traceback_(self):
        return [f"Chapter skipped: {self}"]


try:
    from numba import config, cuda
except ImportError as e:
    raise ChapterSkipped(f"numba.cuda cannot be imported ({e}): pip install -e '.[dev]' installs numba-cuda")
if not cuda.is_available():  # True in the simulator, or with a GPU and its driver
    raise ChapterSkipped("numba.cuda finds no GPU and its simulator is off: run this chapter in a fresh kernel, "
                         "whose first line sets NUMBA_ENABLE_CUDASIM=1 before numba is imported")

from tinymaskrcnn.kernels import cuda as K  # noqa: E402 (after the check: it imports numba.cuda)
from tinymaskrcnn.kernels.cuda import nms as gpu_nms, roi_align as gpu_roi  # noqa: E402

print("CUDA simulator:", bool(config.ENABLE_CUDASIM))

# %% [markdown]
# ## Threads, blocks and a grid
#
# A kernel is launched as `kernel[blocks, threads](args)`: a **grid** of `blocks` thread blocks
# of `threads` threads each (a block's threads share fast memory and can wait for each other; the
# blocks cannot). Every thread runs the whole function and tells itself apart by its index,
# $e_0 = \text{blockIdx} \cdot \text{blockDim} + \text{threadIdx}$ (`cuda.grid(1)`). With
# $G = \text{blocks} \cdot \text{threads}$ threads in all (`cuda.gridsize(1)`), the kernels of
# this project loop **grid-stride**:
#
# $$\text{thread } e_0 \text{ computes elements } e_0,\; e_0 + G,\; e_0 + 2G,\; \dots < N .$$
#
# Each element $e$ is done exactly once, by thread $e \bmod G$ on turn $\lfloor e / G \rfloor$.
# So any grid gives the same result: on a GPU the launcher asks for one thread per element (up
# to 65535 blocks of 256), under the simulator for 2 blocks of 32 that loop many turns.

# %%
print(inspect.getsource(K.launch_config))
print(inspect.getsource(K.launch))
bins = 512 * 256 * 7 * 7  # RoIAlign of 512 RoIs, 256 channels, 7 × 7 bins
print(f"{bins} bins on a GPU: {-(-bins // K.THREADS)} blocks of {K.THREADS}; "
      f"in the simulator: {K.launch_config(bins)} (blocks, threads)")

# %% [markdown]
# RoIAlign's forward kernel has one thread per output bin $(k, c, p_y, p_x)$ of its
# $(K, C, p_h, p_w)$ output. The flat index $e$ is unravelled in C order,
# `px, py, c, k = e % PW, (e // PW) % PH, ...`, so neighbouring threads take neighbouring bins of
# the same channel. Drawn for 2 RoIs, 2 channels and 3 × 3 bins: a grid of 2 blocks of 8 threads
# must loop three turns; one block of 64 covers everything in one.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
figures.draw_thread_layout((2, 2, 3, 3), blocks=2, threads=8, ax=axes[0])
figures.draw_thread_layout((2, 2, 3, 3), blocks=1, threads=64, ax=axes[1])
plt.show()
plt.close(fig)

# %% [markdown]
# The picture is computed by `grid_stride_owner`, not by a kernel. A first kernel checks it:
# every thread writes its own index into each element it visits.

# %%
@cuda.jit
def who_computes(owner):
    for e in range(cuda.grid(1), owner.size, cuda.gridsize(1)):
        owner[e] = cuda.grid(1)


owner = np.full(36, -1)
who_computes[2, 8](owner)  # 2 blocks of 8 threads
print(owner.reshape(4, 9))
assert (owner == figures.grid_stride_owner(36, 2, 8)[0]).all()

# %% [markdown]
# ## RoIAlign forward: one thread per bin
#
# Chapter 8 derived RoIAlign: bin $(k, c, i, j)$ is the mean of bilinear reads at a
# $g_h \times g_w$ grid of samples,
# $\mathrm{out}_{kcij} = \frac{1}{g_h g_w} \sum_{s} f(b_k, c, y_s, x_s)$.
# The NumPy twin computes all bins of a RoI at once with array code; the CUDA kernel is the
# same sum written for **one** bin, run by as many threads as there are bins. No thread writes
# another's output, so they need no synchronisation. Note `T(0.0)`: a bare `0.0` is a float64,
# and on a GPU float32 arithmetic with it would run in (slow) float64.

# %%
print(inspect.getsource(gpu_roi.roi_align_forward_kernel))
print(inspect.getsource(cpu_roi.roi_align_forward_twin))

# %% [markdown]
# Three implementations, one process: the NumPy twin, the Numba CPU kernel (`@njit`, unaffected
# by the simulator) and the CUDA kernel (simulated). In float64 they agree to rounding; in
# float32 too, within float32's rounding. (The simulator does no fused multiply-add, so here
# they usually agree to the last bit; a GPU rounds $a b + c$ once, hence "to rounding".)

# %%
x64 = rng.standard_normal((2, 3, 7, 8))
rois64 = np.array([[0, 1.2, 0.5, 6.3, 5.1],    # [image, x1, y1, x2, y2]
                   [1, -1.5, 2.0, 4.0, 7.5],   # partly outside the map
                   [0, 3.0, 2.0, 5.5, 4.0]])

for dtype, rtol in [(np.float64, 1e-12), (np.float32, 1e-5)]:
    x, rois = x64.astype(dtype), rois64.astype(dtype)
    args = (x, rois, 3, 3, dtype(0.5), -1, True)  # 3 × 3 bins, spatial_scale 1/2, adaptive grid, aligned
    twin = cpu_roi.roi_align_forward_twin(*args)
    simulated = gpu_roi.roi_align_forward(*args)
    numba_cpu = cpu_roi.roi_align_forward(*args)
    np.testing.assert_allclose(simulated, twin, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(numba_cpu, twin, rtol=rtol, atol=rtol)
    assert simulated.dtype == dtype
    print(f"{np.dtype(dtype).name}: {simulated.size} bins, CUDA kernel vs twin max |diff| "
          f"{np.abs(simulated - twin).max():.1e}, Numba CPU vs twin {np.abs(numba_cpu - twin).max():.1e}")

# %% [markdown]
# ## RoIAlign backward: atomic adds
#
# The backward hands every sample's share back to the four pixels it read,
# $\partial L/\partial X_{b_k c y_t x_t} \mathrel{+}= \frac{w_{s,t}}{g_h g_w}\,\partial L/\partial \mathrm{out}_{kcij}$.
# With one thread per bin, neighbouring bins and overlapping RoIs add into the **same** pixel.
# A plain `+=` is read, add, write: two threads that read the same old value both write, and one
# addition is lost. `cuda.atomic.add` makes the three steps one indivisible step, as
# torchvision's CUDA kernel does. (The Numba CPU kernel avoids the race differently: each of its
# few threads owns whole (image, channel) planes of the gradient and loops over the RoIs.)
#
# The picture counts, for one channel, how many bins add into each pixel (from the twin: the
# backward of one bin at a time). Every pixel above 1 needs the atomic add.

# %%
print(inspect.getsource(gpu_roi.roi_align_backward_kernel))
print(inspect.getsource(cpu_roi.roi_align_backward_twin))

two_rois = np.array([[0, 0.8, 0.6, 4.2, 3.9], [0, 2.1, 1.4, 5.6, 4.8]])  # overlapping
counts = np.zeros((6, 7), int)
for k in range(2):
    for i in range(2):
        for j in range(2):
            g = np.zeros((2, 1, 2, 2))
            g[k, 0, i, j] = 1.0  # the gradient of one bin
            counts += cpu_roi.roi_align_backward_twin(g, two_rois, 1, 6, 7, 1.0, 2, False)[0, 0] != 0

fig, ax = plt.subplots(figsize=(5, 4), layout="constrained")
figures.draw_atomic_adds(counts, two_rois[:, 1:], ax=ax)
plt.show()
plt.close(fig)

# %% [markdown]
# Atomic adds arrive in whatever order the threads run, and floating-point addition is not
# associative, so on a GPU the gradient varies in its last bits from run to run: it equals the
# twin's to rounding, not bit for bit.

# %%
for dtype, rtol in [(np.float64, 1e-12), (np.float32, 1e-5)]:
    rois = rois64.astype(dtype)
    g = rng.standard_normal((3, 3, 3, 3)).astype(dtype)
    args = (g, rois, 2, 7, 8, dtype(0.5), -1, True)  # the input's (N, H, W) = (2, 7, 8), then the same rule
    twin = cpu_roi.roi_align_backward_twin(*args)
    simulated = gpu_roi.roi_align_backward(*args)
    np.testing.assert_allclose(simulated, twin, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(cpu_roi.roi_align_backward(*args), twin, rtol=rtol, atol=rtol)
    print(f"{np.dtype(dtype).name}: input gradient, CUDA kernel vs twin max |diff| "
          f"{np.abs(simulated - twin).max():.1e}")

# %% [markdown]
# ## NMS: 64-bit masks, then a sequential gather
#
# Greedy NMS (chapter 5) visits boxes in score order and keeps box $i$ unless a *kept* earlier
# box overlaps it by more than $\tau$. Which boxes are kept is sequential by nature: whether box
# $i$ survives depends on whether the boxes that could suppress it survived. But the costly part,
# the $n^2/2$ IoUs, is not. So the GPU kernel splits the work in two:
#
# 1. **Mask** (parallel): sort the boxes by score and cut them into blocks of 64. Thread block
#    $(Q, R)$ has 64 threads; thread $t$ compares box $i = 64R + t$ with the 64 boxes of block
#    $Q$ and packs the answers into one 64-bit word,
#    $$M_{i,Q} = \sum_{j=0}^{63} 2^j \,[\,\mathrm{IoU}(i, 64Q + j) > \tau \text{ and } 64Q + j > i\,].$$
#    Blocks below the diagonal ($Q < R$) would only compare with earlier boxes, so they exit.
#    (The kernel also takes each box's category and compares only boxes of the same one, so that
#    one launch does batched NMS; plain NMS gives every box category 0, as below.)
# 2. **Gather** (sequential): one block walks the boxes in order with a running word set
#    `removed` (one bit per box): box $i$ is kept unless bit $i \bmod 64$ of `removed[i // 64]`
#    is set, and a *kept* box ORs its row $M_{i,\cdot}$ into `removed`. One OR handles 64
#    boxes, so the sequential part is cheap.

# %%
print(inspect.getsource(gpu_nms.nms_mask_kernel))
print(inspect.getsource(gpu_nms.nms_gather_kernel))
print(inspect.getsource(cpu_nms.nms_twin))  # the twin: one kept box against all boxes at a time

# %% [markdown]
# ### A worked example
#
# Six boxes, threshold 0.5. Box F has the best score and overlaps nothing; A, B and C form a
# chain: IoU(A, B) = 81/119 = 0.68, IoU(B, C) = 80/120 = 0.67, but IoU(A, C) = 63/137 = 0.46;
# D and E overlap (0.68). We launch the mask kernel ourselves, one block of 64 threads (only six
# do any work), and print each row's word with bit $j$ at position $j$ from the left.

# %%
names = list("ABCDEF")
boxes6 = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [3, 1, 13, 11],
                   [20, 20, 30, 30], [21, 19, 31, 29], [40, 0, 44, 4]], np.float64)
scores6 = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.95])
order6 = np.argsort(-scores6, kind="stable")  # score order: F A B C D E
mask6 = np.zeros((6, 1), np.uint64)
one_category = np.zeros(6, np.int64)          # plain NMS: every box in category 0
gpu_nms.nms_mask_kernel[(1, 1), gpu_nms.BLOCK](np.ascontiguousarray(boxes6[order6]), one_category, np.float64(0.5),
                                               mask6)
for i, word in enumerate(mask6[:, 0]):
    bits = "".join(str(int(word >> np.uint64(j)) & 1) for j in range(6))
    print(f"row {i} (box {names[order6[i]]}): word {int(word):2d} = bits {bits}  suppresses "
          f"{[names[order6[j]] for j in range(6) if bits[j] == '1'] or '-'}")

# %% [markdown]
# Now the gather by hand. Position 0 (F) is kept; its word is 0. Position 1 (A) is kept and ORs
# in its word: `removed` = bit 2 (B). Position 2 (B) is removed, so **its** word is not ORed in:
# C, which only B overlaps enough, survives. Position 3 (C) is kept, position 4 (D) is kept and
# removes E at position 5. Kept: F, A, C, D. The twin says the same:

# %%
print([names[i] for i in cpu_nms.nms_twin(boxes6, scores6, 0.5)])
print([names[i] for i in gpu_nms.nms(boxes6, scores6, 0.5)])
assert list(gpu_nms.nms(boxes6, scores6, 0.5)) == list(cpu_nms.nms_twin(boxes6, scores6, 0.5)) == [5, 0, 2, 3]

# %% [markdown]
# With more boxes the words span several blocks. Below, clustered boxes: the mask as a matrix
# (row $i$: the later boxes box $i$ suppresses), the thread blocks that computed each tile, and
# the kept boxes marked green on the left.

# %%
def clustered_boxes(n, seed):
    r = np.random.default_rng(seed)
    centres = r.uniform(10, 90, (8, 2))[r.integers(0, 8, n)] + r.normal(0, 4, (n, 2))
    half = r.uniform(3, 10, (n, 2))
    return np.concatenate([centres - half, centres + half], 1), r.uniform(0, 1, n)


n = quick(150, 400)  # 150 boxes: 3 × 3 blocks of 64 threads, half of them exiting at once
boxes, scores = clustered_boxes(n, seed=1)
order = np.argsort(-scores, kind="stable")
n_blocks = -(-n // gpu_nms.BLOCK)
mask = np.zeros((n, n_blocks), np.uint64)
gpu_nms.nms_mask_kernel[(n_blocks, n_blocks), gpu_nms.BLOCK](np.ascontiguousarray(boxes[order]), np.zeros(n, np.int64),
                                                             np.float64(0.5), mask)
position = np.argsort(order)  # box index -> position in score order
keep = gpu_nms.nms(boxes, scores, 0.5)

fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), layout="constrained")
figures.draw_nms_mask(mask6, keep=np.argsort(order6)[gpu_nms.nms(boxes6, scores6, 0.5)], ax=axes[0],
                      title="the six boxes: one block")
figures.draw_nms_mask(mask, keep=position[keep], ax=axes[1])
plt.show()
plt.close(fig)
print(f"{n} boxes, {len(keep)} kept")

# %% [markdown]
# The CUDA kernel equals the twin and the Numba CPU kernel, keep lists identical, in both dtypes.
# One decision is documented in `docs/gpu.md`: torchvision's CUDA kernel compares the IoU with a
# *float32* threshold, its CPU kernel with a float64 one. They disagree when an IoU equals
# float32(0.3): 30/100 in float32 is 0.30000001192..., above 0.3 but not above 0.3f. Ours
# compares as the CPU kernel does on both devices, so the CPU and GPU paths keep the same boxes.

# %%
for dtype, threshold in [(np.float64, 0.5), (np.float32, 0.3)]:
    b, s = boxes.astype(dtype), scores.astype(dtype)
    twin = cpu_nms.nms_twin(b, s, threshold)
    np.testing.assert_array_equal(gpu_nms.nms(b, s, threshold), twin)
    np.testing.assert_array_equal(cpu_nms.nms(b, s, threshold), twin)
    print(f"{np.dtype(dtype).name}, threshold {threshold}: {len(twin)} of {n} kept, identical")

pair = np.array([[0, 0, 10, 10], [0, 0, 10, 3]], np.float32)  # IoU = 30/100
print("float32 IoU 30/100 > 0.3 (as float64):", np.float64(np.float32(30) / np.float32(100)) > 0.3,
      "| kept:", gpu_nms.nms(pair, np.array([1.0, 0.5], np.float32), 0.3))

# %% [markdown]
# ## The same model code on NumPy and CuPy
#
# CuPy copies NumPy's interface for arrays on the GPU: `cupy.zeros`, `cupy.exp`, `a @ b` (run by
# cuBLAS)... So model code never names numpy for array math: it asks its inputs for their module,
# `xp = get_array_module(x)`, and the same lines run on either. `box_iou` is an example:

# %%
print(inspect.getsource(backend.get_array_module))
print(inspect.getsource(tm.ops.box_iou))

# %% [markdown]
# What array code cannot express goes to a kernel, chosen in one table,
# `tinymaskrcnn/functional/dispatch.py`, which names for every kernel its Numba CPU version, its
# CUDA version and its NumPy twin. Each op asks it the same way,
# `kernel_for("roi_align_forward", input)(...)`, and gets the CUDA kernel for CuPy arrays, else
# the setting's: the Numba kernels by default, their twins under `tm.use_kernels("twins")` (or
# `TINYMASKRCNN_KERNELS=twins`). A family without a CUDA kernel (AdamW, frozen batch norm's
# affine map, the textbook convolution around the CUDA im2col) runs its twin, array code, on CuPy.

# %%
print(inspect.getsource(backend.uses_cuda_kernels))
print(inspect.getsource(dispatch.kernel_for))
print(dispatch.KERNELS["roi_align_forward"])

# %% [markdown]
# CuPy can be installed on a machine without a GPU (it imports fine) and fails only at the first
# allocation, with a misleading "insufficient driver" message. So the package asks
# `cupy.cuda.is_available()` first and gives one clear error instead. On a GPU machine (with the
# simulator line deleted) the cell below runs RoIAlign forward and backward on CuPy arrays and
# compares them with NumPy's.

# %%
try:
    import cupy
except ImportError:
    cupy = None
print("CuPy installed:", cupy is not None,
      "| cupy.cuda.is_available():", cupy is not None and cupy.cuda.is_available())
try:
    backend.to_device(x64, "cuda")
except backend.CUDAUnavailableError as e:
    print("to_device(x, 'cuda') ->", type(e).__name__ + ":", e)

if cupy is not None and cupy.cuda.is_available() and not config.ENABLE_CUDASIM:
    outputs = {}
    for device in ("cpu", "cuda"):
        x = tm.Tensor(backend.to_device(x64, device), requires_grad=True)
        out = tm.ops.roi_align(x, backend.to_device(rois64, device), 3, 0.5, -1, True)
        (out * out).sum().backward()
        outputs[device] = backend.to_numpy(out), backend.to_numpy(x.grad)
    for a, b in zip(outputs["cuda"], outputs["cpu"]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    print("roi_align on CuPy = on NumPy (float64, forward and backward)")
else:
    print("No usable GPU here: the CuPy comparison is skipped (the next cell runs the same CUDA kernels "
          "in the simulator).")

# %% [markdown]
# Without a GPU the project still sends whole layers through the CUDA kernels: the test-only
# switch `backend.simulate_cuda()` makes the ops treat NumPy arrays as if they were CuPy arrays,
# so they call the CUDA launchers, which the simulator runs. Below a tiny stack, a convolution
# (im2col, and col2im in its backward), max pooling and RoIAlign, runs forward and backward both
# ways in float64; the cell records which CUDA launchers ran. The project's tests do the same
# for a whole tiny Mask R-CNN (`tests/cuda_sim/sim_model.py`).

# %%
from tinymaskrcnn.kernels.cuda import im2col as cuda_im2col, pool as cuda_pool  # noqa: E402


@contextlib.contextmanager
def recording_launches(calls):
    """Wrap the CUDA launchers so that each call appends its name to ``calls``."""
    launchers = [(cuda_im2col, "im2col"), (cuda_im2col, "col2im"), (cuda_pool, "max_pool2d_forward"),
                 (cuda_pool, "max_pool2d_backward"), (gpu_roi, "roi_align_forward"),
                 (gpu_roi, "roi_align_backward")]
    originals = [getattr(module, name) for module, name in launchers]
    for (module, name), f in zip(launchers, originals):
        setattr(module, name, lambda *a, _f=f, _n=name, **k: calls.append(_n) or _f(*a, **k))
    try:
        yield
    finally:
        for (module, name), f in zip(launchers, originals):
            setattr(module, name, f)


tm.random.manual_seed(0)
conv = tm.nn.Conv2d(2, 3, 3, padding=1).to(dtype=np.float64)
pool = tm.nn.MaxPool2d(2)
image = rng.standard_normal((1, 2, 8, 8))
boxes_on_map = np.array([[0, 0.5, 0.3, 2.9, 3.2], [0, 1.1, 0.0, 3.6, 2.4]])


def forward_backward():
    conv.zero_grad()
    x = tm.Tensor(image, requires_grad=True)
    out = tm.ops.roi_align(pool(conv(x)), boxes_on_map, 2, sampling_ratio=2)
    (out * out).sum().backward()
    return [out.data, x.grad, conv.weight.grad, conv.bias.grad]


if config.ENABLE_CUDASIM:  # simulate_cuda refuses to run without the simulator
    cpu_results = forward_backward()
    calls = []
    previous = backend.simulate_cuda(True)
    try:
        with recording_launches(calls):
            cuda_results = forward_backward()
    finally:
        backend.simulate_cuda(previous)
    print("CUDA launchers that ran:", calls)
    for name, a, b in zip(["output", "input grad", "weight grad", "bias grad"], cuda_results, cpu_results):
        err = np.abs(a - b).max() / np.abs(b).max()
        print(f"{name:12s} relative error {err:.1e}")
        assert err < 1e-12, name
    assert set(calls) == {"im2col", "col2im", "max_pool2d_forward", "max_pool2d_backward", "roi_align_forward",
                          "roi_align_backward"}
else:
    print("On a GPU the cell above compared real CuPy arrays instead; simulate_cuda is for the simulator.")

# %% [markdown]
# On a real GPU three things differ from the simulator, and the project checks each elsewhere:
# multiply-adds are fused (results equal to rounding, not bit for bit), atomic adds arrive in any
# order, and the real compiler rejects some code the simulator runs (every kernel is compiled to
# PTX for sm_90 in `tests/test_cuda_kernels.py`, which also checks that float32 kernels do no
# float64 arithmetic). `docs/gpu.md` says how to install and measure on a GPU.
#
# ## Exercises
#
# ### Exercise 1 — the size of a grid
#
# Write `launch_grid(total, threads, max_blocks)`: the number of blocks for a grid-stride kernel
# over `total` elements, with `threads` threads a block. One thread per element where the cap
# allows (then no block is left without work), at most `max_blocks` blocks, and at least one.
# The check launches a kernel on your grid (in the simulator) that counts how often each element
# is visited and how many elements each thread does.

# %%
@cuda.jit
def visits(count, work):
    """count[e]: visits of element e; work[thread]: elements that thread did."""
    for e in range(cuda.grid(1), count.size, cuda.gridsize(1)):
        count[e] += 1
        work[cuda.grid(1)] += 1


@exercise
def check_launch_grid(launch_grid):
    for total, threads, max_blocks in [(100, 32, 65535), (5, 32, 65535), (64, 32, 65535), (1000, 32, 4)]:
        blocks = launch_grid(total, threads, max_blocks)
        assert isinstance(blocks, (int, np.integer)) and 1 <= blocks <= max_blocks, \
            f"launch_grid({total}, {threads}, {max_blocks}) = {blocks}: give an int between 1 and max_blocks"
        count, work = np.zeros(total, np.int64), np.zeros(blocks * threads, np.int64)
        visits[int(blocks), threads](count, work)
        assert (count == 1).all(), f"{total} elements on {blocks} blocks: an element was visited {count.max()} times"
        fewest_turns = -(-total // (max_blocks * threads))  # the cap may force several elements per thread
        assert work.max() == fewest_turns, \
            f"{total} elements on {blocks} blocks of {threads}: a thread did {work.max()} elements; " \
            f"{fewest_turns} is possible"
        assert work.reshape(blocks, threads).sum(axis=1).min() > 0, \
            f"{total} elements on {blocks} blocks of {threads}: a whole block had nothing to do"


def my_launch_grid(total, threads, max_blocks):
    raise NotImplementedError  # your code


check_launch_grid(my_launch_grid)

# %% [solution]
def solution_launch_grid(total, threads, max_blocks):
    return max(1, min(max_blocks, -(-total // threads)))  # ceil(total / threads), capped


assert check_launch_grid(solution_launch_grid)
assert rejects(check_launch_grid, lambda total, threads, max_blocks: max(1, min(max_blocks, total // threads)))

# %% [markdown]
# ### Exercise 2 — the gather of NMS
#
# Write `gather(mask)`: given the `(n, n_blocks)` uint64 words of the mask kernel (boxes in
# score order), return the positions of the kept boxes, in order, as the gather kernel does (in
# plain Python: the bits of a word `w` are `(int(w) >> j) & 1`). The check runs the mask kernel
# on random boxes and compares your answer, mapped back to box indices, with the NumPy twin's
# greedy NMS, which never builds a mask.

# %%
@exercise
def check_gather(gather):
    for n, seed in [(6, None), (40, 2), (100, 3)]:
        b, s = (boxes6, scores6) if seed is None else clustered_boxes(n, seed)
        order = np.argsort(-s, kind="stable")
        words = np.zeros((n, -(-n // 64)), np.uint64)
        gpu_nms.nms_mask_kernel[(words.shape[1], words.shape[1]), 64](np.ascontiguousarray(b[order]),
                                                                      np.zeros(n, np.int64), np.float64(0.5), words)
        expected = cpu_nms.nms_twin(b, s, 0.5)
        mine = order[np.asarray(gather(words), dtype=np.int64)]
        assert list(mine) == list(expected), \
            f"{n} boxes: you keep {len(mine)} boxes, greedy NMS keeps {len(expected)}" + \
            (" (a suppressed box must not suppress others)" if len(mine) < len(expected) else "")


def my_gather(mask):
    raise NotImplementedError  # your code


check_gather(my_gather)

# %% [solution]
def solution_gather(mask):
    n = mask.shape[0]
    removed = [0] * mask.shape[1]  # one bit per box, 64 a word
    keep = []
    for i in range(n):
        if (removed[i // 64] >> (i % 64)) & 1:
            continue  # suppressed by a kept box: skip it, and its row
        keep.append(i)
        for q in range(mask.shape[1]):
            removed[q] |= int(mask[i, q])
    return keep


def wrong_gather(mask):  # ORs every row, suppressed boxes' too
    removed, keep = [0] * mask.shape[1], []
    for i in range(mask.shape[0]):
        if not (removed[i // 64] >> (i % 64)) & 1:
            keep.append(i)
        for q in range(mask.shape[1]):
            removed[q] |= int(mask[i, q])
    return keep


assert check_gather(solution_gather)
assert rejects(check_gather, wrong_gather)

# %% [markdown]
# ## Questions to answer in words
#
# Answer each in a few sentences before opening the answer.
#
# **Question 1.** Why does RoIAlign's backward need atomic adds when its forward does not?
#
# <details><summary>Answer</summary>
#
# In the forward each thread computes one output bin and writes only that. In the backward each bin scatters its gradient to the four pixels around each of its sample points, and neighbouring bins (and overlapping RoIs) hit the same pixels: without atomics two threads would read, add and write the same value at once and lose one addition. Atomic float additions also make the order, and so the last bits, vary from run to run.
#
# </details>
#
# **Question 2.** Why is NMS on the GPU split into a parallel mask computation and a sequential gather?
#
# <details><summary>Answer</summary>
#
# Whether a box survives depends on whether the boxes above it survived, so the decisions are inherently sequential. The expensive part, N² IoU comparisons, does not depend on them: it runs in parallel and stores one bit per pair (64 boxes to a word); the sequential pass then only walks N boxes and ORs bit masks.
#
# </details>
