"""``python -m bots run --config bots.toml``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from bots.runtime.config import load_runtime_config
from bots.runtime.runner import run_until_signalled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bots", description="Run business bots.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the bots of a config file")
    run.add_argument("--config", required=True, help="path to bots.toml")
    run.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = load_runtime_config(args.config)
    except (OSError, ValueError) as e:  # ConfigError and TOML syntax errors
        print(f"bots: {args.config}: {e}", file=sys.stderr)
        return 2
    asyncio.run(run_until_signalled(cfg))
    return 0
