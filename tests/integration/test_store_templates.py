"""The card-template part of the store contract (imserver/store/templates.py), on both backends.

Runs on the ``store_factory`` of the main contract suite: a fresh SQLite file
and a fresh PostgreSQL schema each.
"""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg
import pytest

from imserver.store.postgres import PostgresStore
from imserver.store.rows import dump_json
from imserver.store.sqlite.store import SqliteStore
from imserver.store.templates import TemplateStore
from tests.integration.test_store_contract import (  # noqa: F401 (the fixture)
    StoreFactory,
    store_factory,
)
from tests.postgres_support import drop_schema, fresh_dsn

T0 = 1_764_150_000_000
CARD = {"out_track_id": "t-{{n}}", "title": "{{title}}"}


def card(title: str) -> dict[str, object]:
    return {**CARD, "title": title}


async def templates(store_factory: StoreFactory) -> TemplateStore:  # noqa: F811
    store = await store_factory.open()
    assert isinstance(store, SqliteStore | PostgresStore)
    return store


async def test_versions_are_numbered_per_app_and_template(
    store_factory: StoreFactory,  # noqa: F811
) -> None:
    store = await templates(store_factory)
    v1, created1 = await store.put_template("oa", "leave", CARD, ("n", "title"), T0)
    v2, created2 = await store.put_template(
        "oa", "leave", card("{{title}}!"), ("n", "title"), T0 + 5
    )
    other, _ = await store.put_template("oa", "trip", CARD, ("n", "title"), T0 + 6)
    hr, _ = await store.put_template("hr", "leave", card("hr {{title}}"), ("n", "title"), T0 + 7)
    assert (v1.version, created1, v2.version, created2) == (1, True, 2, True)
    assert (other.version, hr.version) == (1, 1)

    latest = await store.get_template("oa", "leave")
    assert latest is not None and latest == v2 and latest.template["title"] == "{{title}}!"
    assert await store.get_template("oa", "leave", 1) == v1
    assert await store.get_template("oa", "leave", 3) is None
    assert await store.get_template("oa", "nothing") is None
    assert await store.get_template("ops", "leave") is None  # another app sees none of them
    hr_latest = await store.get_template("hr", "leave")
    assert hr_latest is not None and hr_latest.template["title"] == "hr {{title}}"

    listed = await store.list_templates("oa")
    assert [(t.template_id, t.latest, t.created_at, t.updated_at) for t in listed] == [
        ("leave", 2, T0, T0 + 5),
        ("trip", 1, T0 + 6, T0 + 6),
    ]
    assert listed[0].slots == ("n", "title")
    assert await store.list_templates("nobody") == []


async def test_the_same_template_again_makes_no_version(
    store_factory: StoreFactory,  # noqa: F811
) -> None:
    store = await templates(store_factory)
    first, _ = await store.put_template("oa", "leave", CARD, ("n", "title"), T0)
    again, created = await store.put_template("oa", "leave", dict(CARD), ("n", "title"), T0 + 9)
    assert (again, created) == (first, False)
    await store.put_template("oa", "leave", card("x {{title}}"), ("n", "title"), T0 + 10)
    back, created = await store.put_template("oa", "leave", CARD, ("n", "title"), T0 + 11)
    assert (back.version, created) == (3, True)  # equal to an older one is still new


async def test_concurrent_registrations_get_gapless_versions_and_survive_reopen(
    store_factory: StoreFactory,  # noqa: F811
) -> None:
    store = await templates(store_factory)
    results = await asyncio.gather(
        *(
            store.put_template("oa", "leave", card(f"{i} {{{{title}}}}"), ("n", "title"), T0 + i)
            for i in range(12)
        )
    )
    assert sorted(r.version for r, _ in results) == list(range(1, 13))
    by_version = {r.version: r.template for r, _ in results}
    await store_factory.opened[-1].close()

    reopened = await templates(store_factory)
    for version, template in by_version.items():
        record = await reopened.get_template("oa", "leave", version)
        assert record is not None and record.template == template
    (summary,) = await reopened.list_templates("oa")
    assert summary.latest == 12


def test_both_backends_have_the_template_migration() -> None:
    from imserver.store.migrations import SCHEMA_HISTORY
    from imserver.store.postgres.schema import MIGRATIONS as PG
    from imserver.store.sqlite.schema import MIGRATIONS as LITE

    assert (11, "card templates: versions of each app's card templates") in SCHEMA_HISTORY
    for migrations in (PG, LITE):
        (sql,) = [sql for version, _, sql in migrations if version == 11]
        assert "CREATE TABLE card_templates" in sql
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        from imserver.store.sqlite.schema import migrate

        assert 11 in migrate(conn)
        columns = [r[1] for r in conn.execute("PRAGMA table_info(card_templates)")]
        assert columns == ["app_id", "template_id", "version", "template", "slots", "created_at"]
    finally:
        conn.close()


@pytest.mark.parametrize("version", [None, 1])
async def test_reading_a_template_of_an_empty_store(
    store_factory: StoreFactory,  # noqa: F811
    version: int | None,
) -> None:
    store = await templates(store_factory)
    assert await store.get_template("oa", "leave", version) is None


async def test_two_postgres_nodes_registering_at_once_get_gapless_versions() -> None:
    """Two stores (as two nodes) on one database: a lost insert race is run again."""
    dsn, schema = fresh_dsn()
    nodes = [PostgresStore(dsn, min_pool=1, max_pool=4) for _ in range(2)]
    try:
        for node in nodes:
            await node.open()
        results = await asyncio.gather(
            *(
                nodes[i % 2].put_template(
                    "oa", "leave", card(f"n{i} {{{{title}}}}"), ("n", "title"), T0 + i
                )
                for i in range(20)
            )
        )
        assert sorted(r.version for r, _ in results) == list(range(1, 21))
        for record, created in results:
            assert created
            assert await nodes[0].get_template("oa", "leave", record.version) == record
    finally:
        for node in nodes:
            await node.close()
        drop_schema(schema)


async def test_a_registration_that_loses_the_insert_race_is_run_again() -> None:
    """Another node's uncommitted version 1: our insert waits, conflicts, and retries as 2."""
    dsn, schema = fresh_dsn()
    store = PostgresStore(dsn, min_pool=1, max_pool=4)
    await store.open()
    other = await asyncpg.connect(dsn)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute(
            "INSERT INTO card_templates VALUES ('oa', 'leave', 1, $1, '[\"n\", \"title\"]', $2)",
            dump_json(CARD),
            T0,
        )
        mine = asyncio.create_task(
            store.put_template("oa", "leave", card("mine {{title}}"), ("n", "title"), T0 + 1)
        )
        await asyncio.sleep(0.3)
        assert not mine.done()  # waiting for the other node's transaction
        await tx.commit()
        record, created = await asyncio.wait_for(mine, 10)
        assert (record.version, created, record.template["title"]) == (2, True, "mine {{title}}")
        first = await store.get_template("oa", "leave", 1)
        assert first is not None and first.template == CARD
    finally:
        await other.close()
        await store.close()
        drop_schema(schema)
