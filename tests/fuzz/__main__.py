"""A fuzzing campaign from the command line, from the repository's root:

    python -m tests.fuzz --reader pth --cases 10000 --seed 1 --out fuzz-out

``--reader all`` runs every reader in turn. Writes ``OUT/<reader>.json`` (outcomes by class, the
largest memory-to-size ratio, every finding with its count and place) and each finding's file,
minimized, in ``OUT/findings/<reader>/`` (beside the file it was found as, ``*.original.*``);
``--regressions tests/fuzz/findings`` also adds the minimized files to the tests' regression
folder. One case at a time: each may use up to its memory bound (ten times its size plus 200 MB).
"""
import argparse
import sys

from .harness import campaign, summary
from .readers import READERS, SeedsUnavailable


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reader", required=True, choices=(*READERS, "all"))
    parser.add_argument("--cases", type=int, default=1000, help="cases per reader (default 1000)")
    parser.add_argument("--seed", type=int, default=1, help="case i of a seed is the same file on every run")
    parser.add_argument("--out", required=True, help="folder for the reports and findings")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds a case may take (default 10)")
    parser.add_argument("--minimize-seconds", type=float, default=30.0,
                        help="time spent shrinking each finding (default 30)")
    parser.add_argument("--regressions", help="also keep the minimized findings here (e.g. tests/fuzz/findings)")
    args = parser.parse_args(argv)
    reports = []
    for name in READERS if args.reader == "all" else (args.reader,):
        try:
            reports.append(campaign(READERS[name](), args.cases, args.seed, args.out, args.timeout,
                                    args.minimize_seconds, args.regressions, log=print))
        except SeedsUnavailable as e:
            print(f"{name}: skipped: {e}", file=sys.stderr)
            continue
        for finding in reports[-1]["findings"]:
            print(f"  {finding['count']:6d} x {finding['class']:7s} {finding['type']} at {finding['line']}: "
                  f"{finding['message'][:120]!r} -> {finding['file']}")
    print(summary(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
