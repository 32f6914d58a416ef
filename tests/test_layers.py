"""The folders are the layers: every module of the package belongs to one layer, and its imports
point down or sideways, never up. Deferred imports (inside a function) count as well: they hide
a dependency from the interpreter, not from a reader.

    application   data | visualize | engine | cli, chapters
    detector      ops (torchvision.ops) | models
    foundation    core | functional | nn, optim | weights (torch.load's and torch.hub's place)
    floor         kernels (Numba CPU and CUDA): arrays and dtypes in, nothing of the package

The package's face, ``tinymaskrcnn/__init__.py``, stands above all of them and names every layer,
but loads only the foundation when imported; the detector and the application on first use.
"""
import ast

import pytest

from test_imports import PACKAGES, REPO, _modules, import_graph

# From the bottom up. A module's layer is that of the longest prefix that names it; a module may
# import from its own rank or any rank below.
RANKS = (
    ("floor: kernels", ("tinymaskrcnn.kernels",)),
    ("foundation: arrays and the tape", ("tinymaskrcnn.core",)),
    ("foundation: ops", ("tinymaskrcnn.functional",)),
    ("foundation: layers and optimisers", ("tinymaskrcnn.nn", "tinymaskrcnn.optim")),
    # weights files sit where torch keeps torch.load and torch.hub: the builders load by name
    ("foundation: weights files", ("tinymaskrcnn.weights",)),
    ("detector: ops", ("tinymaskrcnn.ops",)),
    ("detector: models", ("tinymaskrcnn.models",)),
    ("application: data", ("tinymaskrcnn.data",)),
    ("application: drawing", ("tinymaskrcnn.visualize",)),
    ("application: training, evaluation and prediction", ("tinymaskrcnn.engine",)),
    ("application: the command line and the chapters", ("tinymaskrcnn.cli", "tinymaskrcnn.chapters")),
    ("the package's face", ("tinymaskrcnn",)),
)
FOUNDATION = {"foundation: arrays and the tape", "foundation: ops", "foundation: layers and optimisers"}


def rank_of(module):
    """(index, name) of the module's layer in RANKS: the longest matching prefix decides."""
    best = None
    for index, (name, prefixes) in enumerate(RANKS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[2]:
                    best = (index, name, len(prefix))
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add it to RANKS in tests/test_layers.py")
    return best[:2]


def upward_imports(graph):
    """Sorted 'a (layer) -> b (layer)' lines for every import that points to a higher rank."""
    found = []
    for module, deps in graph.items():
        here = rank_of(module)
        for dep in deps:
            there = rank_of(dep)
            if there[0] > here[0]:
                found.append(f"{module} ({here[1]}) -> {dep} ({there[1]})")
    return sorted(found)


def test_every_module_has_a_layer_and_imports_point_down():
    graph = import_graph(PACKAGES)
    assert len(graph) > 60 and "tinymaskrcnn.models.roi_heads" in graph
    for module in graph:
        rank_of(module)
    found = upward_imports(graph)
    assert not found, "imports that point up a layer (move the shared piece down, or the importer up):\n" + \
        "\n".join(found)


def test_an_upward_import_is_found(tmp_path):
    # a foundation module that reaches for the application through a deferred import
    graph = {"tinymaskrcnn.core.autograd": {"tinymaskrcnn.core.backend"},
             "tinymaskrcnn.core.backend": set(),
             "tinymaskrcnn.functional.conv": {"tinymaskrcnn.engine.loop", "tinymaskrcnn.kernels.im2col"},
             "tinymaskrcnn.engine.loop": {"tinymaskrcnn.models.rpn"},
             "tinymaskrcnn.models.rpn": set(), "tinymaskrcnn.kernels.im2col": set()}
    assert upward_imports(graph) == ["tinymaskrcnn.functional.conv (foundation: ops) -> "
                                     "tinymaskrcnn.engine.loop (application: training, evaluation and prediction)"]
    with pytest.raises(AssertionError, match="belongs to no layer"):
        rank_of("tinymaskrcnn_extra.thing")


def test_importing_the_package_loads_only_the_foundation():
    """Module-level imports of the face name only foundation modules (and the kernels they use)."""
    modules = _modules(PACKAGES)
    path, _ = modules["tinymaskrcnn"]
    eager = set()
    for node in ast.parse(path.read_text()).body:  # top-level statements only
        if isinstance(node, ast.ImportFrom):
            target = "tinymaskrcnn" + (f".{node.module}" if node.module else "") if node.level else node.module
            for alias in node.names:
                eager.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
        elif isinstance(node, ast.Import):
            eager.update(alias.name for alias in node.names if alias.name in modules)
    assert eager and all(rank_of(m)[1] in FOUNDATION for m in eager), sorted(eager)


def test_the_layers_are_drawn_as_they_are():
    """docs/architecture.md and the README's map name every top-level entry of the package."""
    entries = {p.name if p.is_dir() else p.stem for p in (REPO / "tinymaskrcnn").iterdir()
               if not p.name.startswith(("_", ".")) and (p.is_dir() or p.suffix == ".py")}
    entries.discard("__pycache__")
    for doc in ("docs/architecture.md", "README.md"):
        text = (REPO / doc).read_text()
        missing = sorted(e for e in entries if f"{e}/" not in text and f"{e}.py" not in text)
        assert not missing, f"{doc} does not name {missing}"
