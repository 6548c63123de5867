"""``bots/`` imports only the SDK, the standard library and the listed dependencies (#10)."""

from __future__ import annotations

import sys

from tests.unit.test_package_arrows import ROOT, imported_modules, module_name

#: Third-party top-level packages a bot may use (pyproject dependencies).
ALLOWED = {"bots", "imserver_sdk", "aiohttp", "orjson"}


def test_bots_import_only_the_sdk_stdlib_and_listed_dependencies() -> None:
    files = sorted((ROOT / "bots").rglob("*.py"))
    assert len(files) >= 10, "the walk must see the bot modules"
    outside: dict[str, list[str]] = {}
    for path in files:
        module = module_name(path, ROOT)
        names = imported_modules(
            path.read_text(encoding="utf-8"), module, is_package=path.name == "__init__.py"
        )
        tops = {n.split(".")[0] for n in names} - {"__future__"}
        bad = sorted(t for t in tops if t not in ALLOWED and t not in sys.stdlib_module_names)
        if bad:
            outside[module] = bad
    assert outside == {}, f"bots/ imports outside the SDK, stdlib and listed deps: {outside}"
