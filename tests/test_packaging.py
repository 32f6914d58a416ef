"""The package installs as the design says: kernels/ as tinymaskrcnn.kernels, the README's
commands are the ones CI runs, the console script exists, and an installed package started from
the repository root (where the source tree's tinymaskrcnn/ has no kernels) starts its
data-parallel MPI ranks from the installed package too."""
import os
import subprocess
import sys
import textwrap
import venv
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


def test_ci_runs_the_readme_first_command():
    """.ci/run runs the README's first command word for word, with flags for a short run added."""
    command = "pip install . && tinymaskrcnn train"
    assert f"\n    {command}\n" in (ROOT / "README.md").read_text()
    ci_lines = [l.strip() for l in (ROOT / ".ci/run").read_text().splitlines()]
    assert any(line == command or line.startswith(command + " --") for line in ci_lines)


def test_editable_installs_go_through_pep_660():
    """Without a build-system table pip (23.x) installs `pip install -e .` with the legacy
    `setup.py develop` wherever the wheel package is present; that install ignores package_dir,
    and `import tinymaskrcnn` then fails for want of tinymaskrcnn.kernels (seen in a dev venv)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    assert build["build-backend"] == "setuptools.build_meta"
    assert any(r.replace(" ", "").startswith("setuptools>=64") for r in build["requires"])  # PEP 660 editables


def test_kernels_import_as_a_subpackage():
    import tinymaskrcnn.kernels.im2col as k

    assert Path(k.__file__).parent.name == "kernels"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("setuptools")
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(folder), str(ROOT)], check=True, capture_output=True)
    (path,) = folder.glob("tinymaskrcnn-*.whl")
    return path


def test_wheel_installs_kernels_under_tinymaskrcnn(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "tinymaskrcnn/kernels/im2col.py" in names
    assert "tinymaskrcnn/kernels/cuda/roi_align.py" in names
    assert not any(n.startswith("kernels/") for n in names)  # a registry package has that name
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tinymaskrcnn = tinymaskrcnn.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_package_run_from_the_repository_root_starts_its_ranks(wheel, tmp_path):
    """The README's first command: a non-editable install, run from the repository root. A fresh
    virtual environment holds the wheel's files and sees this one's dependencies through a .pth
    line (not its editable install of tinymaskrcnn, whose finder would hide the problem)."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    (purelib,) = env_dir.glob("lib/python*/site-packages")
    zipfile.ZipFile(wheel).extractall(purelib)
    # this process's import path for the dependencies, less the repository (and the tests in it)
    outside = [p for p in sys.path if p and Path(p).is_dir() and ROOT.resolve() not in Path(p).resolve().parents
               and Path(p).resolve() != ROOT.resolve()]
    (purelib / "dependencies.pth").write_text("\n".join(outside) + "\n")
    script = tmp_path / "start_ranks.py"
    script.write_text(textwrap.dedent(f"""
        import tinymaskrcnn
        from tinymaskrcnn.engine import data_parallel

        assert tinymaskrcnn.__file__.startswith({str(purelib)!r}), tinymaskrcnn.__file__
        # two ranks import the package (from the repository root) and run a function of it
        assert data_parallel.launch(data_parallel.launched_size, (), 2) == 2
        print("ranks ran")
        """))
    # mpi4py looks for the MPI library (the mpich wheel's) under its environment's prefix: show it
    # this environment's, and its mpiexec
    (libmpi,) = sorted(Path(sys.prefix).glob("lib/libmpi.so.[0-9]*"))[:1]  # libmpi.so is a linker script
    env = {**os.environ, "MPI4PY_LIBMPI": str(libmpi),
           "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
    done = subprocess.run([str(env_dir / "bin" / "python"), str(script)], cwd=ROOT, capture_output=True, text=True,
                          env=env)
    assert done.returncode == 0 and "ranks ran" in done.stdout, done.stderr
