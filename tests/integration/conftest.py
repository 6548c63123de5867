"""Fixtures for card tests: a business system on loopback and a server that knows it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from imserver_sdk import BusinessClient
from tests.cards_support import ADMIN_KEY, CARD_SETTINGS, BusinessStub, business
from tests.support import Harness


@pytest.fixture
async def stub() -> AsyncIterator[BusinessStub]:
    """A running business-system stub (callbacks verified by the SDK)."""
    s = BusinessStub()
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def card_server(start_server: Any) -> Harness:
    """A server with the admin API on and fast callback retries."""
    server: Harness = await start_server(auth={"admin_api_key": ADMIN_KEY}, cards=CARD_SETTINGS)
    return server


@pytest.fixture
async def oa(card_server: Harness, stub: BusinessStub) -> AsyncIterator[BusinessClient]:
    """The business client of app "oa", registered with ``card_server``."""
    client = await business(card_server, stub)
    yield client
    await client.close()
