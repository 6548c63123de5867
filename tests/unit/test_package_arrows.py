"""The package arrows point one way: plug-ins build on the core, clients on nothing.

- ``imserver/`` (the core) never imports ``cards/`` (the plug-in), except the
  composition root ``imserver/app.py``, which wires the plug-in in;
- ``cards/`` never imports the clients (``clients/``, the SDK) or ``bots``;
- the Python SDK never imports the server (``imserver``, ``cards``, ``bots``);
- ``bots/`` never imports the server (``imserver``, ``cards``): only the SDK.

Imports are read with ``ast`` (every ``import``/``from`` anywhere in a module,
``TYPE_CHECKING`` blocks and function bodies included, relative ones resolved,
and ``importlib.import_module("...")``/``__import__("...")`` with a literal
name), so nothing is executed and a late import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "clients" / "python_sdk" / "imserver_sdk"


def module_name(path: Path, package_root: Path) -> str:
    """``imserver/gateway/dispatch.py`` → ``imserver.gateway.dispatch``."""
    parts = list(path.relative_to(package_root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every module name ``source`` (the text of ``module``) imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, module, is_package)
            if base:
                found.add(base)
            # ``from pkg import sub`` may import the module ``pkg.sub``.
            prefix = f"{base}." if base else ""
            found.update(prefix + alias.name for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
            name = _literal_name(node)
            if name:
                found.add(name)
    return found


def _resolve(name: str | None, level: int, module: str, is_package: bool) -> str:
    if level == 0:
        return name or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    anchor = package[: len(package) - (level - 1)]
    return ".".join([*anchor, name] if name else anchor)


def _literal_name(call: ast.Call) -> str | None:
    """The module name a dynamic import is called with, if it is a literal."""
    first = call.args[0] if call.args else None
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def touches(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    """The names in ``modules`` that are (inside) one of ``packages``."""
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


def violations(
    folder: Path, package_root: Path, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()
) -> dict[str, list[str]]:
    """Per module under ``folder`` (except ``allowed``): the forbidden imports it makes."""
    out: dict[str, list[str]] = {}
    files = sorted(folder.rglob("*.py"))
    assert files, f"no modules found under {folder}"
    for path in files:
        module = module_name(path, package_root)
        if module in allowed:
            continue
        names = imported_modules(
            path.read_text(encoding="utf-8"), module, is_package=path.name == "__init__.py"
        )
        bad = touches(names, forbidden)
        if bad:
            out[module] = bad
    return out


# -- the checker itself sees what it must (else the real checks prove nothing) --------
@pytest.mark.parametrize(
    "source",
    [
        "import cards",
        "import cards.service as s",
        "from cards.service import CardService",
        "from cards import service",
        "def f():\n    from cards.model import parse_card\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import cards.policy\n",
        "import importlib\nimportlib.import_module('cards.service')",
        "__import__('cards')",
    ],
)
def test_checker_finds_an_import_of_cards(source: str) -> None:
    assert touches(imported_modules(source, "imserver.gateway.dispatch"), ("cards",))


@pytest.mark.parametrize(
    "source",
    ["import cardsharp", "from imserver.protocol import requests", "x = 'cards'", "import card"],
)
def test_checker_ignores_what_is_not_cards(source: str) -> None:
    assert not touches(imported_modules(source, "imserver.gateway.dispatch"), ("cards",))


def test_checker_resolves_relative_imports() -> None:
    found = imported_modules("from .client import Client", "imserver_sdk.api")
    assert "imserver_sdk.client" in found
    nested = imported_modules("from ..cards import service", "imserver.http.x")
    assert "imserver.cards.service" in nested and not touches(nested, ("cards",))
    assert touches(imported_modules("from ... import cards", "imserver.http.x"), ("cards",))
    in_init = imported_modules("from .client import Client", "imserver_sdk", is_package=True)
    assert "imserver_sdk.client" in in_init


# -- the arrows ------------------------------------------------------------------------
def test_core_imports_cards_only_in_the_composition_root() -> None:
    found = violations(ROOT / "imserver", ROOT, ("cards",), allowed=("imserver.app",))
    assert found == {}, f"the core must not import the cards plug-in: {found}"


def test_the_composition_root_does_wire_cards_in() -> None:
    """If app.py stopped importing cards, the test above would be checking nothing useful."""
    source = (ROOT / "imserver" / "app.py").read_text(encoding="utf-8")
    assert touches(imported_modules(source, "imserver.app"), ("cards",))


def test_cards_never_imports_clients_or_bots() -> None:
    found = violations(ROOT / "cards", ROOT, ("clients", "imserver_sdk", "bots"))
    assert found == {}, f"cards/ must not import clients or bots: {found}"


def test_sdk_never_imports_the_server() -> None:
    found = violations(SDK, SDK.parent, ("imserver", "cards", "bots"))
    assert found == {}, f"the SDK must not import the server: {found}"


def test_bots_never_import_the_server() -> None:
    """Bots are written on the public SDK only, exactly as a third party would (#10)."""
    found = violations(ROOT / "bots", ROOT, ("imserver", "cards"))
    assert found == {}, f"bots/ must use imserver_sdk, not the server: {found}"
