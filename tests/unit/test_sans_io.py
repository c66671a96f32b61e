"""DESIGN.md: the SIP core never imports asyncio, socket or time; only
``sip/transport.py`` touches the network and the event loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sip

SIP_DIR = Path(sip.__file__).parent
IO_MODULES = {"asyncio", "socket", "time", "selectors", "threading", "uvloop"}
CORE = sorted(p for p in SIP_DIR.glob("*.py") if p.name != "transport.py")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_core_has_its_modules() -> None:
    assert {"parser.py", "message.py", "digest.py", "transaction.py"} <= {p.name for p in CORE}


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_module_imports_no_io(path: Path) -> None:
    assert not imported_modules(path) & IO_MODULES


def test_the_check_can_fail() -> None:
    assert "asyncio" in imported_modules(SIP_DIR / "transport.py")
