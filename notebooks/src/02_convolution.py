# %% [markdown]
# # Chapter 2 — Convolution: loops → im2col → kernels
#
# Nearly all of Mask R-CNN's arithmetic is convolution. This chapter writes it three times, each
# version checked against the one before:
#
# 1. **loops** — the definition, in ten lines you can read at a glance, far too slow to train with;
# 2. **im2col** — the package's textbook convolution, `tinymaskrcnn/functional/conv_textbook.py`: copy
#    every window the kernel sees into one column of a matrix, and the convolution becomes one
#    matrix product, which BLAS runs near the processor's peak; its backward is two more products
#    and `col2im`, im2col's adjoint;
# 3. **kernels** — the fast path the package runs, `tinymaskrcnn/functional/conv.py` with the Numba
#    kernels of `kernels/im2col.py` (and Winograd's algorithm for 3×3 convolutions): the same
#    numbers, laid out so that every copy is contiguous and every product fits in a cache.
#
# On the way: hand-set Sobel filters find the edges of a shapes image, a picture shows which
# input window becomes which im2col column, and a timing table shows why the kernels exist.

# %%
import inspect
import time

import matplotlib.pyplot as plt
import numpy as np

import tinymaskrcnn as tm
import tinymaskrcnn.functional as F
from tinymaskrcnn.chapters import figures_foundation as figures
from tinymaskrcnn.chapters import exercise, quick, reference, rejects
from tinymaskrcnn.data.shapes import draw_scene
from tinymaskrcnn.core.gradcheck import gradcheck, rel_error
from tinymaskrcnn.kernels import im2col as kernels
from tinymaskrcnn.functional import conv_textbook
from tinymaskrcnn.core.threads import single_threaded_blas

plt.rcParams["figure.dpi"] = 72
rng = np.random.default_rng(2)
torch = reference()

# %% [markdown]
# ## Convolution in loops
#
# A convolution layer slides a $C_{out}\times C\times k_h\times k_w$ kernel over a
# $C\times H\times W$ image (zero-padded by $p$) in steps of $s$ pixels:
#
# $$y[c_o, i, j] = b[c_o] + \sum_{c,\,k_i,\,k_j} w[c_o, c, k_i, k_j]\; x_{\text{pad}}[c,\ i s + k_i,\ j s + k_j],
#   \qquad H_o = \Big\lfloor \frac{H + 2p - k_h}{s} \Big\rfloor + 1 .$$
#
# (Strictly this is a cross-correlation — the kernel is not flipped — as in every deep-learning
# library; a learnt kernel does not care.) One output position at a time, all images and
# output channels at once:

# %%
def loop_conv2d(x, w, b, stride=1, padding=0):
    """y[n, co, i, j] = b[co] + sum over (c, ki, kj) of w[co, c, ki, kj] * xpad[n, c, i*s + ki, j*s + kj]."""
    n, c, h, wd = x.shape
    cout, _, kh, kw = w.shape
    xpad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho, wo = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    y = np.empty((n, cout, ho, wo))
    for i in range(ho):
        for j in range(wo):
            window = xpad[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]   # (N, C, kh, kw)
            y[:, :, i, j] = np.tensordot(window, w, axes=([1, 2, 3], [1, 2, 3])) + b
    return y


x = rng.standard_normal((2, 3, 9, 8))
w = rng.standard_normal((4, 3, 3, 3))
b = rng.standard_normal(4)
y_loop = loop_conv2d(x, w, b, stride=2, padding=1)
print("x", x.shape, "* w", w.shape, "stride 2, padding 1 ->", y_loop.shape)
if torch is not None:
    y_torch = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), stride=2, padding=1)
    assert rel_error(y_loop, y_torch.numpy()) < 1e-14
    print("= torch.nn.functional.conv2d")

# %% [markdown]
# ### An independent referee: SciPy
#
# Our loops, im2col and kernels share one reading of the formula, so a misreading (a flipped
# kernel, padding on one side only) would pass every comparison between them; SciPy's
# `correlate2d`, written by others for signal processing, would not share it. Per output
# channel, the layer is a 2-D cross-correlation of each padded input channel with its kernel
# slice, summed over the input channels; a stride keeps every $s$-th position:

# %%
from scipy.signal import correlate2d

referee_rng = np.random.default_rng(7)        # its own generator: the later cells' draws stay as they were
xr, wr, br = (referee_rng.standard_normal(shape) for shape in ((3, 9, 8), (4, 3, 3, 3), (4,)))
y_ours = F.conv2d(tm.Tensor(xr[None]), tm.Tensor(wr), tm.Tensor(br), stride=2, padding=1).data[0]
xr_padded = np.pad(xr, ((0, 0), (1, 1), (1, 1)))
y_scipy = np.stack([br[co] + sum(correlate2d(xr_padded[c], wr[co, c], mode="valid") for c in range(3))
                    for co in range(4)])[:, ::2, ::2]
assert np.allclose(y_ours, y_scipy, rtol=1e-12, atol=1e-12)
print("F.conv2d = scipy.signal.correlate2d summed over the input channels:", y_ours.shape)

# %% [markdown]
# ## Hand-set filters: Sobel
#
# Before any learning, a kernel is just a stencil. The Sobel kernel
# $\begin{smallmatrix}-1&0&1\\-2&0&2\\-1&0&1\end{smallmatrix}$ takes the difference between the
# column right of a pixel and the column left of it (smoothed over three rows): it responds to
# intensity rising to the right, and its transpose to intensity rising downwards. Both as one
# layer with two output channels, run on a grey shapes image:

# %%
scene = draw_scene(np.random.default_rng(5), 64, 96, 4)[0]
rgb = scene.astype(np.float64) / 255.0
grey = rgb.mean(axis=2)[None, None]                      # (1, 1, H, W)
sobel_x = np.array([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
sobel = np.stack([sobel_x, sobel_x.T])[:, None]           # (2, 1, 3, 3): d/dx and d/dy
edges = loop_conv2d(grey, sobel, np.zeros(2))[0]       # no padding: zeros around the image would be edges too
magnitude = np.hypot(edges[0], edges[1])[None]

fig, axes = plt.subplots(1, 4, figsize=(10, 1.9), layout="constrained")
axes[0].imshow(rgb)
axes[0].set_axis_off()
axes[0].set_title("shapes image", fontsize=9)
limit = float(np.abs(edges).max())                     # one signed scale for both: zero is white
for ax, plane, cmap, lo, title in ((axes[1], edges[0], "RdBu_r", -limit, "Sobel x: rising to the right"),
                                   (axes[2], edges[1], "RdBu_r", -limit, "Sobel y: rising downwards"),
                                   (axes[3], magnitude[0], "magma", 0, "edge strength")):
    hi = limit if lo < 0 else float(plane.max())
    fig.colorbar(ax.imshow(plane, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest"), ax=ax, shrink=0.8)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
plt.show()

ramp = np.tile(np.arange(12.0), (10, 1))[None, None]     # intensity = column index
response = loop_conv2d(ramp, sobel, np.zeros(2))[0]
assert np.all(response[0] == 8) and np.all(response[1] == 0)   # (1 + 2 + 1) * a rise of 2 across the window

# %% [markdown]
# ## im2col: the convolution as one matrix product
#
# The loop above recomputes the same small dot product at every position. Lay the windows out
# once, as the columns of a matrix $\hat X$ with $C k_h k_w$ rows (one per kernel tap) and
# $H_o W_o$ columns (one per output position),
#
# $$\hat X[(c\,k_h + k_i)\,k_w + k_j,\ i\,W_o + j] = x_{\text{pad}}[c,\ i s + k_i,\ j s + k_j],$$
#
# and, with the kernel seen as a $C_{out}\times C k_h k_w$ matrix $W$, the whole layer is
#
# $$Y = W \hat X + b, \qquad Y \text{ of shape } C_{out}\times H_o W_o .$$
#
# The package's textbook version builds $\hat X$ with NumPy's `sliding_window_view` (a view of the
# padded image, no copy until the reshape):

# %%
print(inspect.getsource(conv_textbook.im2col))
print(inspect.getsource(conv_textbook.conv2d_forward))

# %% [markdown]
# Which window becomes which column: a 5×5 plane holding 1…25, a 3×3 kernel, stride 2,
# padding 1. Each column is one output position's window read row by row; each row is what
# one kernel tap sees across all outputs. Neighbouring windows overlap, so a pixel appears in
# several columns — $\hat X$ is up to $k_h k_w$ times larger than the image.

# %%
plane = np.arange(1.0, 26.0).reshape(5, 5)
cols = conv_textbook.im2col(plane[None, None], (3, 3), (2, 2), (1, 1), (1, 1))[0]
figures.draw_im2col(plane, cols, kernel_size=3, stride=2, padding=1, columns=(0, 5))
plt.show()
assert np.array_equal(cols[:, 5], np.pad(plane, 1)[2:5, 4:7].ravel())   # output (1, 2): rows 2-4, columns 4-6

# %%
y_textbook = conv_textbook.conv2d_forward(x, w, b, stride=(2, 2), padding=(1, 1))
err = rel_error(y_textbook, y_loop)
print(f"im2col convolution vs loops: relative error {err:.1e}")
assert err < 1e-14

# %% [markdown]
# ## The backward pass, and col2im as im2col's adjoint
#
# $Y = W\hat X + b$ is linear in $W$, $b$ and $\hat X$, and $\hat X = A x$ for a fixed 0/1 copy
# matrix $A$ (im2col). So, with $G = \partial L/\partial Y$,
#
# $$\frac{\partial L}{\partial W} = G \hat X^\top, \qquad \frac{\partial L}{\partial b} = \textstyle\sum G,
#   \qquad \frac{\partial L}{\partial x} = A^\top (W^\top G) = \text{col2im}(W^\top G).$$
#
# $A^\top$ never exists as a matrix: **col2im** adds every entry of a column back onto the pixel it
# was copied from, so a pixel in several windows collects several contributions. That col2im
# really is im2col's transpose is one identity, $\langle A x, Y\rangle = \langle x, A^\top Y\rangle$
# for every $x$ and $Y$; it is checked here for random $x, Y$ and several geometries.

# %%
print(inspect.getsource(conv_textbook.col2im))

# %%
for kernel, stride, padding, dilation in [((3, 3), (1, 1), (1, 1), (1, 1)), ((3, 3), (2, 2), (1, 1), (1, 1)),
                                          ((7, 7), (2, 2), (3, 3), (1, 1)), ((2, 3), (2, 1), (0, 2), (2, 1))]:
    xa = rng.standard_normal((2, 3, 11, 10))
    cols_a = conv_textbook.im2col(xa, kernel, stride, padding, dilation)
    ya = rng.standard_normal(cols_a.shape)
    left, right = np.sum(cols_a * ya), np.sum(xa * conv_textbook.col2im(ya, xa.shape, kernel, stride, padding, dilation))
    print(f"kernel {kernel} stride {stride} padding {padding} dilation {dilation}:"
          f"  <Ax, Y> = {left:+.12f}   <x, A^T Y> = {right:+.12f}")
    assert abs(left - right) <= 1e-12 * max(abs(left), 1)

# %% [markdown]
# col2im of columns of ones counts, for every pixel, the windows that contain it. With a 3×3
# kernel at stride 1 an interior pixel is in 9 windows; at stride 2 the count alternates between
# 1, 2 and 4 — the checkerboard that strided (transposed) convolutions are known to leave:

# %%
for stride in (1, 2):
    shape = (1, 1, 7, 7)
    n_cols = conv_textbook.im2col(np.zeros(shape), (3, 3), (stride, stride), (1, 1), (1, 1)).shape
    counts = conv_textbook.col2im(np.ones(n_cols), shape, (3, 3), (stride, stride), (1, 1), (1, 1))[0, 0]
    print(f"stride {stride}:\n{counts.astype(int)}")
assert counts[3, 3] == 4 and counts[3, 2] == 2 and counts[2, 2] == 1

# %% [markdown]
# The whole op on the textbook path, checked by finite differences. One switch,
# `tm.use_kernels("twins")` (or the environment variable `TINYMASKRCNN_KERNELS=twins`), runs
# every convolution of the package on the textbook path, and every other kernel (pooling,
# RoIAlign, NMS, mask pasting, the norms, AdamW) on its readable NumPy twin
# (`tinymaskrcnn/functional/dispatch.py` holds the table); `"fast"`, the default, runs the fast
# paths below:

# %%
xt = tm.Tensor(x.copy(), requires_grad=True)
wt = tm.Tensor(w.copy(), requires_grad=True)
bt = tm.Tensor(b.copy(), requires_grad=True)
with tm.use_kernels("twins"):
    errors = gradcheck(lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), [xt, wt, bt])
print("textbook path, relative errors (x, w, b):", ["%.1e" % e for e in errors])
assert max(errors) < 1e-8

# %% [markdown]
# ## The fast path
#
# The package's own convolution (`functional/conv.py`) computes the same products, arranged for speed:
#
# * **contiguous copies**: `kernels/im2col.py` splits the padded image into its *phase images*
#   (for stride 2, the four sub-images of even/odd rows and columns), so each kernel tap reads
#   one phase at stride 1, and numbers the outputs on a grid as wide as the phase image, so
#   that every row of $\hat X$ is one contiguous slice (a few extra columns are computed and
#   dropped);
# * **tiles**: $\hat X$ is never built whole (for the FPN's 3×3 convolution at 800×1088 it would
#   be 500 MB): one band of output rows at a time, about 1 MB, filled and multiplied while it is
#   in the cache, one band per core;
# * **Winograd** for 3×3 stride-1 convolutions with enough channels: 2.25× fewer
#   multiplications (`kernels/winograd.py`);
# * **1×1** stride-1 convolutions skip im2col altogether: the image already is $\hat X$.
#
# All of it must give the textbook's numbers: below, each path forward and backward in float64,
# and against the loops. The Winograd case is a 128-channel map of 104×104 (3.2 billion
# operations), large enough for the fast path to choose Winograd's algorithm; on small
# convolutions its transforms would cost more than they save, and they stay on im2col.

# %%
cases = {"3x3 stride 2 (im2col tiles)": dict(n=2, c=8, size=(12, 11), k=3, stride=2, padding=1),
         "1x1 (no im2col)": dict(n=2, c=8, size=(12, 11), k=1, stride=1, padding=0),
         "7x7 stride 2 (the stem)": dict(n=2, c=3, size=(12, 11), k=7, stride=2, padding=3),
         "3x3 stride 1, 128 channels (Winograd)": dict(n=1, c=128, size=(104, 104), k=3, stride=1, padding=1)}
for name, case in cases.items():
    cout = max(case["c"], 16)
    xs = rng.standard_normal((case["n"], case["c"]) + case["size"])
    ws = rng.standard_normal((cout, case["c"], case["k"], case["k"]))
    results = {}
    for path in ("fast", "twins"):
        xi, wi = tm.Tensor(xs.copy(), requires_grad=True), tm.Tensor(ws.copy(), requires_grad=True)
        with tm.use_kernels(path):
            out = F.conv2d(xi, wi, None, stride=case["stride"], padding=case["padding"])
            out.backward(np.random.default_rng(0).standard_normal(out.shape))
        results[path] = (out.data, xi.grad, wi.grad)
    errs = [rel_error(a, r) for a, r in zip(results["fast"], results["twins"])]
    if case["c"] < 128:   # the loops take seconds on the large case
        errs.append(rel_error(results["fast"][0], loop_conv2d(xs, ws, np.zeros(cout), case["stride"], case["padding"])))
    print(f"{name:38s} fast vs textbook: y {errs[0]:.0e}, dx {errs[1]:.0e}, dw {errs[2]:.0e}"
          + (f";  vs loops: {errs[3]:.0e}" if len(errs) > 3 else ""))
    assert max(errs) < 1e-12

# %% [markdown]
# ### Why the kernels exist
#
# One convolution of a ResNet's first stage (64 channels in and out, 3×3, stride 1), timed
# three ways on this machine (float32, the best of a few runs; quick mode uses a smaller map). All
# three on one core (BLAS limited to one thread), so that the table compares the algorithms; on a
# large input the fast path would also spread its tiles over the cores.

# %%
def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


side, channels = quick((24, 32), (56, 64))
xb = rng.standard_normal((1, channels, side, side)).astype(np.float32)
wb = (rng.standard_normal((channels, channels, 3, 3)) * 0.05).astype(np.float32)
bb = np.zeros(channels, np.float32)
with tm.no_grad(), single_threaded_blas():
    with tm.use_kernels("fast"):
        F.conv2d(tm.Tensor(xb), wb, bb, padding=1)                        # compile and warm up once
    timings = {"loops (one window at a time)": best_time(lambda: loop_conv2d(xb, wb, bb, padding=1), 2),
               "textbook im2col + one product": best_time(lambda: conv_textbook.conv2d_forward(xb, wb, bb, padding=(1, 1)), 5)}
    with tm.use_kernels("fast"):
        timings["fast path (kernels, tiles)"] = best_time(lambda: F.conv2d(tm.Tensor(xb), wb, bb, padding=1), 5)
flops = 2 * channels * channels * 9 * side * side
print(f"conv {channels}->{channels}, 3x3, on {side}x{side}: {flops / 1e6:.0f} million floating-point operations")
print(f"{'':32s} {'time (ms)':>10s} {'GFLOP/s':>8s} {'vs loops':>9s}")
for name, seconds in timings.items():
    print(f"{name:32s} {seconds * 1e3:10.2f} {flops / seconds / 1e9:8.2f} {timings['loops (one window at a time)'] / seconds:8.1f}x")

# %% [markdown]
# (The numbers depend on the machine and on what else runs on it; the order of loops against
# the rest does not.) Going from loops to one matrix product is the big step: the product runs at
# the processor's speed instead of Python's. On one core and a map this small the fast path does
# the same product as the textbook and can at best match it. What it adds shows at detection
# sizes: the textbook's $\hat X$ grows to hundreds of megabytes, while the fast path holds one
# tile per core, spreads large convolutions over the cores and uses Winograd's algorithm
# (docs/benchmarks.md measures it against torch on the Mask R-CNN shapes):

# %%
c, positions = 256, 200 * 272            # the FPN's 3x3 conv on P2 of an 800x1088 image
print(f"textbook im2col matrix for that conv: {9 * c * positions * 4 / 2**20:.0f} MiB (float32); "
      "the fast path's tile: about 1 MiB per core")

# %% [markdown]
# ## Every Numba kernel has a NumPy twin
#
# The fast path's copies are Numba kernels: loops compiled to machine code, which release
# Python's global lock so that one runs on each core. Each has a NumPy twin with the same
# signature that works a kernel tap at a time with slices — the one to read first — and the
# tests hold the two equal. im2col on phase images, both ways:

# %%
print(inspect.getsource(kernels.im2col_twin))
print(inspect.getsource(kernels.im2col.py_func))

# %%
geometry = (3, 3, 2, 2, 1, 1, 1, 1)                                 # kh, kw, sh, sw, ph, pw, dh, dw
image = rng.standard_normal((4, 13, 12))
ho, wo, hq, wq = kernels.phase_grid(13, 12, *geometry)
q = kernels.phase_split(image, *geometry)
assert np.array_equal(q, kernels.phase_split_twin(image, *geometry))
taps = geometry[:4] + geometry[6:]                                  # kh, kw, sh, sw, dh, dw
cols_numba = kernels.im2col(q, *taps, wq, 0, ho)
assert np.array_equal(cols_numba, kernels.im2col_twin(q, *taps, wq, 0, ho))
back = rng.standard_normal(cols_numba.shape)
assert np.array_equal(kernels.col2im(back, np.zeros_like(q), *taps, wq, 0, ho),
                      kernels.col2im_twin(back, np.zeros_like(q), *taps, wq, 0, ho))
# the wide grid's first wo columns of each output row are the textbook's im2col
narrow = cols_numba.reshape(-1, ho, wq)[:, :, :wo].reshape(len(cols_numba), -1)
assert np.array_equal(narrow, conv_textbook.im2col(image[None], (3, 3), (2, 2), (1, 1), (1, 1))[0])
print(f"phase images {q.shape}, wide grid {ho}x{wq} for a {ho}x{wo} output: Numba = NumPy twin = textbook im2col")

# %% [markdown]
# ## Exercises
#
# ### Exercise 1 — im2col
#
# Write `my_im2col(x, kh, kw)` for one image `x` of shape $(C, H, W)$, stride 1, no padding,
# returning the $(C k_h k_w) \times (H_o W_o)$ matrix laid out as above (row
# $(c k_h + k_i) k_w + k_j$, column $i W_o + j$).

# %%
@exercise
def check_im2col(my_im2col):
    r = np.random.default_rng(11)
    for shape, (kh, kw) in [((2, 5, 6), (3, 3)), ((3, 4, 7), (2, 3))]:
        x = r.standard_normal(shape)
        c, h, w = shape
        ho, wo = h - kh + 1, w - kw + 1
        truth = np.empty((c * kh * kw, ho * wo))
        for i in range(ho):                       # column by column, straight from the definition
            for j in range(wo):
                truth[:, i * wo + j] = x[:, i:i + kh, j:j + kw].ravel()
        mine = np.asarray(my_im2col(x.copy(), kh, kw))
        assert mine.shape == truth.shape, f"shape {mine.shape}, expected {truth.shape}"
        assert np.array_equal(mine, truth), \
            f"for x {shape} and a {kh}x{kw} kernel the entries differ: check the order of the rows (c, ki, kj)"


def my_im2col(x, kh, kw):
    raise NotImplementedError   # your code


check_im2col(my_im2col)

# %% [solution]
def solution_im2col(x, kh, kw):
    c, h, w = x.shape
    ho, wo = h - kh + 1, w - kw + 1
    cols = np.empty((c, kh, kw, ho, wo))
    for ki in range(kh):                 # one kernel tap at a time: a shifted copy of the image
        for kj in range(kw):
            cols[:, ki, kj] = x[:, ki:ki + ho, kj:kj + wo]
    return cols.reshape(c * kh * kw, ho * wo)


def taps_outermost(x, kh, kw):          # rows ordered (ki, kj, c) instead of (c, ki, kj)
    c = x.shape[0]
    return solution_im2col(x, kh, kw).reshape(c, kh * kw, -1).transpose(1, 0, 2).reshape(c * kh * kw, -1)


assert check_im2col(solution_im2col)
assert rejects(check_im2col, taps_outermost)

# %% [markdown]
# ### Exercise 2 — col2im
#
# Write `my_col2im(cols, c, h, w, kh, kw)`, the adjoint of Exercise 1's im2col: it takes a
# $(C k_h k_w) \times (H_o W_o)$ matrix and returns the $(C, H, W)$ image onto which every entry is
# added at the pixel im2col copied it from. The check tests
# $\langle \text{im2col}(x), Y\rangle = \langle x, \text{col2im}(Y)\rangle$ for random $x$ and $Y$.

# %%
@exercise
def check_col2im(my_col2im):
    r = np.random.default_rng(12)
    for (c, h, w), (kh, kw) in [((2, 5, 6), (3, 3)), ((1, 6, 4), (2, 2))]:
        for _ in range(3):
            x = r.standard_normal((1, c, h, w))
            cols = conv_textbook.im2col(x, (kh, kw), (1, 1), (0, 0), (1, 1))[0]   # the package's (its conv = torch)
            y = r.standard_normal(cols.shape)
            mine = np.asarray(my_col2im(y.copy(), c, h, w, kh, kw))
            assert mine.shape == (c, h, w), f"shape {mine.shape}, expected {(c, h, w)}"
            left, right = np.sum(cols * y), np.sum(x[0] * mine)
            assert abs(left - right) < 1e-10 * max(1.0, abs(left)), \
                f"<im2col(x), Y> = {left:.6f} but <x, col2im(Y)> = {right:.6f}: do overlapping windows add up?"


def my_col2im(cols, c, h, w, kh, kw):
    raise NotImplementedError   # your code


check_col2im(my_col2im)

# %% [solution]
def solution_col2im(cols, c, h, w, kh, kw):
    ho, wo = h - kh + 1, w - kw + 1
    taps = cols.reshape(c, kh, kw, ho, wo)
    x = np.zeros((c, h, w))
    for ki in range(kh):                 # the adjoint of a shifted copy is a shifted add
        for kj in range(kw):
            x[:, ki:ki + ho, kj:kj + wo] += taps[:, ki, kj]
    return x


def overwriting_col2im(cols, c, h, w, kh, kw):   # '=' instead of '+=': overlapping windows keep one value
    ho, wo = h - kh + 1, w - kw + 1
    taps = cols.reshape(c, kh, kw, ho, wo)
    x = np.zeros((c, h, w))
    for ki in range(kh):
        for kj in range(kw):
            x[:, ki:ki + ho, kj:kj + wo] = taps[:, ki, kj]
    return x


assert check_col2im(solution_col2im)
assert rejects(check_col2im, overwriting_col2im)

# %% [markdown]
# ### Exercise 3 — a diagonal edge filter
#
# Write `my_diagonal()` returning a 3×3 kernel that responds to intensity rising towards the
# **bottom right** (positive there), gives 0 on a flat image and 0 on a ramp that rises towards
# the bottom left.

# %%
@exercise
def check_diagonal(make_kernel):
    kernel = np.asarray(make_kernel(), dtype=np.float64)
    assert kernel.shape == (3, 3), f"the kernel has shape {kernel.shape}, expected (3, 3)"
    i, j = np.mgrid[0:8, 0:8].astype(np.float64)
    respond = lambda image: loop_conv2d(image[None, None], kernel[None, None], np.zeros(1))[0, 0]
    assert np.allclose(respond(np.ones((8, 8))), 0), "a flat image must give 0: the weights must sum to 0"
    towards = respond(i + j)
    assert np.all(towards > 0) and np.allclose(towards, towards[0, 0]), \
        "a ramp rising to the bottom right must give the same positive value everywhere"
    assert np.allclose(respond(i - j), 0), "a ramp rising to the bottom left must give 0"


def my_diagonal():
    raise NotImplementedError   # your code: return a 3x3 array


check_diagonal(my_diagonal)

# %% [solution]
def solution_diagonal():
    return sobel_x + sobel_x.T                  # d/dx + d/dy: the derivative along (1, 1)


assert check_diagonal(solution_diagonal)
assert rejects(check_diagonal, lambda: sobel_x)  # responds to the other diagonal too

# %% [markdown]
# ## Questions to answer in words
#
# Answer each in a few sentences before opening the answer.
#
# **Question 1.** im2col copies every input value up to kh·kw times. Why is it still the usual way to compute a convolution on a CPU?
#
# <details><summary>Answer</summary>
#
# It turns the whole convolution into one large matrix product, which BLAS runs near the processor's peak (blocked for the caches, vectorised, multi-threaded), while the six nested loops touch memory in a pattern no cache likes. The extra memory (9× the input for a 3×3 kernel) can be bounded by converting a few images or rows at a time.
#
# </details>
#
# **Question 2.** Why does col2im *add* into the input gradient instead of writing into it?
#
# <details><summary>Answer</summary>
#
# Windows overlap: one input pixel sits in several columns, and each column's gradient is a contribution to that pixel's. col2im is the adjoint of im2col, and the adjoint of copying a value to several places is summing the values from those places.
#
# </details>
