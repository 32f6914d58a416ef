"""A fuzzing harness for every reader of files from outside: ``.pth`` weights, ``.npz``
checkpoints, COCO instances files, images, a run's metrics.jsonl.

``mutators`` turns valid files into hostile ones, ``readers`` says what each reader reads and
from which seeds, ``harness`` runs each file in a forked child with a memory cap and a timeout
and classifies what happened. Run a campaign with ``python -m tests.fuzz`` (see
docs/untrusted-files.md); tests/test_fuzz.py runs a short one in CI.
"""
