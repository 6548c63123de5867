"""The parser: one subcommand per operator task, each handled by its module here.

Errors every command can meet (a bad config, a missing or refused store, an
unreachable PostgreSQL) become one line and an exit code here, not a traceback.
"""

from __future__ import annotations

import argparse
import sys

from imserver.cli.audit import cmd_audit_head, cmd_audit_verify
from imserver.cli.context import (
    EXIT_CONFIG,
    EXIT_NO_DATABASE,
    EXIT_STORE_REFUSED,
    EXIT_STORE_UNAVAILABLE,
)
from imserver.cli.governance import cmd_governance_report
from imserver.cli.keys import cmd_keys_add, cmd_keys_rotate
from imserver.cli.serve import cmd_openapi, cmd_serve
from imserver.cli.store import (
    cmd_store_backup,
    cmd_store_check,
    cmd_store_export_postgres,
    cmd_store_restore,
)
from imserver.cli.users import cmd_token, cmd_user_add
from imserver.errors import (
    BusUnavailable,
    ConfigError,
    NoDatabaseYet,
    StoreFileError,
    StoreUnavailable,
)

DESCRIPTION = "python -m imserver serve | token | user | audit | store | keys | governance"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m imserver", description=DESCRIPTION)
    p.add_argument("--config", help="TOML config file (default: config/default.toml)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the WebSocket gateway and HTTP API")
    s.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    s.add_argument(
        "--init",
        action="store_true",
        help="if the database file is empty (0 bytes), replace it with a new store",
    )
    s.set_defaults(func=cmd_serve)

    o = sub.add_parser("openapi", help="print the HTTP API's OpenAPI 3.1 description (JSON)")
    o.set_defaults(func=cmd_openapi)
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
    av.add_argument(
        "--head", metavar="SEQ:HASH", help="a head printed earlier by `audit head`: must be there"
    )
    av.set_defaults(func=cmd_audit_verify)
    ah = asub.add_parser("head", help="verify, then print SEQ:HASH of the last record to anchor")
    ah.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    ah.set_defaults(func=cmd_audit_head)
    st = sub.add_parser("store", help="the database file")
    stsub = st.add_subparsers(dest="store_command", required=True)
    sc = stsub.add_parser("check", help="full integrity check; exit 0 ok, 1 not usable")
    sc.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sc.add_argument("path", nargs="?", help="a database file (default: the configured store)")
    sc.set_defaults(func=cmd_store_check)
    sb = stsub.add_parser("backup", help="online backup to a new file (safe while serving)")
    sb.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sb.add_argument("path", help="the backup file to create (must not exist)")
    sb.set_defaults(func=cmd_store_backup)
    sr = stsub.add_parser("restore", help="replace the stopped store with a backup (kept aside)")
    sr.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sr.add_argument("path", help="a backup made by `store backup`")
    sr.set_defaults(func=cmd_store_restore)
    se = stsub.add_parser(
        "export-postgres",
        help="copy the stopped store into an empty PostgreSQL database and verify it",
    )
    se.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    se.add_argument("--dsn", required=True, help="postgresql://USER@HOST:PORT/DATABASE (empty)")
    se.add_argument(
        "--verify-only", action="store_true", help="only compare the two stores; copy nothing"
    )
    se.set_defaults(func=cmd_store_export_postgres)
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
        return EXIT_CONFIG
    except StoreFileError as e:  # one line naming the file and the fix; no traceback
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NO_DATABASE if isinstance(e, NoDatabaseYet) else EXIT_STORE_REFUSED
    except (StoreUnavailable, BusUnavailable) as e:  # one line naming the host and the fix
        print(f"error: {e.code}: {e.message}", file=sys.stderr)
        return EXIT_STORE_UNAVAILABLE
    return code
