"""Single ops, float32, ours vs torch.nn.functional in the same run.

    python benchmarks/bench_ops.py                            # all cores, wall-clock time
    python benchmarks/bench_ops.py --threads 1 --clock cpu    # one thread, CPU time
    python benchmarks/bench_ops.py --only stem --repeats 3
    python benchmarks/bench_ops.py --im2col                   # without Winograd's algorithm

Convolution: the ResNet-50 / FPN shapes of an 800x1088 input at batch 1. "fwd" is the forward
pass alone (as in inference); "f+b" is a forward and a backward pass giving the input, weight
and bias gradients, except for the 7x7 stem, whose input is the image: as in a network, it
gets weight and bias gradients only. Every measurement is run once first (Numba compilation,
allocator warm-up), then ours and torch's are timed alternately ``--repeats`` times, so that
both see the same machine, with a pause between them so that neither runs while the other's
idle threads still spin, each timed call right after an untimed one (thread pools awake, as
in a network); the table gives the medians in milliseconds and the ratio
ours / torch. Both sides use ``--threads`` threads (default: every core): torch through
torch.set_num_threads, ours through Numba's and OpenBLAS's thread pools.

On a busy machine, wall-clock timings of multi-threaded code are unreliable (a thread that
waits for a core stalls its team at every barrier); one thread timed by CPU time
(``--threads 1 --clock cpu``) still gives a fair ratio there.
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


# Idle threads of one library keep spinning for a while after its call returns (OpenBLAS's
# workers for about 0.1 s) and would slow down the other library if it ran next: pause between
# the two. After the pause a side's thread pool is asleep, unlike in a network where ops run
# back to back, so each timed call follows an untimed one of the same side.
PAUSE_S = 0.2


def paired_median_ms(ours, theirs, repeats, clock):
    """Median times in ms of two functions, timed alternately (each call warmed by one before)."""
    ours(), theirs()  # warm-up: Numba compilation, first-touch page faults
    times = ([], [])
    for _ in range(repeats):
        for fn, record in zip((ours, theirs), times):
            time.sleep(PAUSE_S)
            fn()
            t0 = clock()
            fn()
            record.append(clock() - t0)
    return tuple(1e3 * statistics.median(t) for t in times)


def conv_timings(case, repeats, clock):
    """(ours fwd, torch fwd, ours f+b, torch f+b) in ms for one CONV_CASES entry."""
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

    return (paired_median_ms(ours_fwd, torch_fwd, repeats, clock)
            + paired_median_ms(ours_fwd_bwd, torch_fwd_bwd, repeats, clock))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for torch, Numba and OpenBLAS")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: time.perf_counter; cpu: time.process_time (all threads' CPU time)")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    parser.add_argument("--im2col", action="store_true",
                        help="send 3x3 stride-1 convs through im2col instead of Winograd's algorithm")
    args = parser.parse_args()
    # OpenBLAS and Numba read their thread counts when first imported
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["NUMBA_NUM_THREADS"] = str(args.threads)

    import numba
    import torch

    import tinymaskrcnn  # noqa: F401  (chooses Numba's thread pool before anything starts one)

    from tinymaskrcnn.functional import conv_schedule

    conv_schedule.WINOGRAD = not args.im2col
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"float32, batch 1, median of {args.repeats} ({args.clock} clock); threads: torch "
          f"{torch.get_num_threads()}, numba {numba.get_num_threads()}, cores {os.cpu_count()}; "
          f"load average before: {os.getloadavg()[0]:.2f}; 3x3 stride-1 convs by "
          f"{'Winograd F(2x2, 3x3)' if conv_schedule.WINOGRAD else 'im2col'}")
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
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
