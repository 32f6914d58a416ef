"""What the notebook chapters share: quick mode, the optional torch reference, exercise checks.

Every chapter in `notebooks/` imports this module, so that

* `QUICK` (set by `TINYMASKRCNN_QUICK=1`, as the tests and `notebooks/build.py` do) picks the tiny
  settings that run a chapter in under a minute on two cores;
* `reference()` hands a chapter torch (and makes sure torchvision imports) or tells the learner
  the comparison is skipped, except under `REQUIRE_REFERENCE=1` (as CI sets), where a missing
  torch is an error;
* `exercise` turns a `check_...` function into one a learner can call on an unfinished answer:
  a stub that raises NotImplementedError is reported as "not attempted", a wrong answer fails
  with the check's own message, and `rejects` shows in each solution that the check can fail;
* `scratch()` gives a chapter a folder for its files (data sets, checkpoints of hundreds of MB,
  run folders) that is removed when the chapter's Python exits.
"""
import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

QUICK = os.environ.get("TINYMASKRCNN_QUICK") == "1"


def quick(small, full):
    """``small`` in quick mode (tests, stored outputs), ``full`` when a learner runs the chapter."""
    return small if QUICK else full


def scratch():
    """A new folder for a chapter's files, removed when the chapter's kernel exits."""
    folder = tempfile.mkdtemp(prefix="tinymaskrcnn-chapter-")
    atexit.register(shutil.rmtree, folder, True)
    return Path(folder)


def reference():
    """torch with torchvision importable, or None (printed) when they are not installed."""
    try:
        import torch
        import torchvision  # noqa: F401
    except ImportError as e:
        if os.environ.get("REQUIRE_REFERENCE") == "1":
            raise RuntimeError(f"this cell compares with torch, which REQUIRE_REFERENCE=1 requires: {e}") from e
        print("torch/torchvision are not installed: the comparison with torch is skipped "
              "(pip install -e '.[reference]' to run it).")
        return None
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return torch


def exercise(check):
    """Decorate ``check_x(answer)``: it raises AssertionError (with a hint) when ``answer`` is wrong.

    The decorated check returns True when the answer passes, and None after printing a reminder
    when the answer is still the stub (it raised NotImplementedError).
    """
    @functools.wraps(check)
    def run(answer):
        try:
            check(answer)
        except NotImplementedError:
            print(f"{check.__name__}: not attempted yet. Write your answer in the cell above, "
                  "or reveal the solution below it.")
            return None  # not False: a notebook would print it under the learner's cell
        print(f"{check.__name__}: correct.")
        return True
    return run


def rejects(check, wrong_answer):
    """Assert that ``check`` (an `exercise`) fails on ``wrong_answer``: a check that cannot fail proves nothing."""
    try:
        check.__wrapped__(wrong_answer)
    except AssertionError as e:
        print(f"{check.__name__} rejects a wrong answer: {e}")
        return True
    raise AssertionError(f"{check.__name__} accepted a wrong answer")
