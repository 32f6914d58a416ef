"""No import cycle inside tinymaskrcnn: the import graph of the package's modules, read from the
source files, is acyclic.

Every import counts, also one inside a function: deferring an import hides a cycle from the
interpreter, not from a reader, who still cannot read either module without the other.
``from pkg import name`` depends on the submodule ``pkg.name`` when there is one, else on ``pkg``.
"""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# kernels/ sits at the top of the repository and is installed as tinymaskrcnn.kernels
PACKAGES = ((REPO / "tinymaskrcnn", "tinymaskrcnn"), (REPO / "kernels", "tinymaskrcnn.kernels"))


def _modules(packages):
    """{dotted module name: (source path, is a package's __init__)}."""
    modules = {}
    for folder, name in packages:
        for path in folder.rglob("*.py"):
            parts = [name, *path.relative_to(folder).with_suffix("").parts]
            is_package = parts[-1] == "__init__"
            modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def import_graph(packages):
    """{module: set of the package's modules it imports}."""
    modules = _modules(packages)
    graph = {}
    for module, (path, is_package) in modules.items():
        package = module if is_package else module.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module
                for alias in node.names:
                    if f"{target}.{alias.name}" in modules:
                        deps.add(f"{target}.{alias.name}")
                    elif target in modules:
                        deps.add(target)
        graph[module] = deps - {module}
    return graph


def cycles(graph):
    """The strongly connected components of more than one module (each holds a cycle), sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_package_has_no_import_cycle():
    graph = import_graph(PACKAGES)
    assert "tinymaskrcnn.ops.conv" in graph and "tinymaskrcnn.kernels.im2col" in graph
    assert "tinymaskrcnn.ops.conv_schedule" in graph["tinymaskrcnn.ops.conv"]
    found = cycles(graph)
    assert not found, f"modules that import each other (through a chain): {found}; move what they share apart"


def test_a_cycle_through_a_deferred_import_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from .sub import b\n\ndef f():\n    return b.g()\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def g():\n    from .. import a\n    return a\n")
    (pkg / "c.py").write_text("import pkg.a\nfrom pkg.sub import b\n")
    graph = import_graph([(pkg, "pkg")])
    assert graph["pkg.c"] == {"pkg.a", "pkg.sub.b"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]
