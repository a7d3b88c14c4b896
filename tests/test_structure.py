"""Module boundaries a newcomer can trust: one direction between packages, no import circle inside a package, no
private name borrowed across modules, no function too long to read at once (MAX_FUNCTION_LINES).

The direction, in one line: imports point back along the data flow teacher -> distill -> export (a package imports
only those before it), `runtime` ships alone and imports none of them, every package may import the runtime's shared
core (CORE below), and `benchmarks` imports anything while nothing imports it. The one exception is named in
EXCEPTIONS: the torch backend's lazy load of the student.

The imports are read from the source (ast), not executed, so every import counts: module level, inside functions
(a lazy import is still a dependency a reader has to follow) and in `try` blocks; only `if TYPE_CHECKING:` blocks
are skipped, since they never run. A circle is reported as the modules on it; a private import as
`module:line imports _name from other.module`.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("teacher", "distill", "export", "runtime", "benchmarks")
# export/cli.py lends _echo/_load/_set_threads/_write_report to quantize.py and tensorrt_build.py, which it imports:
# fixed on another branch. Remove this mark once that branch is merged.
PENDING: dict = {}


def module_files(root: Path = REPO) -> dict[str, Path]:
    """{dotted module name: file} for every module of the project's packages under root."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _parse(path: Path) -> ast.Module:
    return _parse_source(path.read_text(encoding="utf-8"), str(path))


@functools.lru_cache(maxsize=None)
def _parse_source(text: str, filename: str) -> ast.Module:
    return ast.parse(text, filename=filename)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import/ImportFrom node that can run (the bodies of `if TYPE_CHECKING:` cannot)."""
    for node, _ in _scoped_import_nodes(tree):
        yield node


def _scoped_import_nodes(tree: ast.AST):
    """(node, lazy) for every Import/ImportFrom node that can run; lazy when it sits inside a function."""
    stack = [(tree, False)]
    while stack:
        node, lazy = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend((child, lazy) for child in node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, lazy
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        stack.extend((child, inner) for child in ast.iter_child_nodes(node))


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` names (resolving relative imports)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[:len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, str | None]]:
    """[(imported project module, line, imported name or None)] of one module. `from pkg import sub` where `sub` is
    a module counts as importing `pkg.sub`; any other name counts as importing `pkg` itself."""
    return [(target, line, name) for target, line, name, _ in scoped_imports_of(module, path, modules)]


def scoped_imports_of(module: str, path: Path,
                      modules: dict[str, Path]) -> list[tuple[str, int, str | None, bool]]:
    """imports_of with a fourth field: True when the import runs inside a function (lazy)."""
    tree = _parse(path)
    found = []
    for node, lazy in _scoped_import_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    found.append((alias.name, node.lineno, None, lazy))
            continue
        source = _absolute(module, path, node)
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            if submodule in modules:
                found.append((submodule, node.lineno, None, lazy))
            elif source in modules:
                found.append((source, node.lineno, alias.name, lazy))
    return sorted(found, key=lambda item: item[1])


def import_graph(package: str, root: Path = REPO) -> dict[str, set[str]]:
    """{module: modules of the same package it imports} for one package."""
    modules = module_files(root)
    inside = {name for name in modules if name.split(".")[0] == package}
    return {name: {target for target, _, _ in imports_of(name, modules[name], modules)
                   if target in inside and target != name}
            for name in sorted(inside)}


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def private_imports(package: str, root: Path = REPO) -> list[str]:
    """`module:line imports _name from other` for every private name a module of `package` takes from another
    project module (by `from other import _name`, or as `other._name` on an imported project module)."""
    modules = module_files(root)
    problems = []
    for name, path in modules.items():
        if name.split(".")[0] != package:
            continue
        for target, line, imported in imports_of(name, path, modules):
            if imported and _private(imported) and target != name:
                problems.append(f"{path.relative_to(root).as_posix()}:{line} imports {imported} from {target}")
        problems += _private_attributes(name, path, modules, root)
    return problems


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_attributes(name: str, path: Path, modules: dict[str, Path], root: Path) -> list[str]:
    """`alias._name` where alias is bound to another project module by an import in this file."""
    tree = _parse(path)
    aliases: dict[str, str] = {}
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in modules:
                    aliases[alias.asname] = alias.name
        else:
            source = _absolute(name, path, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
            target = aliases.get(node.value.id)
            if target and target != name:
                found.append(f"{path.relative_to(root).as_posix()}:{node.lineno} uses {node.attr} of {target}")
    return found


# ------------------------------------------------------------------------------------------- between packages
FLOW = ("teacher", "distill", "export")   # data flows left to right; each may import only those before it
SHIPPED = "runtime"                       # ships to the device alone: imports none of FLOW (but see EXCEPTIONS)
TOP = "benchmarks"                        # imports anything; nothing imports it
# The runtime's shared core: every package may import these. They import only each other, so the core stays small.
CORE = {
    "runtime": "the package itself, only as `import runtime` (its names load lazily): where runtime/models/ lies",
    "runtime.errors": "FusionError, require(): errors for people and the missing-extra message",
    "runtime.config": "typed configs from YAML with key=value overrides",
    "runtime.imageio": "reading and writing images, pairs, JSON and text (atomically)",
    "runtime.color": "BT.601 luminance/chroma split and merge",
    "runtime.timing": "timing models (ONNX Runtime sessions, interleaved rounds, p50/p90): distill, export and "
                      "benchmarks measure latency the same way",
    "runtime.backends.tensorrt_engine": "the TensorRT engine runner: export checks each engine it builds with the "
                                        "code the device runs",
}
# (file, imported module) -> why. Each must be a lazy import (inside a function) and must still exist.
EXCEPTIONS = {
    ("runtime/backends/base.py", "distill.models"): "the torch backend loads the student only when it is asked for",
}


def _core(target: str, imported: str | None) -> bool:
    """`from runtime import FusionPipeline` reaches runtime.pipeline through the lazy table: not the core."""
    return target in CORE and (target != "runtime" or imported is None)


def direction_problems(root: Path = REPO) -> tuple[list[str], set]:
    """(`file:line: ...` for each import between packages that breaks the rule, the EXCEPTIONS entries used)."""
    modules = module_files(root)
    problems, used = [], set()
    for name, path in modules.items():
        source, rel = name.split(".")[0], path.relative_to(root).as_posix()
        names: dict[tuple[str, int, bool], list] = {}    # one report per import line and module, names joined
        for target, line, imported, lazy in scoped_imports_of(name, path, modules):
            names.setdefault((target, line, lazy), []).append(imported)
        for (target, line, lazy), imported_names in names.items():
            package = target.split(".")[0]
            imported = ", ".join(sorted(n for n in imported_names if n)) or None
            where = f"{rel}:{line}: {source} imports {target}" + (f" ({imported})" if imported else "")
            if package == source:
                if name in CORE and not _core(target, imported):
                    problems.append(f"{where}, but a core module imports only core modules")
                continue
            if package == TOP:
                problems.append(f"{where}, but nothing imports {TOP}")
            elif source == TOP or _core(target, imported):
                continue
            elif source == SHIPPED:
                exception = next(((file, module) for file, module in EXCEPTIONS
                                  if file == rel and (target + ".").startswith(module + ".")), None)
                if exception and lazy:
                    used.add(exception)
                else:
                    problems.append(f"{where}, but {SHIPPED} ships alone and imports nothing from "
                                    f"{', '.join(FLOW)} (only the core of its own)")
            elif package == SHIPPED:
                problems.append(f"{where}, but only the runtime's core ({', '.join(sorted(CORE))}) may be imported "
                                f"from {SHIPPED}")
            elif FLOW.index(package) > FLOW.index(source):
                problems.append(f"{where}, but {package} comes after {source} in {' -> '.join(FLOW)} and imports "
                                f"point back along the flow")
    return problems, used


def test_the_walker_sees_imports_against_the_direction(tmp_path):
    """The direction check itself, on a planted tree: every kind of break is named with its file and line; lazy
    imports count; the allowed imports pass."""
    files = {
        "teacher/__init__.py": "", "teacher/a.py": "from runtime.errors import FusionError\n",
        "distill/__init__.py": "", "distill/b.py": "import teacher.a\ndef f():\n    import benchmarks.c\n",
        "export/__init__.py": "", "export/d.py": "from distill import b\nfrom runtime.backends import tensorrt_engine\n",
        "runtime/__init__.py": "", "runtime/errors.py": "", "runtime/config.py": "from runtime import stages\n",
        "runtime/stages.py": "def f():\n    from export import d\n",
        "runtime/backends/__init__.py": "", "runtime/backends/tensorrt_engine.py": "from runtime import errors\n",
        "runtime/backends/base.py": "def load():\n    from distill.models import load\n",
        "distill/models/__init__.py": "import runtime\nfrom runtime import FusionPipeline\n",
        "benchmarks/__init__.py": "", "benchmarks/c.py": "import teacher.a, distill.b, export.d, runtime.stages\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    problems, used = direction_problems(tmp_path)
    assert [p.split(", ")[0] for p in problems] == [
        "distill/b.py:3: distill imports benchmarks.c",
        "distill/models/__init__.py:2: distill imports runtime (FusionPipeline)",
        "runtime/config.py:1: runtime imports runtime.stages",
        "runtime/stages.py:2: runtime imports export.d"]
    assert used == set(EXCEPTIONS)
    (tmp_path / "teacher/a.py").write_text("from distill.b import f\n")
    (tmp_path / "runtime/backends/base.py").write_text("from distill.models import load\n")
    problems, used = direction_problems(tmp_path)
    assert "teacher/a.py:1: teacher imports distill.b (f), but distill comes after teacher in " \
           "teacher -> distill -> export and imports point back along the flow" in problems
    assert any(p.startswith("runtime/backends/base.py:1: runtime imports distill.models") for p in problems)
    assert used == set()


def test_imports_between_packages_follow_one_direction():
    problems, used = direction_problems()
    assert not problems, "imports against the one direction (see the module docstring and docs/architecture.md; " \
                         "move the code to the package it belongs to):\n" + "\n".join(problems)
    stale = [f"{file} -> {module}" for file, module in EXCEPTIONS if (file, module) not in used]
    assert not stale, "named exceptions that no longer happen (remove them from EXCEPTIONS): " + "; ".join(stale)
    missing = [name for name in CORE if name not in module_files()]
    assert not missing, "core modules that do not exist (update CORE): " + ", ".join(missing)


# ------------------------------------------------------------------------------------------------------ the checker
def test_the_walker_sees_circles_and_private_imports(tmp_path):
    """The checks themselves: a planted circle and a planted private import are reported, a clean tree is not."""
    package = tmp_path / "teacher"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from teacher.b import helper\n")
    (package / "b.py").write_text("def helper():\n    from .sub import c\n")
    (package / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                          "    from teacher import a\n")
    assert import_circles(import_graph("teacher", tmp_path)) == []
    assert private_imports("teacher", tmp_path) == []
    (package / "sub" / "c.py").write_text("def late():\n    from ..a import _table\n")
    assert import_circles(import_graph("teacher", tmp_path)) == [["teacher.a", "teacher.b", "teacher.sub.c"]]
    assert private_imports("teacher", tmp_path) == ["teacher/sub/c.py:2 imports _table from teacher.a"]
    (package / "sub" / "c.py").write_text("import teacher.a as table\nx = table._rows\ny = table.__doc__\n")
    assert private_imports("teacher", tmp_path) == ["teacher/sub/c.py:2 uses _rows of teacher.a"]


# ------------------------------------------------------------------------------------------------------ the project
@pytest.mark.parametrize("package", [pytest.param(p, marks=PENDING.get(p, ())) for p in PACKAGES])
def test_no_import_circle_inside_a_package(package):
    circles = import_circles(import_graph(package))
    assert not circles, f"import circles in {package}/ (give the shared code one owner module): " + \
        "; ".join(" <-> ".join(c) for c in circles)


@pytest.mark.parametrize("package", [pytest.param(p, marks=PENDING.get(p, ())) for p in PACKAGES])
def test_no_private_name_taken_from_another_module(package):
    problems = private_imports(package)
    assert not problems, f"private names used across modules in {package}/ (make them public in one owner " \
                         f"module): " + "; ".join(problems)


# ---------------------------------------------------------------------------------------------------------- the tests
def borrowed_names_in_tests(root: Path = REPO) -> list[str]:
    """`tests/x.py:line ...` for each test file that takes a private name of a project module (`from m import _y`,
    `m._y`), or anything from conftest or another test module: shared helpers belong in tests/helpers.py and fixtures
    in conftest.py, where pytest hands them over by name."""
    modules = module_files(root)
    problems = []
    for path in sorted((root / "tests").glob("*.py")):
        name, rel = f"tests.{path.stem}", path.relative_to(root).as_posix()
        problems += [f"{rel}:{line} imports {imported} from {target}"
                     for target, line, imported in imports_of(name, path, modules) if imported and _private(imported)]
        problems += _private_attributes(name, path, modules, root)
        tree, borrowed = _parse(path), []
        for node in _import_nodes(tree):
            if isinstance(node, ast.Import):
                borrowed += [(node.lineno, alias.name) for alias in node.names]
            elif not node.level:
                borrowed.append((node.lineno, node.module or ""))
        if "__import__(" in path.read_text(encoding="utf-8"):    # walk only the few files that may call it
            borrowed += [(node.lineno, node.args[0].value) for node in ast.walk(tree)
                         if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                         and node.func.id == "__import__" and node.args and isinstance(node.args[0], ast.Constant)
                         and isinstance(node.args[0].value, str)]
        for line, module in sorted(borrowed):
            top = module.split(".")[0]
            if top == "conftest" or top.startswith("test_"):
                problems.append(f"{rel}:{line} imports from {top}")
    return problems


def test_the_walker_sees_what_tests_borrow(tmp_path):
    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "__init__.py").write_text("")
    (tmp_path / "runtime" / "util.py").write_text("def _hidden():\n    pass\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("from helpers import wait_until\nfrom runtime.util import "
                                                  "_hidden\nimport runtime.util as util\nx = util._hidden\n")
    (tmp_path / "tests" / "test_b.py").write_text("from conftest import DATA\ndef f():\n    from test_a import x\n"
                                                  "    return __import__('conftest').y\n")
    assert borrowed_names_in_tests(tmp_path) == [
        "tests/test_a.py:2 imports _hidden from runtime.util", "tests/test_a.py:4 uses _hidden of runtime.util",
        "tests/test_b.py:1 imports from conftest", "tests/test_b.py:3 imports from test_a",
        "tests/test_b.py:4 imports from conftest"]


def test_tests_use_public_names_and_shared_helpers():
    problems = borrowed_names_in_tests()
    assert not problems, "tests borrowing names (make the name public in its owner module or test through the " \
                         "public function; move shared helpers to tests/helpers.py): " + "; ".join(problems)


# ------------------------------------------------------------------------------------------------- function length
MAX_FUNCTION_LINES = 120
# "path:qualified.name" -> why it may be longer. Empty on purpose: a long function is cut by naming its steps.
LONG_FUNCTIONS: dict[str, str] = {}


def long_functions(root: Path = REPO, limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """{"path:qualified.name": lines} for each function or method of the packages longer than `limit` lines, counted
    from its `def` to its last line (docstring and comments included; a nested function counts inside its parent and
    on its own)."""
    found = {}
    for path in module_files(root).values():
        rel = path.relative_to(root).as_posix()
        stack = [(node, "") for node in _parse(path).body]
        while stack:
            node, prefix = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{node.name}"
                lines = node.end_lineno - node.lineno + 1
                if not isinstance(node, ast.ClassDef) and lines > limit:
                    found[f"{rel}:{name}"] = lines
                stack.extend((child, f"{name}.") for child in ast.iter_child_nodes(node))
            else:
                stack.extend((child, prefix) for child in ast.iter_child_nodes(node))
    return dict(sorted(found.items()))


def test_the_walker_measures_functions_and_methods(tmp_path):
    def lines(indent: int, count: int) -> str:
        return "".join(f"{' ' * indent}x{i} = {i}\n" for i in range(count))

    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "__init__.py").write_text("")
    (tmp_path / "export" / "a.py").write_text(
        "def short():\n" + lines(4, 119) +                                       # 120 lines: allowed
        "class Job:\n    def run(self):\n" + lines(8, 120) +
        "if True:\n    def outer():\n        def inner():\n" + lines(12, 120) + "        return inner\n")
    assert long_functions(tmp_path) == {"export/a.py:Job.run": 121, "export/a.py:outer": 123,
                                        "export/a.py:outer.inner": 121}


def test_no_function_is_longer_than_the_limit():
    found = long_functions()
    long = [f"{name} ({lines} lines)" for name, lines in found.items() if name not in LONG_FUNCTIONS]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (cut them by naming their steps, or name the " \
                     f"exception and why in LONG_FUNCTIONS): " + "; ".join(long)
    stale = [name for name in LONG_FUNCTIONS if name not in found]
    assert not stale, "LONG_FUNCTIONS entries that are no longer long (remove them): " + "; ".join(stale)
