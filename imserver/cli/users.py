"""``token`` and ``user add``: development tokens and users, created in the configured store."""

from __future__ import annotations

import argparse
import asyncio
import sys

from imserver.cli.context import (
    ensure_user,
    load,
)


def cmd_token(args: argparse.Namespace) -> int:
    from imserver.protocol.fields import is_user_id
    from imserver.tokens import TokenSigner, load_or_create_secret

    config = load(args.config)
    for what, value in (("--user", args.user), ("--device", args.device)):
        if not is_user_id(value):
            print(f"error: {what} must be 1-64 of A-Z a-z 0-9 _ . @ -", file=sys.stderr)
            return 2
    if not args.no_create:
        asyncio.run(ensure_user(config, args.user, args.name or args.user))
    signer = TokenSigner(load_or_create_secret(config.auth.secret, config.data_path))
    print(signer.mint(args.user, args.device, args.ttl or config.auth.token_ttl_s))
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    from imserver.protocol.fields import is_user_id

    config = load(args.config)
    bad = [u for u in args.users if not is_user_id(u)]
    if bad:
        print(f"error: invalid user id(s): {', '.join(bad)}", file=sys.stderr)
        return 2
    for u in args.users:
        asyncio.run(ensure_user(config, u, u))
    print(f"{len(args.users)} user(s) ready")
    return 0
