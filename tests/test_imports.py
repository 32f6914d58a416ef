"""No import cycle inside tinymaskrcnn: the import graph of the package's modules, read from the
source files, is acyclic. And no module (nor a notebook's source) imports or reads another module's
private ``_name``: what others need is made public or moved.

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


def _from_target(node, package):
    """The absolute module that ``from <target> import ...`` (an ast.ImportFrom) names."""
    if not node.level:
        return node.module
    base = package.split(".")[:len(package.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


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
                target = _from_target(node, package)
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
    assert "tinymaskrcnn.functional.conv" in graph and "tinymaskrcnn.kernels.im2col" in graph
    assert "tinymaskrcnn.kernels.im2col" in graph["tinymaskrcnn.functional.conv"]
    assert "tinymaskrcnn.optim" in graph["tinymaskrcnn"]  # "from . import optim" names the submodule
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


def _is_private(name):
    return name.startswith("_") and not name.startswith("__")


def private_uses(path, modules, own=None, package=""):
    """``(line, "module._name")`` for each private name of a module in ``modules`` other than
    ``own`` that the source at ``path`` imports (``from m import _x``) or reads (``m._x``, also
    through ``import pkg as p; p.m._x`` or ``importlib.import_module("m")._x``)."""
    tree = ast.parse(path.read_text(), str(path))
    bound, found = {}, []  # local name -> the module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:  # "import a.b" binds a, "import a.b as c" binds c to a.b
                    top = alias.name.split(".")[0]
                    bound[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom):
            target = _from_target(node, package)
            for alias in node.names:
                if f"{target}.{alias.name}" in modules:
                    bound[alias.asname or alias.name] = f"{target}.{alias.name}"
                elif target in modules and target != own and _is_private(alias.name):
                    found.append((node.lineno, f"{target}.{alias.name}"))

    def module_of(node):
        if isinstance(node, ast.Name):
            return bound.get(node.id)
        if isinstance(node, ast.Attribute):
            parent = module_of(node.value)
            return parent and (f"{parent}.{node.attr}" if f"{parent}.{node.attr}" in modules else None)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
                and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value in modules):
            return node.args[0].value
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            module = module_of(node.value)
            if module is not None and module != own:
                found.append((node.lineno, f"{module}.{node.attr}"))
    return sorted(found)


def test_no_module_uses_another_modules_private_names():
    modules = _modules(PACKAGES)
    found = {}
    for module, (path, is_package) in modules.items():
        package = module if is_package else module.rpartition(".")[0]
        found.update({f"{path.relative_to(REPO)}:{line}": name
                      for line, name in private_uses(path, modules, own=module, package=package)})
    for path in sorted((REPO / "notebooks" / "src").glob("*.py")):
        found.update({f"{path.relative_to(REPO)}:{line}": name for line, name in private_uses(path, modules)})
    assert not found, f"private names used outside their module (make them public or move them): {found}"


def test_private_uses_are_found(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def _g():\n    pass\n\ndef h():\n    return _g()\n")
    (pkg / "a.py").write_text("from .sub.b import _g, h\nfrom .sub import b\n\nb._g()\nb.h.__name__\nh._private\n")
    (pkg / "nb.py").write_text("import importlib\nimport pkg as p\nimport pkg.sub.b\n"
                               "p.sub.b._g()\npkg.sub.b._g\nimportlib.import_module('pkg.sub.b')._g\n")
    modules = _modules([(pkg, "pkg")])
    assert private_uses(pkg / "a.py", modules, own="pkg.a", package="pkg") == [(1, "pkg.sub.b._g"), (4, "pkg.sub.b._g")]
    assert private_uses(pkg / "sub" / "b.py", modules, own="pkg.sub.b", package="pkg.sub") == []
    assert private_uses(pkg / "nb.py", modules) == [(4, "pkg.sub.b._g"), (5, "pkg.sub.b._g"), (6, "pkg.sub.b._g")]
