"""Command line: ``python -m imserver serve | token | user``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import orjson

from imserver.config import Config, load_config
from imserver.errors import ConfigError

DEFAULT_CONFIG = Path("config/default.toml")


def _load(path: str | None) -> Config:
    chosen = path or os.environ.get("IMSERVER_CONFIG")
    if chosen is None and DEFAULT_CONFIG.exists():
        chosen = str(DEFAULT_CONFIG)
    return load_config(chosen)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)


def _run(coro: Coroutine[Any, Any, None], use_uvloop: bool) -> None:
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            logging.getLogger("imserver").info("uvloop not installed; using asyncio's loop")
        else:
            uvloop.run(coro)
            return
    asyncio.run(coro)


async def _ensure_user(config: Config, user: str, name: str) -> None:
    from imserver.store.sqlite import SqliteStore

    store = SqliteStore(config.sqlite_file, synchronous=config.store.sqlite_synchronous)
    await store.open()
    try:
        await store.upsert_users([(user, name)], int(time.time() * 1000))
    finally:
        await store.close()


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    _setup_logging(config.server.log_level)
    from imserver.app import serve_until_signalled

    _run(serve_until_signalled(config), config.server.use_uvloop)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from imserver.protocol.fields import is_user_id
    from imserver.tokens import TokenSigner, load_or_create_secret

    config = _load(args.config)
    for what, value in (("--user", args.user), ("--device", args.device)):
        if not is_user_id(value):
            print(f"error: {what} must be 1-64 of A-Z a-z 0-9 _ . @ -", file=sys.stderr)
            return 2
    if not args.no_create:
        asyncio.run(_ensure_user(config, args.user, args.name or args.user))
    signer = TokenSigner(load_or_create_secret(config.auth.secret, config.data_path))
    print(signer.mint(args.user, args.device, args.ttl or config.auth.token_ttl_s))
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    from imserver.protocol.fields import is_user_id

    config = _load(args.config)
    bad = [u for u in args.users if not is_user_id(u)]
    if bad:
        print(f"error: invalid user id(s): {', '.join(bad)}", file=sys.stderr)
        return 2
    for u in args.users:
        asyncio.run(_ensure_user(config, u, u))
    print(f"{len(args.users)} user(s) ready")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Check the audit chain; exit 0 if intact, 1 naming the first bad record."""
    import sqlite3

    from imserver.audit import verify_database

    config = _load(args.config)
    try:
        result = verify_database(config.sqlite_file)
    except sqlite3.Error as e:
        print(f"error: cannot read the audit log in {config.sqlite_file}: {e}", file=sys.stderr)
        return 2
    if result.ok:
        print(f"ok: {result.checked} records verified; head hash {result.head_hash}")
        return 0
    print(
        f"BROKEN at record {result.first_bad_seq}: {result.reason}"
        f" ({result.checked} records before it verified)"
    )
    return 1


def cmd_keys_add(args: argparse.Namespace) -> int:
    """Append a new field-encryption key and make it active (restart, then rotate)."""
    from imserver.field_protection import add_key

    config = _load(args.config)
    key_id = add_key(config, args.algorithm)
    print(f"added key {key_id} ({args.algorithm}); it is now active.")
    print("restart the server, then run: python -m imserver keys rotate")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    """Re-encrypt every sealed value with the active key."""
    from imserver.field_protection import build_protector
    from imserver.store.sqlite import SqliteStore

    config = _load(args.config)
    protector = build_protector(config)

    async def run() -> tuple[int, int]:
        store = SqliteStore(config.sqlite_file, synchronous=config.store.sqlite_synchronous)
        await store.open()
        try:
            result = await store.rotate_sealed(protector)
            await store.audit.append(
                int(time.time() * 1000),
                "operator",
                "keys.rotate",
                protector.keyring.active_key_id,
                {"profiles": result[0], "cards": result[1]},
            )
            return result
        finally:
            await store.close()

    profiles, cards = asyncio.run(run())
    print(
        f"re-encrypted {profiles} profile(s) and {cards} card(s) with key "
        f"{protector.keyring.active_key_id}"
    )
    return 0


def cmd_governance_report(args: argparse.Namespace) -> int:
    """Print the group governance report (JSON or CSV) for the whole tree or one unit."""
    from imserver.governance import classify, to_csv, to_json
    from imserver.http.governance_api import rules_from
    from imserver.store.sqlite import SqliteStore

    config = _load(args.config)
    query = {
        k: str(v)
        for k, v in {
            "zombie_days": args.zombie_days,
            "empty_max_members": args.empty_max_members,
            "duplicate_threshold": args.duplicate_threshold,
            "min_age_days": args.min_age_days,
        }.items()
        if v is not None
    }
    rules = rules_from(query)

    async def run() -> str:
        store = SqliteStore(config.sqlite_file, synchronous=config.store.sqlite_synchronous)
        await store.open()
        try:
            scope = None
            if args.unit:
                unit = await store.get_unit(args.unit)
                if unit is None:
                    raise SystemExit(f"error: no unit {args.unit!r}")
                scope = [unit.path]
            findings = classify(await store.group_stats(scope), int(time.time() * 1000), rules)
        finally:
            await store.close()
        if args.format == "csv":
            return to_csv(findings)
        return orjson.dumps(to_json(findings), option=orjson.OPT_INDENT_2).decode()

    sys.stdout.write(asyncio.run(run()) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m imserver", description=__doc__)
    p.add_argument("--config", help="TOML config file (default: config/default.toml)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the WebSocket gateway and HTTP API")
    s.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_serve)

    t = sub.add_parser("token", help="mint a user token for development (creates the user)")
    t.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    t.add_argument("--user", required=True)
    t.add_argument("--device", required=True)
    t.add_argument("--name", help="display name for a new user")
    t.add_argument("--ttl", type=int, help="lifetime in seconds (default: auth.token_ttl_s)")
    t.add_argument("--no-create", action="store_true", help="do not create the user")
    t.set_defaults(func=cmd_token)

    u = sub.add_parser("user", help="manage users")
    usub = u.add_subparsers(dest="user_command", required=True)
    ua = usub.add_parser("add", help="create users")
    ua.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    ua.add_argument("users", nargs="+")
    ua.set_defaults(func=cmd_user_add)
    a = sub.add_parser("audit", help="the audit log")
    asub = a.add_subparsers(dest="audit_command", required=True)
    av = asub.add_parser("verify", help="check the hash chain; names the first broken record")
    av.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    av.set_defaults(func=cmd_audit_verify)
    g = sub.add_parser("governance", help="work-group governance")
    gsub = g.add_subparsers(dest="governance_command", required=True)
    gr = gsub.add_parser("report", help="zombie, empty-shell and duplicate groups")
    gr.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    gr.add_argument("--unit", help="only groups of this unit's subtree")
    gr.add_argument("--format", choices=("json", "csv"), default="json")
    gr.add_argument("--zombie-days", type=int)
    gr.add_argument("--empty-max-members", type=int)
    gr.add_argument("--duplicate-threshold", type=float)
    gr.add_argument("--min-age-days", type=int)
    gr.set_defaults(func=cmd_governance_report)

    k = sub.add_parser("keys", help="field-encryption keys")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    ka = ksub.add_parser("add", help="add a new active key to <data_dir>/field.keys")
    ka.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    ka.add_argument("--algorithm", choices=("aes-256-gcm", "sm4-gcm"), default="aes-256-gcm")
    ka.set_defaults(func=cmd_keys_add)
    kr = ksub.add_parser("rotate", help="re-encrypt sealed values with the active key")
    kr.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    kr.set_defaults(func=cmd_keys_rotate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return code
