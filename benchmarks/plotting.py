"""Small matplotlib helpers shared by the scenarios' ``plot`` functions.

Imported only when plotting, so running a benchmark never needs matplotlib
until the very end (and ``--no-plot`` never needs it at all).
"""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def log_axis(ax: Any, which: str = "x") -> None:
    """A log-scale axis labelled 0.5, 1, 2, 5, 10… instead of 10^n (latencies, rates)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if which == "x":
        ax.set_xscale("log")
        axis = ax.xaxis
    else:
        ax.set_yscale("log")
        axis = ax.yaxis
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())
