"""Issue #12 items 10 and 13: audit gaps closed, and a clear word when there is no database.

Real stores on real files; tampering done as an insider would, with a plain
``sqlite3`` connection behind the triggers; the CLI run as a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from imserver.audit import AuditRecord, details_text_problem, parse_anchor
from imserver.audit.chain import REASON_DUPLICATE_KEY, REASON_NOT_CANONICAL, seal
from imserver.cli import verify_audit
from imserver.store.sqlite.audit import verify_database
from imserver.store.sqlite.store import SqliteStore
from tests.cards_support import BusinessStub
from tests.integration.test_cli import run_cli
from tests.support import make_test_config, start_harness, stop_harness

EXIT_NO_DATABASE = 4


async def audited_store(path: Path, records: int) -> None:
    """A real store whose audit log holds ``records`` records, closed cleanly."""
    store = SqliteStore(path)
    await store.open()
    try:
        for i in range(records):
            await store.audit.append(
                1000 + i, "admin", "admin.grant", f"u{i}", {"unit": "u", "n": i}
            )
    finally:
        await store.close()


def tamper(path: Path, sql: str, *params: object, trigger: str = "audit_log_no_update") -> None:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute(sql, params)


def config_file(tmp_path: Path, data: Path) -> Path:
    cfg = tmp_path / "audit.toml"
    cfg.write_text(f'[server]\ndata_dir = "{data.as_posix()}"\n')
    return cfg


# --------------------------------------------------------------------------- apps_file audit


def apps_toml(path: Path, stub: BusinessStub, callback_url: str) -> None:
    path.write_text(
        f'[[app]]\napp_id = "oa"\nsecret = "{stub.secret}"\n'
        f'callback_url = "{callback_url}"\nscope = ["user:li"]\nname = "协同办公"\n'
    )


async def test_apps_file_registration_is_audited_once_per_change(tmp_path: Path) -> None:
    stub = BusinessStub()
    apps = tmp_path / "apps.toml"
    apps_toml(apps, stub, "http://127.0.0.1:9/one")
    config = make_test_config(tmp_path / "data", {"cards": {"apps_file": str(apps)}})

    async def start_and_read() -> list[tuple[str, str, str, dict[str, object]]]:
        h = await start_harness(config)
        try:
            return [
                (r.actor, r.action, r.target, r.details)
                for r in await h.world.store.audit.records()
            ]
        finally:
            await stop_harness(h)

    first = await start_and_read()
    assert first == [
        (
            "apps_file",
            "admin.app_upsert",
            "oa",
            {
                "source": "cards.apps_file",
                "file": str(apps),
                "created": True,
                "changed": [],
                "callback_url": "http://127.0.0.1:9/one",
                "scope": ["user:li"],
                "permissions": [],
                "events": [],
            },
        )
    ]
    assert await start_and_read() == first  # unchanged file: nothing new in the log
    apps_toml(apps, stub, "http://127.0.0.1:9/two")
    third = await start_and_read()
    assert len(third) == 2 and third[:1] == first
    actor, action, target, details = third[1]
    assert (actor, action, target) == ("apps_file", "admin.app_upsert", "oa")
    assert details["created"] is False and details["changed"] == ["callback_url"]
    assert details["callback_url"] == "http://127.0.0.1:9/two"
    assert stub.secret not in str(third)  # the secret itself is never logged
    assert (await asyncio.to_thread(verify_audit, config, None)).ok  # from outside, as the CLI


# --------------------------------------------------------------------------- canonical details


async def test_duplicate_keys_in_stored_details_are_caught(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    await audited_store(db, 10)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (original,) = conn.execute("SELECT details FROM audit_log WHERE seq = 4").fetchone()
    assert original == '{"n":3,"unit":"u"}'
    # A reader of the raw row sees n = 999; a parser keeping the last key sees 3 — and the hash.
    tamper(db, "UPDATE audit_log SET details = ? WHERE seq = 4", '{"n":999,"n":3,"unit":"u"}')
    result = verify_database(db)
    assert (result.ok, result.first_bad_seq, result.reason) == (False, 4, REASON_DUPLICATE_KEY)


@pytest.mark.parametrize(
    "spelling",
    ['{"unit":"u","n":3}', '{"n": 3, "unit": "u"}', '{"n":3,"unit":"u"} '],
)
async def test_other_spellings_of_the_same_details_are_caught(
    tmp_path: Path, spelling: str
) -> None:
    db = tmp_path / "s.db"
    await audited_store(db, 10)
    tamper(db, "UPDATE audit_log SET details = ? WHERE seq = 4", spelling)
    result = verify_database(db)
    assert (result.ok, result.first_bad_seq, result.reason) == (False, 4, REASON_NOT_CANONICAL)


def test_canonical_details_rule() -> None:
    record = seal(None, 1, "a", "b", "c", {"z": [1, {"y": 2, "x": "中"}], "a": 1.5}, "sha256")
    stored = '{"a":1.5,"z":[1,{"x":"中","y":2}]}'
    assert details_text_problem(stored) is None
    assert record.details == {"a": 1.5, "z": [1, {"x": "中", "y": 2}]}
    assert details_text_problem('{"a":1.5,"z":[1,{"x":"中","x":"中","y":2}]}') == (
        REASON_DUPLICATE_KEY
    )
    for bad in ("[]", '{"a":NaN}', "not json", '{"a":1}\n'):
        assert details_text_problem(bad) == REASON_NOT_CANONICAL, bad


# --------------------------------------------------------------------------- head anchoring


async def test_truncated_tail_is_caught_with_the_anchored_head(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "imserver.db"
    await audited_store(db, 12)
    cfg = config_file(tmp_path, data)
    head = await asyncio.to_thread(run_cli, ["audit", "head", "--config", str(cfg)], tmp_path)
    assert head.returncode == 0, head.stdout + head.stderr
    anchor = head.stdout.strip()
    assert parse_anchor(anchor).seq == 12

    tamper(db, "DELETE FROM audit_log WHERE seq > 9", trigger="audit_log_no_delete")
    plain = await asyncio.to_thread(run_cli, ["audit", "verify", "--config", str(cfg)], tmp_path)
    assert plain.returncode == 0 and plain.stdout.startswith("ok: 9 records")  # what it can't see
    anchored = await asyncio.to_thread(
        run_cli, ["audit", "verify", "--head", anchor, "--config", str(cfg)], tmp_path
    )
    assert anchored.returncode == 1, anchored.stdout + anchored.stderr
    assert "BROKEN at record 10: anchored record missing (tail truncated)" in anchored.stdout


async def test_rewritten_and_resealed_tail_is_caught_with_the_anchored_head(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    await audited_store(db, 5)
    ok = verify_database(db)
    anchor = parse_anchor(f"{ok.checked}:{ok.head_hash}")
    with contextlib.closing(sqlite3.connect(db)) as conn:
        row = conn.execute("SELECT at, prev_hash FROM audit_log WHERE seq = 4").fetchone()
    prev = AuditRecord(3, 0, "", "", "", {}, "", row[1], "sha256")  # seal uses its seq, hash
    forged = seal(prev, row[0], "admin", "admin.grant", "nobody", {}, "sha256")
    tamper(
        db,
        "UPDATE audit_log SET target = ?, details = '{}', hash = ? WHERE seq = 4",
        forged.target,
        forged.hash,
    )
    assert verify_database(db).first_bad_seq == 5  # the link from 5 shows it...
    tamper(db, "DELETE FROM audit_log WHERE seq = 5", trigger="audit_log_no_delete")
    assert verify_database(db).ok  # ...until the record after it goes too
    result = verify_database(db, anchor)
    assert (result.ok, result.first_bad_seq, result.reason) == (
        False,
        5,
        "anchored record missing (tail truncated)",
    )
    at_four = verify_database(db, parse_anchor(f"4:{'ab' * 32}"))
    assert (at_four.first_bad_seq, at_four.reason) == (
        4,
        "differs from the anchored head (rewritten)",
    )


@pytest.mark.parametrize("bad", ["12", "x:" + "0" * 64, "3:abc", "0:" + "1" * 64])
def test_a_malformed_head_is_refused_with_exit_2(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        parse_anchor(bad)
    cfg = config_file(tmp_path, tmp_path / "data")
    proc = run_cli(["audit", "verify", "--head", bad, "--config", str(cfg)], tmp_path)
    assert proc.returncode == 2 and "--head" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- 13. no database yet


@pytest.mark.parametrize("command", [["audit", "verify"], ["audit", "head"], ["store", "check"]])
def test_no_database_yet_is_said_plainly(tmp_path: Path, command: list[str]) -> None:
    data = tmp_path / "never-started"
    proc = run_cli([*command, "--config", str(config_file(tmp_path, data))], tmp_path)
    assert proc.returncode == EXIT_NO_DATABASE, proc.stdout + proc.stderr
    db = data / "imserver.db"
    assert proc.stderr.strip() == (
        f"error: no_database: no database yet at {db} (start the server once)"
    )
    assert not db.exists()
