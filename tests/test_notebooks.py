"""The chapters: each source runs top to bottom on tiny settings, and its stored notebook is that run.

`notebooks/build.py` writes the stored notebooks; these tests fail when a stored notebook is stale
(its cells differ from the source), was stored unexecuted or with an error, or grew past 3 MB,
and when a chapter lacks its exercises (at least two solutions, each calling its check and
showing with `rejects` that the check fails on a wrong answer).
"""
import importlib.util
from pathlib import Path

import nbformat
import pytest

from tinymaskrcnn import chapters

_spec = importlib.util.spec_from_file_location(
    "notebook_build", Path(__file__).resolve().parent.parent / "notebooks" / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

SOURCES = build.sources()
IDS = [s.stem for s in SOURCES]
MAX_BYTES = 3_000_000


def _cells(nb):
    return [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in nb.cells]


@pytest.mark.parametrize("source", SOURCES, ids=IDS)
def test_stored_notebook_is_the_executed_source(source):
    stored = build.stored_path(source)
    assert stored.exists(), f"{stored.name} is missing: run python notebooks/build.py {source.stem}"
    assert stored.stat().st_size < MAX_BYTES, f"{stored.name} is {stored.stat().st_size} bytes"
    nb = nbformat.read(stored, as_version=4)
    assert _cells(nb) == _cells(build.parse(source)), \
        f"{stored.name} differs from src/{source.name}: run python notebooks/build.py {source.stem}"
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.strip():
            assert cell.execution_count is not None, f"{stored.name}: a cell was stored unexecuted:\n{cell.source[:200]}"
            errors = [o for o in cell.outputs if o.output_type == "error"]
            assert not errors, f"{stored.name}: a cell was stored with an error:\n{cell.source[:200]}"


@pytest.mark.parametrize("source", SOURCES, ids=IDS)
def test_chapter_has_exercises_with_checks_that_can_fail(source):
    solutions = [c.source for c in build.parse(source).cells if "solution" in c.metadata.get("tags", [])]
    assert len(solutions) >= 2, f"{source.name} has {len(solutions)} exercise solutions; a chapter needs two"
    for text in solutions:
        assert "check_" in text and "rejects(" in text, \
            f"{source.name}: a solution must call its check_... function and show it rejecting a wrong answer:\n{text[:300]}"


@pytest.mark.parametrize("source", SOURCES, ids=IDS)
def test_chapter_runs(source, monkeypatch):
    monkeypatch.setenv("TINYMASKRCNN_QUICK", "1")
    nb = build.parse(source)
    build.execute(nb)  # CellExecutionError names the failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors


def test_parse_reads_the_percent_format(tmp_path):
    src = tmp_path / "01_x.py"
    src.write_text("# %% [markdown]\n# # Title\n#\n# text\n\n# %%\nx = 1\n\n# %% [solution]\ncheck_x(x)\n")
    nb = build.parse(src)
    assert [(c.cell_type, c.source) for c in nb.cells] == [
        ("markdown", "# Title\n\ntext"), ("code", "x = 1"), ("code", "check_x(x)")]
    assert nb.cells[2].metadata["tags"] == ["solution"] and nb.cells[2].metadata["jupyter"]["source_hidden"]
    src.write_text("# %% [markdown]\nnot commented\n")
    with pytest.raises(ValueError, match="01_x.py:2"):
        build.parse(src)


def test_exercise_reports_a_stub_passes_a_right_answer_and_fails_a_wrong_one(capsys):
    @chapters.exercise
    def check_square(f):
        assert f(3) == 9, f"square(3) should be 9, got {f(3)}"

    def stub(x):
        raise NotImplementedError

    assert check_square(stub) is None and "not attempted" in capsys.readouterr().out
    assert check_square(lambda x: x * x) is True
    with pytest.raises(AssertionError, match="should be 9"):
        check_square(lambda x: 2 * x)
    assert chapters.rejects(check_square, lambda x: 0)
    with pytest.raises(AssertionError, match="accepted a wrong answer"):
        chapters.rejects(check_square, lambda x: x ** 2)


def test_reference_is_required_under_require_reference(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    monkeypatch.setenv("REQUIRE_REFERENCE", "0")
    assert chapters.reference() is None
    monkeypatch.setenv("REQUIRE_REFERENCE", "1")
    with pytest.raises(RuntimeError, match="REQUIRE_REFERENCE"):
        chapters.reference()
