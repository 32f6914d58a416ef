"""Single ops, float32, ours vs torch.nn.functional in the same run.

    python benchmarks/bench_ops.py                      # all cores, wall-clock time, 7 repeats
    python benchmarks/bench_ops.py --threads 1 --clock cpu   # one thread, CPU time

On a busy machine, wall-clock timings of multi-threaded code are unreliable (a thread that
waits for a core stalls its team at every barrier); one thread timed by CPU time
(time.process_time) still gives a fair ours/torch ratio there.

Convolution: the ResNet-50 / FPN shapes of an 800x1088 input at batch 1. "fwd" is the forward
pass alone (as in inference); "fwd+bwd" is a forward and a backward pass giving the input,
weight and bias gradients, except for the 7x7 stem, whose input is the image: as in a
network, it gets weight and bias gradients only. Every case is run once first (Numba
compilation, allocator warm-up), then timed ``--repeats`` times; the table gives the medians
in milliseconds and the ratio ours / torch. Both sides use every core: torch through
torch.set_num_threads, ours through Numba's and OpenBLAS's default thread pools.
"""
import argparse
import os
import statistics
import time

# (name, Cin, Cout, kernel, stride, padding, H, W, input needs a gradient)
CONV_CASES = [
    ("3x3 256->256 @ 50x68", 256, 256, 3, 1, 1, 50, 68, True),
    ("1x1 1024->256 @ 50x68", 1024, 256, 1, 1, 0, 50, 68, True),
    ("7x7/2 3->64 stem @ 800x1088", 3, 64, 7, 2, 3, 800, 1088, False),
    ("3x3 64->64 @ 200x272", 64, 64, 3, 1, 1, 200, 272, True),
    ("1x1/2 256->512 downsample @ 200x272", 256, 512, 1, 2, 0, 200, 272, True),
    ("3x3/2 128->128 @ 200x272", 128, 128, 3, 2, 1, 200, 272, True),
    ("3x3 256->256 FPN P2 @ 200x272", 256, 256, 3, 1, 1, 200, 272, True),
]


def median_ms(fn, repeats, clock):
    fn()  # warm-up: Numba compilation, first-touch page faults
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return 1e3 * statistics.median(times)


def conv_timings(case, repeats, clock):
    """(ours fwd, torch fwd, ours fwd+bwd, torch fwd+bwd) in ms for one CONV_CASES entry."""
    import numpy as np
    import torch

    import tinymaskrcnn as tm
    import tinymaskrcnn.functional as F

    _, cin, cout, k, stride, padding, h, w, input_grad = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, cin, h, w), dtype=np.float32)
    weight = (rng.standard_normal((cout, cin, k, k), dtype=np.float32) / np.sqrt(cin * k * k)).astype(np.float32)
    bias = rng.standard_normal(cout, dtype=np.float32)
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    cot = rng.standard_normal((1, cout, ho, wo), dtype=np.float32)

    ours_x, ours_w, ours_b = tm.Tensor(x, input_grad), tm.Tensor(weight, True), tm.Tensor(bias, True)
    torch_x = torch.from_numpy(x).requires_grad_(input_grad)
    torch_w, torch_b = torch.from_numpy(weight).requires_grad_(), torch.from_numpy(bias).requires_grad_()
    torch_cot = torch.from_numpy(cot)

    def ours_fwd():
        with tm.no_grad():
            F.conv2d(ours_x, ours_w, ours_b, stride=stride, padding=padding)

    def torch_fwd():
        with torch.no_grad():
            torch.nn.functional.conv2d(torch_x, torch_w, torch_b, stride=stride, padding=padding)

    def ours_fwd_bwd():
        for t in (ours_x, ours_w, ours_b):
            t.grad = None
        F.conv2d(ours_x, ours_w, ours_b, stride=stride, padding=padding).backward(cot)

    def torch_fwd_bwd():
        for t in (torch_x, torch_w, torch_b):
            t.grad = None
        torch.nn.functional.conv2d(torch_x, torch_w, torch_b, stride=stride, padding=padding).backward(torch_cot)

    return tuple(median_ms(f, repeats, clock) for f in (ours_fwd, torch_fwd, ours_fwd_bwd, torch_fwd_bwd))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for torch, Numba and OpenBLAS")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: time.perf_counter; cpu: time.process_time (all threads' CPU time)")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    args = parser.parse_args()
    # OpenBLAS and Numba read their thread counts when first imported
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["NUMBA_NUM_THREADS"] = str(args.threads)

    import numba
    import torch

    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"float32, batch 1, median of {args.repeats} ({args.clock} clock); threads: torch "
          f"{torch.get_num_threads()}, numba {numba.get_num_threads()}, cores {os.cpu_count()}")
    print("\nConvolution (ms; ratio = ours / torch)")
    header = f"{'case':38s} {'ours fwd':>9s} {'torch':>8s} {'ratio':>6s}   {'ours f+b':>9s} {'torch':>8s} {'ratio':>6s}"
    print(header)
    print("-" * len(header))
    for case in CONV_CASES:
        if args.only not in case[0]:
            continue
        of, tf, ob, tb = conv_timings(case, args.repeats, clock)
        note = "" if case[-1] else "  (no input grad)"
        print(f"{case[0]:38s} {of:9.1f} {tf:8.1f} {of / tf:6.2f}   {ob:9.1f} {tb:8.1f} {ob / tb:6.2f}{note}", flush=True)


if __name__ == "__main__":
    main()
