"""The package installs as the design says: kernels/ as tinymaskrcnn.kernels, the README's
commands are the ones CI runs, the console script exists."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci_lines = [l.strip() for l in (ROOT / ".ci/run").read_text().splitlines()]
    command = 'pip install -e ".[dev,reference]" && python -m pytest -q tests'
    assert command in readme
    assert command in ci_lines
    assert "export REQUIRE_REFERENCE=1" in ci_lines


def test_kernels_import_as_a_subpackage():
    import tinymaskrcnn.kernels.im2col as k

    assert Path(k.__file__).parent.name == "kernels"


def test_wheel_installs_kernels_under_tinymaskrcnn(tmp_path):
    pytest.importorskip("setuptools")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("tinymaskrcnn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "tinymaskrcnn/kernels/im2col.py" in names
    assert "tinymaskrcnn/kernels/cuda/roi_align.py" in names
    assert not any(n.startswith("kernels/") for n in names)  # a registry package has that name
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tinymaskrcnn = tinymaskrcnn.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
