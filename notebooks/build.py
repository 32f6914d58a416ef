"""Build the chapter notebooks from their sources and store them executed.

    python notebooks/build.py              # every chapter
    python notebooks/build.py 05 06_anchors   # the chapters whose names start so

Each chapter is written as a plain Python file, `notebooks/src/NN_name.py`, in the "percent"
format that editors and jupytext understand: a line `# %%` starts a code cell, `# %% [markdown]`
a text cell (its lines commented out with `# `), and `# %% [solution]` an exercise's solution,
stored collapsed so the learner reveals it when ready. Sources review and diff as code; this
script turns each into `notebooks/NN_name.ipynb`, runs it top to bottom in a fresh kernel with
`TINYMASKRCNN_QUICK=1` (the tiny settings the tests use) and stores it with its outputs, so the
pictures show on a repository page before anyone runs anything. `--full` runs the learner's
settings instead, and first trains the main job (`tinymaskrcnn train`, 10 to 12 minutes on two
cores) into runs/chapters when no finished shapes run is under runs/: chapters 4 and 11-14 show
that trained model (tinymaskrcnn/chapters/trained.py). Quick mode shows random weights, unless
`TINYMASKRCNN_TRAINED_RUN=runs/<run>` names a run to show; every picture's title says which.
tests/test_notebooks.py checks that every stored notebook matches its source
and ran without error.
"""
import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbclient
import nbformat

NOTEBOOKS = Path(__file__).resolve().parent
SOURCES = NOTEBOOKS / "src"
_CELL_MARK = re.compile(r"^# %%(?: \[(markdown|solution)\])?\s*$")


def sources():
    return sorted(SOURCES.glob("[0-9][0-9]_*.py"))


def stored_path(source):
    return NOTEBOOKS / (Path(source).stem + ".ipynb")


def _markdown_line(line):
    if line.startswith("# "):
        return line[2:]
    if line.rstrip() in ("#", ""):
        return ""
    raise ValueError(f"a markdown line must start with '# ' (or be '#' or empty): {line!r}")


def parse(source):
    """The notebook (not executed) that the percent-format file ``source`` describes."""
    cells, kind, lines = [], None, []

    def close():
        text = "\n".join(lines).strip("\n")
        if kind is None:
            if text.strip():
                raise ValueError(f"{source}: text before the first '# %%' line")
            return
        if kind == "markdown":
            cell = nbformat.v4.new_markdown_cell(text)
        else:
            cell = nbformat.v4.new_code_cell(text)
            if kind == "solution":
                cell.metadata = {"tags": ["solution"], "jupyter": {"source_hidden": True}}
        cell.id = f"cell-{len(cells)}"
        cells.append(cell)

    for n, line in enumerate(Path(source).read_text(encoding="utf-8").splitlines(), 1):
        mark = _CELL_MARK.match(line)
        if mark:
            close()
            kind, lines = mark.group(1) or "code", []
        else:
            try:
                lines.append(_markdown_line(line) if kind == "markdown" else line)
            except ValueError as e:
                raise ValueError(f"{source}:{n}: {e}") from None
    close()
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    return nb


def execute(nb, quick=True, timeout=600):
    """Run ``nb`` in place in a fresh kernel whose folder is notebooks/; returns the seconds taken."""
    os.environ["TINYMASKRCNN_QUICK"] = "1" if quick else "0"
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the cell on any error
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", help="name prefixes (default: every chapter)")
    parser.add_argument("--full", action="store_true", help="the learner's settings instead of TINYMASKRCNN_QUICK=1")
    args = parser.parse_args(argv)
    chosen = [s for s in sources() if not args.chapters or any(s.stem.startswith(c) for c in args.chapters)]
    if not chosen:
        parser.error(f"no chapter in {SOURCES} starts with {' or '.join(args.chapters)}")
    if args.full:
        from tinymaskrcnn.chapters.trained import RUN_VARIABLE, ensure_trained_run

        os.environ[RUN_VARIABLE] = str(ensure_trained_run())   # the kernels inherit it
    total = 0.0
    for source in chosen:
        nb = parse(source)
        seconds = execute(nb, quick=not args.full)
        total += seconds
        nbformat.write(nb, stored_path(source))
        size = stored_path(source).stat().st_size
        print(f"{source.stem:28s} {seconds:6.1f} s  {size / 1e6:5.2f} MB", flush=True)
    print(f"{'total':28s} {total:6.1f} s")


if __name__ == "__main__":
    sys.exit(main())
