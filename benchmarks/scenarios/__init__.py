"""Scenario registry: every module here is a scenario named after its file.

A scenario module provides:

* ``DESCRIPTION`` — one line for ``--help``;
* ``add_arguments(parser)`` — its own options (defaults ``None`` where
  ``--quick`` changes them; resolve with :func:`pick`);
* ``run(args, progress) -> dict`` — runs and returns ``{"metrics": ...,
  "series": ..., "summary": ...}``: ``metrics`` (JSON, small), ``series`` (bulky
  data for the plot, only in the result file), ``summary`` (flat headline
  numbers, also printed on stdout);
* ``plot(result, path)`` — draws the PNG from the result document alone (so a
  saved JSON can be re-plotted).

Adding a scenario is adding a file; ``__main__`` discovers it.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import TypeVar

T = TypeVar("T")


def available() -> dict[str, ModuleType]:
    found: dict[str, ModuleType] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "run"):
            found[info.name] = module
    return found


def pick(value: T | None, full: T, quick: T, is_quick: bool) -> T:
    """An explicit option wins; otherwise the full or the quick default."""
    if value is not None:
        return value
    return quick if is_quick else full
