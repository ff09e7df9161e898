"""The package's shape, read from its source with ``ast``: small functions, no import
circle between modules, no private name used across modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "jaxgd"
MODULES = {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(PKG.glob("*.py"))}
MAX_LINES = 100


def body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body, its docstring excluded."""
    body = fn.body
    if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        body = body[1:]
    if not body:
        return 0
    return body[-1].end_lineno - body[0].lineno + 1


def test_no_function_over_100_lines():
    long = [f"{mod}.{fn.name}: {body_lines(fn)} lines"
            for mod, tree in MODULES.items() for fn in ast.walk(tree)
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
            and body_lines(fn) > MAX_LINES]
    assert long == []


def test_body_lines_counts_without_the_docstring():
    fn = ast.parse('def f():\n    """doc\n    more"""\n    a = 1\n\n    return a\n').body[0]
    assert body_lines(fn) == 3


def imports(tree: ast.Module, mod: str, known=MODULES) -> list[tuple[str, list[str]]]:
    """(imported jaxgd module, names taken from it) for every import, at any depth."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import a, b
                out.append((node.module.split(".")[0], [a.name for a in node.names]))
            elif node.level == 1:  # from . import x
                out += [(a.name, []) for a in node.names]
            elif node.module and node.module.startswith("jaxgd."):
                out.append((node.module.split(".")[1], [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name.split(".")[1], []) for a in node.names
                    if a.name.startswith("jaxgd.")]
    return [(m, names) for m, names in out if m in known and m != mod]


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of a module graph (depth-first search for back edges)."""
    state: dict[str, int] = {}
    cycles = []

    def visit(m, path):
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return cycles


def module_graph(modules) -> dict[str, set[str]]:
    return {mod: {m for m, _ in imports(tree, mod, modules) if m != "__init__"}
            for mod, tree in modules.items() if mod != "__init__"}


def test_no_import_circle():
    assert find_cycles(module_graph(MODULES)) == []


def test_the_circle_check_finds_a_circle():
    """Function-level (lazy) imports count: they are circles all the same."""
    a = ast.parse("from .b import x\n")
    b = ast.parse("def f():\n    from .c import y\n")
    c = ast.parse("from . import a\n")
    graph = module_graph({"a": a, "b": b, "c": c})
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]


def private_uses(tree: ast.Module, mod: str) -> list[str]:
    """Private names (``_x``) taken from other jaxgd modules: imported, or read as
    ``module._x`` from an imported module."""
    found = []
    aliases = {}
    for m, names in imports(tree, mod):
        found += [f"{m}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and not node.module:
            aliases.update({(a.asname or a.name): a.name for a in node.names})
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            found.append(f"{aliases[node.value.id]}.{node.attr}")
    return found


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_no_private_name_crosses_modules(mod):
    assert private_uses(MODULES[mod], mod) == []


def test_the_private_check_finds_one():
    tree = ast.parse("from .optim import _factory_params\nfrom . import train\n"
                     "def f():\n    return train._take\n")
    assert private_uses(tree, "sweep") == ["optim._factory_params", "train._take"]


MAX_MODULE_LINES = 850
ONE_JOB = {"store"}  # the run folder's files, checksums and lock: one job, kept whole


def test_no_module_over_850_lines():
    long = [f"{p.stem}: {n} lines" for p in sorted(PKG.glob("*.py"))
            if p.stem not in ONE_JOB and (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert long == []


def test_sweep_module_holds_the_front_door_only():
    """``jaxgd/sweep.py`` is the public ``sweep`` and its argument checks; the runtime is
    in the engine, groups, axes, population and search modules."""
    defs = [n.name for n in MODULES["sweep"].body
            if isinstance(n, ast.FunctionDef | ast.ClassDef)]
    assert defs[0] == "sweep" and len(defs) <= 3 and not any(
        isinstance(n, ast.ClassDef) for n in MODULES["sweep"].body)


def test_integer_checks_live_in_checks():
    """What counts as an integer (``numbers.Integral``, not a bool) is decided in
    ``_checks.py`` (``is_int``, ``check_positive_int``, ``check_seed``, ...) only."""
    uses = [mod for mod, tree in MODULES.items() if mod != "_checks" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr == "Integral"]
    assert uses == []


def constants(tree: ast.Module) -> list[str]:
    """The string constants of a module that are not docstrings."""
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and n.body and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and id(n) not in docs]


def test_no_reserved_key_travels_with_the_hyper_parameters():
    """The loss key's words and the padding mask are fields of ``spec.Traced``, not keys
    of the traced hyper-parameters' dict."""
    found = [f"{mod}: {c!r}" for mod, tree in MODULES.items() for c in constants(tree)
             if c in ("_key_bits", "_progress_valid")]
    assert found == []


def test_one_hyper_parameter_splitter():
    """``prepare.split_hparams`` is the one function that splits a configuration's
    hyper-parameters into traced values and structure."""
    defs = [f"{mod}.{n.name}" for mod, tree in MODULES.items() for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef)
            and n.name in ("split_hparams", "stop_hparams")]
    assert defs == ["prepare.split_hparams"]


HISTORY_NAMES = {"epoch", "loss", "batch_loss", "grad_norm", "lr", "objective", "val_loss",
                 "step_loss"}


def test_history_columns_are_listed_in_history_only():
    """The history's column names, their order and which are per step are described once
    (``jaxgd/history.py``): no other module lists two of them together or names the
    packed or per-step columns."""
    found = []
    for mod, tree in MODULES.items():
        if mod == "history":
            continue
        for n in ast.walk(tree):
            if isinstance(n, ast.Tuple | ast.List | ast.Set):
                names = {e.value for e in n.elts if isinstance(e, ast.Constant)} & HISTORY_NAMES
                if len(names) > 1:
                    found.append(f"{mod}:{n.lineno} {sorted(names)}")
        found += [f"{mod}: {c!r}" for c in constants(tree) if c in ("step_loss", "scalars")]
    assert found == []
