"""DESIGN.md, "gateway/ in layers" (issue 11: 2): no import cycle among the
modules of ``gateway/``, ``sip/`` and ``admission/``, and each layer imports
only the layers it may.

The imports are read from the source with :mod:`ast`, never by importing:

* every ``import`` and ``from ... import`` counts, at module level and
  inside functions alike (a function-level import is still a dependency; it
  only runs later);
* ``from a import b`` is a dependency on the module ``a.b`` when ``a/b.py``
  (or the package ``a/b/``) exists, else on ``a``; relative imports are
  resolved against the importing module's package;
* imports under ``if TYPE_CHECKING:`` are left out of the layer rules:
  they never run.  The cycle check is made twice, without and with them,
  so that a cycle is not merely hidden behind an annotation (issue 11 named
  ``sip.errors`` -> ``sip.message``, an annotation-only cycle);
* importing ``a.b.c`` runs the ``__init__`` of ``a`` and ``a.b`` first;
  those implicit edges are left out too, or every package whose
  ``__init__`` re-exports its modules (``sip``, ``admission``) would be a
  cycle with each of them.

A test below feeds the checker a small made-up tree with a cycle and a
forbidden import, and sees it report both.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: The packages whose imports are checked.
PACKAGES = ("sip", "admission", "gateway")

#: Layer -> the layers its modules may import besides their own: the table
#: of DESIGN.md ("gateway/ in layers") and of each package's ``__init__``
#: docstring.  What a layer may import, its importers may too (the closure
#: is taken), except what ``NEVER`` takes back.  A module's layer is its
#: top package for ``sip`` and ``admission``; for ``gateway`` it is the
#: subpackage (``gateway.store.migrations.env`` is in ``gateway.store``),
#: the root package itself (``__version__``) or ``gateway.__main__``.
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "sip": (),
    "admission": (),
    "gateway": (),
    "gateway.config": ("sip",),
    "gateway.store": ("gateway.config",),
    "gateway.manage": ("gateway.store", "gateway.config"),
    "gateway.billing": ("gateway.store", "gateway.config"),
    "gateway.cluster": ("gateway.billing", "gateway.config"),
    "gateway.proxy": ("sip", "admission", "gateway.billing", "gateway.cluster", "gateway.config"),
    # "Everything below it" (the root package holds __version__) ...
    "gateway.web": (
        "sip",
        "admission",
        "gateway",
        "gateway.config",
        "gateway.store",
        "gateway.manage",
        "gateway.billing",
        "gateway.cluster",
        "gateway.proxy",
    ),
    # ... and the CLI is above the web side: ``sipgw serve`` runs the app.
    "gateway.cli": ("gateway.web",),
    "gateway.__main__": ("gateway.cli",),
}
#: Layer -> layers it may not import directly even where the closure
#: reaches them.  The call path reads only the in-memory directory, never
#: the store (DESIGN.md; the call records reach the store through the
#: billing writer, off the hot path).
NEVER: dict[str, tuple[str, ...]] = {
    "gateway.proxy": ("gateway.store",),
}

Graph = dict[str, set[str]]


# -- reading the imports ------------------------------------------------------


def modules_under(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` of ``packages``."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(
    node: ast.AST, *, annotations: bool = False
) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in ``node``, at any depth, but those under
    ``if TYPE_CHECKING:`` (their ``else:`` branch does run) unless
    ``annotations``."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
        return
    if isinstance(node, ast.If) and _is_type_checking(node.test) and not annotations:
        children: list[ast.AST] = list(node.orelse)
    else:
        children = list(ast.iter_child_nodes(node))
    for child in children:
        yield from _import_nodes(child, annotations=annotations)


def _existing(name: str, modules: Mapping[str, object]) -> str | None:
    """``name`` or its longest prefix that is one of ``modules``."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(
    source: str,
    module: str,
    modules: Mapping[str, object],
    *,
    is_package: bool = False,
    annotations: bool = False,
) -> set[str]:
    """The modules among ``modules`` that ``source`` (the text of ``module``)
    imports, resolved as the module docstring says; with ``annotations``,
    the TYPE_CHECKING imports as well."""
    package = module if is_package else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in _import_nodes(ast.parse(source), annotations=annotations):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            # "from a import b": the submodule a.b if there is one, else a.
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        for name in names:
            target = _existing(name, modules)
            if target is not None and target != module:
                targets.add(target)
    return targets


def import_graph(
    root: Path = ROOT, packages: tuple[str, ...] = PACKAGES, *, annotations: bool = False
) -> Graph:
    """Module -> the modules of ``packages`` it imports (with
    ``annotations``, also those it imports for type checking only)."""
    modules = modules_under(root, packages)
    return {
        module: imports_of(
            path.read_text(),
            module,
            modules,
            is_package=path.name == "__init__.py",
            annotations=annotations,
        )
        for module, path in modules.items()
    }


# -- the checks --------------------------------------------------------------


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) for each group of modules that import
    each other, directly or around (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

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
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_through(group, graph) for group in sorted(groups)]


def _cycle_through(group: list[str], graph: Graph) -> list[str]:
    """The shortest way from the group's first module back to itself."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph.get(node, set()) & members):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {group}")  # a component always has one


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "gateway" or len(parts) == 1:
        return parts[0]
    return ".".join(parts[:2])


def allowed(
    rules: Mapping[str, tuple[str, ...]] = MAY_IMPORT,
    never: Mapping[str, tuple[str, ...]] = NEVER,
) -> dict[str, set[str]]:
    """Layer -> every layer it may import: itself, its row of ``rules`` and,
    transitively, theirs; minus its row of ``never``."""
    reach: dict[str, set[str]] = {}
    for layer in rules:
        seen, todo = {layer}, list(rules[layer])
        while todo:
            other = todo.pop()
            if other not in seen:
                seen.add(other)
                todo.extend(rules.get(other, ()))
        reach[layer] = seen - set(never.get(layer, ()))
    return reach


def violations(
    graph: Graph,
    rules: Mapping[str, tuple[str, ...]] = MAY_IMPORT,
    never: Mapping[str, tuple[str, ...]] = NEVER,
) -> list[str]:
    """Each import that crosses the layers the wrong way, as one line."""
    reach = allowed(rules, never)
    found = []
    for module in sorted(graph):
        layer = layer_of(module)
        if layer not in reach:
            found.append(f"{module}: in no layer of the table (MAY_IMPORT)")
            continue
        for target in sorted(graph[module]):
            if layer_of(target) not in reach[layer]:
                found.append(f"{module} ({layer}) imports {target} ({layer_of(target)})")
    return found


# -- the tree as it is ------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph()


def test_no_import_cycle(graph: Graph) -> None:
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_each_layer_imports_only_what_it_may(graph: Graph) -> None:
    found = violations(graph)
    assert not found, "imports against the layers:\n" + "\n".join(found)


def test_the_table_names_every_layer() -> None:
    """A new subpackage of gateway/ gets its row (and a stale row goes)."""
    subpackages = {f"gateway.{p.parent.name}" for p in (ROOT / "gateway").glob("*/__init__.py")}
    assert subpackages | {"sip", "admission", "gateway", "gateway.__main__"} == set(MAY_IMPORT)


@pytest.mark.parametrize(
    "layer", [layer for layer in MAY_IMPORT if layer.count(".") == 1 and "__" not in layer]
)
def test_the_package_docstring_says_what_the_table_says(layer: str) -> None:
    """A layer's ``__init__`` docstring names what it may import
    ("May import: ``x``, ``y``.") or says "everything below it"."""
    init = ROOT.joinpath(*layer.split("."), "__init__.py")
    docstring = " ".join((ast.get_docstring(ast.parse(init.read_text())) or "").split())
    if "May import everything below it" in docstring:
        reach = allowed(never={})
        below = {other for other in MAY_IMPORT if layer not in reach[other]}
        assert reach[layer] >= below
        return
    said = re.search(r"May import:(.*?)\.(?:\s|$)", docstring)
    assert said is not None, f"{init}: no 'May import:' in the docstring"
    assert set(re.findall(r"``([\w.]+)``", said.group(1))) == set(MAY_IMPORT[layer])


def test_the_walk_sees_what_is_hidden(graph: Graph) -> None:
    """Imports inside functions count, ``from package import module`` is
    the module, and TYPE_CHECKING imports do not count."""
    # gateway.cli.serve imports the app inside serve() (start-up time).
    assert "gateway.web.app" in graph["gateway.cli.serve"]
    # "from gateway.manage import history, ..." names modules.
    assert "gateway.manage.history" in graph["gateway.cli.commands"]
    # admission's __init__ imports its Redis backend in __getattr__ and
    # under TYPE_CHECKING: the first counts.
    assert "admission.redis" in graph["admission"]
    assert "admission.redis" in import_graph(annotations=True)["admission"]


def test_no_import_cycle_even_among_annotations() -> None:
    """A cycle that only type checking sees is still two modules that
    know each other (issue 11: ``sip.errors`` named ``sip.message`` for the
    ``framed`` messages, which now live on ``sip.parser.FramingError``)."""
    annotated = import_graph(annotations=True)
    assert cycles(annotated) == []
    assert not {module for module in annotated["sip.errors"] if module.startswith("sip.")}


# -- the checker can fail -----------------------------------------------------

MADE_UP: dict[str, str] = {
    "gateway": "",
    "gateway.store": "",
    "gateway.store.database": "from gateway.store import models\n",
    "gateway.store.models": (
        "def loader():\n"
        "    from gateway.store.database import Store  # a cycle, inside a function\n"
    ),
    "gateway.proxy": "",
    "gateway.proxy.router": (
        "from typing import TYPE_CHECKING\n"
        "from gateway.store.database import Store  # the call path reading the store\n"
        "if TYPE_CHECKING:\n"
        "    from gateway.web import app  # counted only among annotations\n"
    ),
    "gateway.web": "",
    "gateway.web.app": "from ..proxy import router\n",
    "sip": "",
    "sip.message": "import gateway.proxy.router\n",  # sip knows nothing of gateway
}


def test_the_checker_reports_a_cycle_and_a_forbidden_import() -> None:
    packages = {"gateway", "gateway.store", "gateway.proxy", "gateway.web", "sip"}
    graph = {
        module: imports_of(source, module, MADE_UP, is_package=module in packages)
        for module, source in MADE_UP.items()
    }
    assert graph["gateway.store.database"] == {"gateway.store.models"}
    assert graph["gateway.web.app"] == {"gateway.proxy.router"}
    assert graph["gateway.proxy.router"] == {"gateway.store.database"}
    assert cycles(graph) == [
        ["gateway.store.database", "gateway.store.models", "gateway.store.database"]
    ]
    assert violations(graph) == [
        "gateway.proxy.router (gateway.proxy) imports gateway.store.database (gateway.store)",
        "sip.message (sip) imports gateway.proxy.router (gateway.proxy)",
    ]
    # The same tree without the call path's exception: the closure lets
    # proxy reach the store through billing.
    assert violations(graph, never={}) == [
        "sip.message (sip) imports gateway.proxy.router (gateway.proxy)",
    ]
    # Among annotations, the router and the app know each other.
    annotated = {
        module: imports_of(source, module, MADE_UP, is_package=module in packages, annotations=True)
        for module, source in MADE_UP.items()
    }
    assert cycles(annotated) == [
        ["gateway.proxy.router", "gateway.web.app", "gateway.proxy.router"],
        ["gateway.store.database", "gateway.store.models", "gateway.store.database"],
    ]


def test_a_module_outside_every_layer_is_reported() -> None:
    assert violations({"gateway.helpers": set()}) == [
        "gateway.helpers: in no layer of the table (MAY_IMPORT)"
    ]
