# %% [markdown]
# # Chapter 16 — Data parallelism
#
# One training step of the main job is hundreds of small operations on small images: they use
# one core well and many cores badly. Images, though, are independent until the loss is summed,
# so N processes can each take a share of the batch, compute the gradient of their share, and
# add the gradients up. This chapter proves why that sum is the whole batch's gradient (and
# asserts it on a small model), shows what does *not* add up (BatchNorm's batch statistics),
# sums gradients over processes by hand with a ring Allreduce, then with MPI's, and measures
# what the sum costs per step against the step itself. The package's version is
# `tinymaskrcnn/engine/data_parallel.py`, which `tinymaskrcnn train --processes N` uses.

# %%
import inspect
import subprocess
import sys
import textwrap
import time

import matplotlib.pyplot as plt
import numpy as np

import tinymaskrcnn as tm
import tinymaskrcnn.functional as F
from tinymaskrcnn import engine, nn
from tinymaskrcnn.chapters import exercise, quick, rejects, scratch
from tinymaskrcnn.engine import data_parallel
from tinymaskrcnn.engine.step import forward_backward, trainable_parameters

plt.rcParams["figure.dpi"] = 72
work = scratch()  # removed when the chapter ends

# %% [markdown]
# ## Why summed gradients are the whole batch's gradient
#
# The loss of a batch of $B$ images is the mean of per-image losses, $L = \frac1B\sum_{i=1}^B
# \ell_i(\theta)$. Split the batch into shares $S_0, \dots, S_{N-1}$ of $n_r$ images. Process $r$
# computes the gradient of its own mean loss, $g_r = \frac1{n_r}\sum_{i\in S_r}\nabla\ell_i$.
# The gradient is linear, so
#
# $$\sum_r \frac{n_r}{B}\, g_r = \frac1B \sum_r \sum_{i\in S_r} \nabla \ell_i = \nabla L .$$
#
# Each process scales its gradient by its share of the batch, $n_r/B$, and a *sum* over the
# processes gives every one of them $\nabla L$. The optimizer then takes the same step in every
# process from the same parameters, so the parameters stay equal without ever being sent. The
# identity needs only that the images do not interact before the loss: a layer that mixes images
# (BatchNorm in training, below) breaks it.
#
# A small classifier in float64, a batch of 8 split into shares of 3 and 5:

# %%
def small_net(norm):
    tm.random.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), norm(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 8 * 8, 4)).to(np.float64)


def gradient(model, x, y):
    """Gradient of the mean cross-entropy over the images of x, one flat vector."""
    for p in model.parameters():
        p.grad = None
    F.cross_entropy(model(tm.Tensor(x)), y).backward()
    return np.concatenate([p.grad.ravel() for p in model.parameters()])


rng = np.random.default_rng(1)
x, y = rng.normal(size=(8, 3, 16, 16)), rng.integers(0, 4, 8)
shares = [slice(0, 3), slice(3, 8)]
model = small_net(nn.InstanceNorm2d)  # each image normalised by its own statistics: images do not interact
whole = gradient(model, x, y)
summed = sum((s.stop - s.start) / len(x) * gradient(model, x[s], y[s]) for s in shares)
print(f"{whole.size} gradient entries; largest difference {np.abs(summed - whole).max():.1e} "
      f"(entries up to {np.abs(whole).max():.2f})")
assert np.allclose(summed, whole, rtol=1e-12, atol=1e-15)
unweighted = sum(gradient(model, x[s], y[s]) for s in shares) / len(shares)  # a plain mean of unequal shares
assert not np.allclose(unweighted, whole, rtol=1e-3)

# %% [markdown]
# ## What does not average: BatchNorm's statistics
#
# In training, BatchNorm normalises each channel by the mean and variance *of the batch it is
# given*. A process sees only its share, so its statistics, and hence its activations and its
# gradient, are its share's: the sum of the shares' gradients is no longer the whole batch's.
# Its running averages drift apart between processes too. torch's DDP leaves it so by default
# (SyncBatchNorm would add an Allreduce of the statistics inside every forward pass); the
# package does the same, keeps rank 0's running statistics in the checkpoint, and sidesteps the
# question where it matters: the shapes model normalises with InstanceNorm2d, which has no batch
# statistics.

# %%
batchnorm = small_net(nn.BatchNorm2d)
whole_bn = gradient(batchnorm, x, y)
summed_bn = sum((s.stop - s.start) / len(x) * gradient(batchnorm, x[s], y[s]) for s in shares)
gap = np.abs(summed_bn - whole_bn).max() / np.abs(whole_bn).max()
print(f"BatchNorm2d: the shares' summed gradient differs from the whole batch's by {gap:.1%} of its largest entry")
assert gap > 1e-3

fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
for ax, (name, a, b) in zip(axes, [("InstanceNorm2d: the shares' sum IS the batch's gradient", whole, summed),
                                   ("BatchNorm2d: the shares' sum is NOT", whole_bn, summed_bn)]):
    ax.scatter(a, b, s=4)
    ax.plot([a.min(), a.max()], [a.min(), a.max()], "k--", lw=0.8)
    ax.set(title=name, xlabel="gradient of the whole batch", ylabel="sum of the shares' gradients")
    ax.title.set_fontsize(9)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The Allreduce by hand
#
# Every process needs the *sum* of all the gradients: an **Allreduce**. The obvious way, everyone
# sending everything to everyone, moves $(N-1)$ copies of the gradient out of each process. The
# **ring** algorithm moves less. Cut each process's vector into $N$ chunks. In $N-1$
# *reduce-scatter* rounds, process $r$ passes one chunk to its right neighbour, which adds it to
# its own; after them process $r$ holds the complete sum of chunk $r+1$. In $N-1$ *all-gather*
# rounds the finished chunks travel around the ring once more. Each process sends
# $2\frac{N-1}{N}$ times the vector's size in all: under twice the gradient however many
# processes there are. (MPI libraries choose between this and tree-shaped algorithms by message
# size; NCCL uses rings and trees over the GPUs' links.)

# %%
def ring_allreduce(vectors):
    """The sum of ``vectors`` (one per simulated process) in every process, by the ring
    algorithm; returns (the results, the values each process sent)."""
    n = len(vectors)
    chunks = [np.array_split(v.astype(float), n) for v in vectors]
    sent = 0
    for step in range(n - 1):  # reduce-scatter: chunk (r - step) moves from r to r + 1 and is added there
        outgoing = [chunks[r][(r - step) % n].copy() for r in range(n)]
        for r in range(n):
            chunks[(r + 1) % n][(r - step) % n] += outgoing[r]
        sent += outgoing[0].size
    for step in range(n - 1):  # all-gather: process r holds the finished chunk r + 1; pass it on
        outgoing = [chunks[r][(r + 1 - step) % n].copy() for r in range(n)]
        for r in range(n):
            chunks[(r + 1) % n][(r + 1 - step) % n] = outgoing[r]
        sent += outgoing[0].size
    return [np.concatenate(c) for c in chunks], sent


for n in (2, 3, 5):
    vectors = [rng.normal(size=1000) for _ in range(n)]
    results, sent = ring_allreduce(vectors)
    assert all(np.allclose(r, sum(vectors)) for r in results)
    assert abs(sent - 2 * (n - 1) / n * 1000) < n  # 2 (N - 1) / N of the vector, up to the chunks' rounding
    print(f"N = {n}: every process holds the sum; each sent {sent} values ({sent / 1000:.2f}x the vector)")

# %% [markdown]
# ## MPI's Allreduce
#
# MPI (the Message Passing Interface) runs the same program as N processes, *ranks*, started by
# `mpiexec`; `mpi4py` gives NumPy arrays to it without copying. `comm.Allreduce(MPI.IN_PLACE,
# buffer)` replaces `buffer` in every rank by the sum over the ranks. The package copies all
# gradients of one dtype into one flat buffer first: each message costs a latency, so one large
# Allreduce beats a hundred small ones. The script below, started with `mpiexec -n 2` (a notebook
# is one process: it cannot become two), sums a buffer the size of the main job's gradient and
# times it.

# %%
model = engine.build_model("maskrcnn_resnet18_fpn", 4, engine.SHAPES_MODEL_DEFAULTS)
count = sum(p.data.size for p in trainable_parameters(model))
script = work / "allreduce.py"
script.write_text(textwrap.dedent(f"""
    import time
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    buffer = np.full({count}, comm.Get_rank() + 1, np.float32)  # rank r contributes r + 1 everywhere
    comm.Allreduce(MPI.IN_PLACE, buffer)
    assert (buffer == sum(range(1, comm.Get_size() + 1))).all()
    times = []
    for _ in range({quick(5, 20)}):
        comm.Barrier()
        start = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buffer)
        times.append(time.perf_counter() - start)
    if comm.Get_rank() == 0:
        print(np.median(times))
    """))
try:
    mpiexec = data_parallel.mpiexec()
    done = subprocess.run([mpiexec, "-n", "2", sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    allreduce_seconds = float(done.stdout.split()[-1])
except data_parallel.MPIUnavailableError as e:
    print(e)
    allreduce_seconds = None
print(f"the main job's model: {count:,} trainable parameters, {4 * count / 2 ** 20:.1f} MiB of float32 gradient")
if allreduce_seconds is not None:
    print(f"one Allreduce of it over 2 processes on this machine: {1000 * allreduce_seconds:.1f} ms")

# %% [markdown]
# The package's step does exactly this around `forward_backward` (the seeds are what keeps a run
# repeatable: every rank draws the same N seeds, samples its share with its own, and continues
# from the same generator state):

# %%
print(inspect.getsource(data_parallel.DataParallel.step))
print(inspect.getsource(data_parallel.DataParallel.average))

# %% [markdown]
# ## What the communication costs against the step
#
# One training step of the main job's model on one shapes image, timed in this process, against
# the Allreduce above. Each process sends about twice its gradient per step; on one machine MPI
# moves it through shared memory, between machines over the network, where at 1 GB/s the same
# bytes take (2 × size) / 1 GB/s.

# %%
shapes = engine.resolve_data(engine.TrainConfig(shapes_root=str(work / "shapes"), shapes_train=2, shapes_val=1,
                                                progress=False))
from tinymaskrcnn.data import CocoDetection  # noqa: E402 - the data only this cell needs

train_set = CocoDetection(*shapes["train"], skip_empty=True)
image, target = train_set[0]
model = engine.build_model("maskrcnn_resnet18_fpn", train_set.num_classes, engine.SHAPES_MODEL_DEFAULTS)
model.train()
forward_backward(model, [image], [target])  # the kernels compile on the first call
times = []
for _ in range(quick(2, 10)):
    start = time.perf_counter()
    forward_backward(model, [image], [target])
    times.append(time.perf_counter() - start)
step = float(np.median(times))
network = 2 * 4 * count / 1e9  # seconds at 1 GB/s
rows = {"one training step\n(one image, one core)": step, "Allreduce, 2 processes\n(shared memory)":
        allreduce_seconds or 0.0, "the same bytes over\na 1 GB/s network": network}
for name, seconds in rows.items():
    print(f"{name.replace(chr(10), ' '):45s} {1000 * seconds:8.1f} ms")
fig, ax = plt.subplots(figsize=(7, 3))
ax.barh(list(rows), [1000 * v for v in rows.values()], color=["tab:blue", "tab:orange", "tab:red"])
ax.set(xlabel="milliseconds", title="per step: communication against computation (main job's model)")
fig.tight_layout()
plt.show()
assert step > 0 and network > 0

# %% [markdown]
# ## Exercises
#
# ### Exercise 1 — each process's factor
#
# Write `share_factors(sizes)`: given the number of images in each process's share of a batch,
# the factor each process multiplies its gradient (of its own mean loss) by before the Allreduce
# sums them, so that every process ends with the gradient of the whole batch's mean loss. The
# check splits the first cell's batch in random ways and compares with the whole batch's gradient.

# %%
@exercise
def check_share_factors(share_factors):
    r = np.random.default_rng(3)
    net = small_net(nn.InstanceNorm2d)
    whole = gradient(net, x, y)
    for trial in range(5):
        cuts = np.sort(r.choice(np.arange(1, len(x)), size=int(r.integers(1, 4)), replace=False))
        bounds = [0, *cuts, len(x)]
        sizes = [int(b - a) for a, b in zip(bounds, bounds[1:])]
        factors = share_factors(sizes)
        summed = sum(f * gradient(net, x[a:b], y[a:b]) for f, a, b in zip(factors, bounds, bounds[1:]))
        assert np.allclose(summed, whole, rtol=1e-10, atol=1e-14), \
            f"shares of {sizes} images: your factors {[round(float(f), 3) for f in factors]} do not give the " \
            "batch's gradient"


def my_share_factors(sizes):
    raise NotImplementedError   # your code


check_share_factors(my_share_factors)

# %% [solution]
def solution_share_factors(sizes):
    return [n / sum(sizes) for n in sizes]


def mean_of_processes(sizes):   # a plausible mistake: right only when the shares are equal
    return [1 / len(sizes)] * len(sizes)


assert check_share_factors(solution_share_factors)
assert rejects(check_share_factors, mean_of_processes)

# %% [markdown]
# ### Exercise 2 — the ring's traffic
#
# Write `ring_values_sent(n, size)`: how many values each of `n` processes sends in the ring
# Allreduce of a vector of `size` values (sizes divisible by `n`). The check counts them in
# `ring_allreduce` above.

# %%
@exercise
def check_ring_values_sent(ring_values_sent):
    for n in (2, 3, 4, 6):
        size = 12 * n
        _, sent = ring_allreduce([np.ones(size) for _ in range(n)])
        mine = ring_values_sent(n, size)
        assert mine == sent, f"{n} processes, {size} values: you say {mine}, the ring sends {sent}"


def my_ring_values_sent(n, size):
    raise NotImplementedError   # your code


check_ring_values_sent(my_ring_values_sent)

# %% [solution]
def solution_ring_values_sent(n, size):
    return 2 * (n - 1) * size // n   # n - 1 chunks of size / n out, twice (reduce-scatter, all-gather)


def everyone_to_everyone(n, size):   # a plausible mistake: the naive exchange's traffic
    return (n - 1) * size


assert check_ring_values_sent(solution_ring_values_sent)
assert rejects(check_ring_values_sent, everyone_to_everyone)

# %% [markdown]
# ## Questions
#
# **Why does the package scale each share's gradient by $n_r/B$ instead of dividing the sum by
# $N$?** With equal shares the two agree. With unequal ones (a batch of 3 over 2 processes) the
# plain mean would weigh the image in the share of one twice as much as each image in the share of
# two, and the result would no longer be the gradient of the batch's mean loss (the first cell's
# second assert). Mask R-CNN's losses normalise over the samples each share draws rather than per
# image, so there the weighted sum is the gradient DDP computes, equal to one process running the
# shares in turn (tests/test_mpi.py), not bit for bit one forward pass over the whole batch.
#
# **When does adding processes stop paying?** When the step's computation per process falls to
# the order of the Allreduce. On one machine the Allreduce takes milliseconds to tens of them
# against a step of a few hundred: more cores pay. Across machines on a 1 GB/s network the main
# job's gradient costs about half of a one-image step (the bars above), so a second machine buys
# much less than a second core, unless the Allreduce overlaps the backward pass (DDP starts summing a bucket as soon as its
# gradients are ready) or the step grows (larger images, larger batches per process).
