"""``/healthz`` names the store: its backend and latency, and 503 when it cannot answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg

from tests.postgres_support import drop_schema, fresh_dsn, run_blocking
from tests.support import Harness, make_test_config, start_harness, stop_harness

StartServer = Callable[..., Awaitable[Harness]]


async def healthz(server: Harness) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(server.world.http_url + "/healthz") as response,
    ):
        body: dict[str, Any] = await response.json()
        return response.status, body


async def test_healthz_reports_the_sqlite_store(start_server: StartServer) -> None:
    server = await start_server(store={"backend": "sqlite"})  # whatever IM_TEST_STORE says
    status, body = await healthz(server)
    assert status == 200 and body["status"] == "ok"
    store = body["store"]
    assert (store["backend"], store["ok"]) == ("sqlite", True)
    assert isinstance(store["latency_ms"], float | int) and store["latency_ms"] >= 0


def _terminate_and_drop(dsn: str, schema: str) -> None:
    """Cut the server's connections and take its tables away (as a failed-over database)."""

    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await conn.close()

    run_blocking(run())
    drop_schema(schema)


async def test_healthz_is_503_naming_the_store_when_postgres_cannot_answer(
    tmp_path: Any,
) -> None:
    dsn, schema = fresh_dsn()
    config = make_test_config(
        tmp_path / "data",
        {"store": {"backend": "postgres", "dsn": dsn, "pool_min_size": 1, "pool_max_size": 2}},
    )
    server = await start_harness(config)
    try:
        status, body = await healthz(server)
        assert status == 200 and body["store"]["backend"] == "postgres"
        assert body["store"]["ok"] is True and "latency_ms" in body["store"]

        _terminate_and_drop(dsn, schema)
        for _ in range(2):  # the first probe meets the cut connection, the next the lost schema
            status, body = await healthz(server)
            assert status == 503, body
            assert body["status"] == "unavailable"
            assert body["error"]["code"] == "store_unavailable"
            assert "postgres store does not answer" in body["error"]["message"]
            assert body["store"]["backend"] == "postgres" and body["store"]["ok"] is False
    finally:
        await stop_harness(server)
