"""Shared fixtures: a real server on free loopback ports, with real clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import Harness, make_test_config, start_harness, stop_harness

StartServer = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[StartServer]:
    """Factory: ``await start_server(limits={"max_text_chars": 10})`` → Harness."""
    started: list[Harness] = []

    async def start(**overrides: dict[str, Any]) -> Harness:
        h = await start_harness(make_test_config(tmp_path / f"data{len(started)}", overrides))
        started.append(h)
        return h

    yield start
    for h in started:
        await stop_harness(h)


@pytest.fixture
async def server(start_server: StartServer) -> Harness:
    """A server with the default configuration."""
    return await start_server()
