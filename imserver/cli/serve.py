"""``serve`` (the gateway and HTTP API on one loop) and ``openapi`` (the description it serves)."""

from __future__ import annotations

import argparse
import logging
import sys

import orjson

from imserver.cli.context import (
    load,
    run_on_loop,
    setup_cli_logging,
)


def cmd_serve(args: argparse.Namespace) -> int:
    config = load(args.config)
    setup_cli_logging(config.server.log_level, config.server.log_format)
    from imserver.app import serve_until_signalled

    if args.init:
        from imserver.store.sqlite.file_check import initialise_empty_store_file

        if initialise_empty_store_file(config.sqlite_file):
            logging.getLogger("imserver").warning(
                "--init: removed the empty file %s; starting with a new store", config.sqlite_file
            )
    run_on_loop(serve_until_signalled(config), config.server.use_uvloop)
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    """Print the OpenAPI 3.1 description (``> docs/openapi.json``; the server serves it too)."""
    from imserver.http.openapi import build_spec

    text = orjson.dumps(build_spec(), option=orjson.OPT_INDENT_2).decode()
    sys.stdout.write(text + "\n")
    return 0
