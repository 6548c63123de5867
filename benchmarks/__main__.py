"""``python -m benchmarks SCENARIO [options]`` — run one benchmark scenario.

Progress goes to stderr; stdout carries exactly one line, the JSON result
(without the bulky plot series), so scripts and CI can parse it. The full
result is also written to ``benchmarks/results/<scenario>-<timestamp>.json``
with a PNG plot beside it (``--latest`` also copies both to
``results/latest/<scenario>.*``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks import scenarios
from benchmarks.common import (
    RESULTS_DIR,
    Progress,
    filesystem_of,
    fsync_ms,
    git_info,
    machine_info,
    raise_nofile_limit,
    wall_timestamp,
)


def build_parser(found: dict[str, Any]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="imserver benchmarks (see benchmarks/README.md).",
    )
    sub = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    for name, module in found.items():
        p = sub.add_parser(name, help=module.DESCRIPTION, description=module.__doc__)
        p.add_argument("--quick", action="store_true", help="small and short: for CI (< 1 min)")
        p.add_argument(
            "--synchronous",
            choices=("OFF", "NORMAL", "FULL", "EXTRA"),
            default="NORMAL",
            type=str.upper,
            help="store.sqlite_synchronous for the server under test (default NORMAL)",
        )
        p.add_argument(
            "--results-dir",
            type=Path,
            default=RESULTS_DIR,
            help="where to write the JSON and PNG (default benchmarks/results)",
        )
        p.add_argument(
            "--latest",
            nargs="?",
            const=name,
            metavar="NAME",
            help="also copy the result to <results-dir>/latest/NAME.json/.png"
            " (NAME defaults to the scenario)",
        )
        p.add_argument(
            "--no-pin",
            action="store_true",
            help="do not pin the server to the first CPU and the load to the others",
        )
        p.add_argument(
            "--store",
            choices=("sqlite", "postgres"),
            default="sqlite",
            help="the store under test: the embedded SQLite file (default) or a throw-away"
            " PostgreSQL database on this machine (benchmarks/backends.py)",
        )
        p.add_argument(
            "--bus",
            choices=("local", "redis"),
            default="local",
            help="the bus: in-process (default) or the Redis of this machine",
        )
        p.add_argument("--no-plot", action="store_true", help="skip the PNG")
        p.add_argument("--quiet", action="store_true", help="no progress on stderr")
        module.add_arguments(p)
    r = sub.add_parser("replot", help="redraw the PNG of a saved result JSON")
    r.add_argument("json", type=Path, help="a result file written by a run")
    r.add_argument("--out", type=Path, help="PNG to write (default: beside the JSON)")
    return parser


def replot(found: dict[str, Any], args: argparse.Namespace) -> int:
    """Plots are drawn from the result document alone, so any saved run can be redrawn."""
    doc = json.loads(args.json.read_text())
    out: Path = args.out or args.json.with_suffix(".png")
    found[doc["scenario"]].plot(doc, out)
    print(json.dumps({"scenario": doc["scenario"], "png": str(out)}))
    return 0


def options_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("scenario",)
    }


def main(argv: list[str] | None = None) -> int:
    found = scenarios.available()
    args = build_parser(found).parse_args(argv)
    if args.scenario == "replot":
        return replot(found, args)
    module = found[args.scenario]
    progress = Progress(args.scenario, enabled=not args.quiet)
    raise_nofile_limit()
    started = time.time()
    doc: dict[str, Any] = {
        "scenario": args.scenario,
        "timestamp": wall_timestamp(),
        "git": git_info(),
        "machine": {
            **machine_info(),
            # Data directories are temporary directories: where they live matters.
            "tmp_dir": tempfile.gettempdir(),
            "tmp_filesystem": filesystem_of(Path(tempfile.gettempdir())),
            "tmp_fsync_ms": fsync_ms(Path(tempfile.gettempdir())),
        },
        "options": options_of(args),
    }
    try:
        result = module.run(args, progress)
    except Exception as e:
        progress.done()
        traceback.print_exc()
        doc["error"] = f"{type(e).__name__}: {e}"
        print(json.dumps(doc, ensure_ascii=False), flush=True)
        return 1
    doc.update(result)
    doc["elapsed_s"] = round(time.time() - started, 2)

    results_dir: Path = args.results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{args.scenario}-{time.strftime('%Y%m%d-%H%M%S')}"
    json_path = results_dir / f"{stem}.json"
    png_path: Path | None = results_dir / f"{stem}.png"
    files: dict[str, str | None] = {"json": str(json_path), "png": None}
    if not args.no_plot and png_path is not None:
        progress.update("plotting")
        try:
            module.plot(doc, png_path)
            files["png"] = str(png_path)
        except ImportError as e:
            progress.note(f"no plot: {e} (pip install matplotlib)")
            png_path = None
    else:
        png_path = None
    doc["files"] = files
    json_path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    if args.latest:
        latest = results_dir / "latest"
        latest.mkdir(exist_ok=True)
        shutil.copyfile(json_path, latest / f"{args.latest}.json")
        if png_path is not None:
            shutil.copyfile(png_path, latest / f"{args.latest}.png")
    progress.update("done", f"{doc['elapsed_s']:.1f}s, {json_path}")
    progress.done()
    line = {k: v for k, v in doc.items() if k != "series"}
    print(json.dumps(line, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
