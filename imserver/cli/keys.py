"""``keys add`` / ``keys rotate``: field-encryption keys and re-encryption."""

from __future__ import annotations

import argparse
import asyncio
import time

from imserver.cli.context import (
    load,
    open_store,
)


def cmd_keys_add(args: argparse.Namespace) -> int:
    """Append a new field-encryption key and make it active (restart, then rotate)."""
    from imserver.field_protection import add_key

    config = load(args.config)
    key_id = add_key(config, args.algorithm)
    print(f"added key {key_id} ({args.algorithm}); it is now active.")
    print("restart the server, then run: python -m imserver keys rotate")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    """Re-encrypt every sealed value with the active key."""
    from imserver.field_protection import build_protector

    config = load(args.config)
    protector = build_protector(config)

    async def run() -> tuple[int, int]:
        store = open_store(config)
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
