"""A business system in stream mode as a real child process (tests/integration/test_stream_mode.py).

``python -m tests.stream_business BASE_URL APP_ID SECRET LOG [--answer] [--hang]``
runs ``BusinessClient.stream()`` exactly as an app would. Every callback is
logged as a JSON line to ``LOG``: ``received`` when it arrives, ``handled``
once processed. What was handled is read back from the log at start, so a
restarted process (after SIGKILL) acknowledges a redelivery of an action it
already handled without handling it again: the app-side idempotency by
``action_id`` that docs/cards.md asks of business systems. ``--answer``
returns a ``card_update``; ``--hang`` never finishes a handler (never acks);
``--work-s`` is how long handling one action takes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any

from imserver_sdk import BusinessClient, CallbackAction


def handled_before(log: Path) -> set[str]:
    if not log.exists():
        return set()
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return {e["action_id"] for e in lines if e["event"] == "handled"}


async def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("base_url", "app_id", "secret", "log"):
        parser.add_argument(name)
    parser.add_argument("--answer", action="store_true")
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--work-s", type=float, default=0.02)
    args = parser.parse_args()
    log = Path(args.log)
    done = handled_before(log)
    out = log.open("a", encoding="utf-8")  # noqa: ASYNC230 - once, before serving

    def write(event: str, action: CallbackAction) -> None:
        entry = {"event": event, "action_id": action.action_id, "card_id": action.card_id}
        out.write(json.dumps(entry) + "\n")
        out.flush()
        os.fsync(out.fileno())

    async def on_action(action: CallbackAction) -> dict[str, Any] | None:
        write("received", action)
        if args.hang:
            await asyncio.Event().wait()
        if action.action_id in done:
            return None  # handled before a restart: acknowledge, do nothing again
        await asyncio.sleep(args.work_s)  # some work: a kill can land in the middle of it
        done.add(action.action_id)
        write("handled", action)
        if args.answer:
            return {"status": {"text": f"已由{action.actor}同意", "color": "green"}}
        return None

    async with BusinessClient(args.base_url, args.app_id, args.secret) as biz:
        await biz.stream(on_action, backoff_initial_s=0.05, backoff_max_s=0.5)


if __name__ == "__main__":
    asyncio.run(main())
