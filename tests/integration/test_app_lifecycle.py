"""Issue #13 item 6: the app lifecycle — list, show, delete, secret rotation with an overlap.

A real server on loopback (SQLite; ``IM_TEST_STORE=postgres`` for PostgreSQL),
the business system a real aiohttp server verifying callbacks with the SDK.
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from imserver.apps_file import load_apps_file
from imserver.cli import verify_audit
from imserver.errors import ConfigError
from imserver.store.export import export_to_postgres
from imserver.store.postgres.store import PostgresStore
from imserver.store.records import AppRecord, AuditEntry
from imserver.store.sqlite.store import SqliteStore
from imserver_sdk import BusinessClient, BusinessError, CallbackAction, callback_handler
from imserver_sdk.signing import SignatureError, sign_request, verify_signature
from tests.cards_support import (
    ADMIN_KEY,
    CARD_SETTINGS,
    BusinessStub,
    approval_card,
    business,
    register_app,
)
from tests.postgres_support import drop_schema, fresh_dsn
from tests.support import Harness

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def admin(
    h: Harness, method: str, path: str, body: Any = None, raw: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    """One admin-key call; (status, JSON body)."""
    data = raw if raw is not None else (None if body is None else aiohttp.JsonPayload(body))
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, f"{h.world.http_url}{path}", headers=AUTH, data=data) as r,
    ):
        return r.status, await r.json()


async def signed_ok(h: Harness, app_id: str, secret: str) -> bool:
    """True if a request signed with ``secret`` is accepted; False on 401 ``bad_signature``."""
    async with BusinessClient(h.world.http_url, app_id, secret, retries=0) as c:
        try:
            await c.get_card("no-such-track")
        except BusinessError as e:
            if e.code == "no_such_card":
                return True  # signature accepted; the card just does not exist
            assert (e.status, e.code) == (401, "bad_signature"), e
            return False
    raise AssertionError("a card that was never pushed was found")


async def audit_of(h: Harness, action: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (r.actor, r.target, r.details)
        for r in await h.world.store.audit.records()
        if r.action == action
    ]


async def act(h: Harness, user: str, card_id: str) -> None:
    c = await h.client(user)
    await c.request(
        "card.act", card_id=card_id, action="approve", action_id=uuid.uuid4().hex, inputs={}
    )


async def wait_for(pred: Any, timeout: float = 5.0) -> None:
    """Poll ``pred`` (plain or async) until it holds."""
    for _ in range(int(timeout / 0.02)):
        got = pred()
        if await got if inspect.isawaitable(got) else got:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


# --------------------------------------------------------------------------- list / get


async def test_list_and_get_show_everything_but_secrets(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    status, listing = await admin(card_server, "GET", "/admin/v1/apps")
    assert status == 200
    (app,) = listing["apps"]
    assert {k: v for k, v in app.items() if not k.endswith("_at")} == {
        "app_id": "oa",
        "name": "协同办公",
        "callback_url": stub.url,
        "scope": ["*"],
        "permissions": [],
        "events": [],  # app events subscribed to: none by default (docs/cards.md)
        "source": "admin",
        "secret_rotation": None,
    }
    assert app["created_at"] == app["updated_at"] > 0
    assert stub.secret not in str(listing) and "secret" not in app
    status, one = await admin(card_server, "GET", "/admin/v1/apps/oa")
    assert (status, one) == (200, app)
    status, err = await admin(card_server, "GET", "/admin/v1/apps/nope")
    assert status == 404 and err["error"]["code"] == "no_such_app"
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{card_server.world.http_url}/admin/v1/apps") as r,
    ):
        assert r.status == 401 and (await r.json())["error"]["code"] == "not_authenticated"


# --------------------------------------------------------------------------- delete


async def test_deleted_app_cannot_sign_and_its_pending_callback_fails_visibly(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    await card_server.users("li")
    card_id = (await oa.push_card(approval_card("del-1", ["li"]), users=["li"]))["card_id"]
    status, body = await admin(card_server, "DELETE", "/admin/v1/apps/oa")
    assert (status, body) == (200, {"app_id": "oa", "deleted": True})
    with pytest.raises(BusinessError) as e:
        await oa.get_card("del-1")
    assert (e.value.status, e.value.code) == (401, "unknown_app")
    await act(card_server, "li", card_id)  # the user's action is still accepted

    async def failed() -> bool:
        card = await card_server.world.store.get_card(card_id)
        return card is not None and card.callback == "failed"

    await wait_for(failed)  # at the first attempt: no retries for an app that is gone
    assert stub.hits == 0
    status, listed = await admin(card_server, "GET", "/admin/v1/callbacks?state=failed")
    assert status == 200
    [(attempts, error)] = [(c["attempts"], c["last_error"]) for c in listed["callbacks"]]
    assert attempts == 1 and error == "app oa no longer exists"
    li = await card_server.client("li")
    view = await li.request("card.get", card_id=card_id)  # the card stays readable
    assert view["card_id"] == card_id and view["callback"] == "failed"
    status, err = await admin(card_server, "DELETE", "/admin/v1/apps/oa")
    assert status == 404 and err["error"]["code"] == "no_such_app"
    # Registered again, the operator's retry delivers the failed callback.
    await register_app(card_server.world.http_url, stub)
    action_id = listed["callbacks"][0]["action_id"]
    status, _ = await admin(card_server, "POST", f"/admin/v1/callbacks/{card_id}/{action_id}/retry")
    assert status == 200
    await wait_for(lambda: len(stub.actions) == 1)
    assert await audit_of(card_server, "admin.app_delete") == [
        (
            "admin-key",
            "oa",
            {"name": "协同办公", "callback_url": stub.url, "scope": ["*"]},
        )
    ]
    assert (await asyncio.to_thread(verify_audit, card_server.world.config, None)).ok


async def test_app_from_apps_file_cannot_be_deleted_or_rotated(
    start_server: Any, tmp_path: Path
) -> None:
    secret = secrets.token_urlsafe(32)
    apps = tmp_path / "apps.toml"
    apps.write_text(
        f'[[app]]\napp_id = "hr"\nsecret = "{secret}"\n'
        'callback_url = "http://127.0.0.1:9/cb"\nscope = ["*"]\n'
    )
    h: Harness = await start_server(
        auth={"admin_api_key": ADMIN_KEY}, cards={**CARD_SETTINGS, "apps_file": str(apps)}
    )
    status, one = await admin(h, "GET", "/admin/v1/apps/hr")
    assert status == 200 and one["source"] == "apps_file"
    status, err = await admin(h, "DELETE", "/admin/v1/apps/hr")
    assert status == 409 and err["error"]["code"] == "app_in_apps_file"
    assert "cards.apps_file" in err["error"]["message"]
    new = secrets.token_urlsafe(32)
    status, err = await admin(
        h, "POST", "/admin/v1/apps/hr/secret", {"secret": new, "overlap_s": 60}
    )
    assert status == 409 and err["error"]["code"] == "app_in_apps_file"
    assert await signed_ok(h, "hr", secret) and not await signed_ok(h, "hr", new)
    assert await audit_of(h, "admin.app_delete") == []
    assert await audit_of(h, "admin.app_secret_rotate") == []


# --------------------------------------------------------------------------- rotation


class RotatingStub(BusinessStub):
    """A business system that verifies callbacks with the new secret or the old one
    (the SDK's ``previous_secret``), and keeps what it received to check who signed it."""

    def __init__(self, new_secret: str) -> None:
        super().__init__()
        self.new_secret = new_secret
        self.received: list[tuple[dict[str, str], bytes]] = []

        async def on_action(action: CallbackAction) -> dict[str, Any] | None:
            self.actions.append(action)
            return None

        handler = callback_handler(new_secret, on_action, previous_secret=self.secret)

        async def recording(request: Any) -> Any:
            self.received.append((dict(request.headers), await request.read()))
            return await handler(request)

        self._verified = recording


async def test_rotation_overlap_both_secrets_then_only_the_new_one(card_server: Harness) -> None:
    new = secrets.token_urlsafe(32)
    stub = RotatingStub(new)
    await stub.start()
    try:
        oa = await business(card_server, stub)
        old = stub.secret
        await card_server.users("li")
        before = (await oa.push_card(approval_card("rot-0", ["li"]), users=["li"]))["card_id"]
        card_id = (await oa.push_card(approval_card("rot-1", ["li"]), users=["li"]))["card_id"]
        # Before the rotation callbacks are signed with the old secret; the app's
        # handler, deployed with the new one, accepts them through previous_secret.
        await act(card_server, "li", before)
        await wait_for(lambda: len(stub.actions) == 1)
        verify_signature(old, *stub.received[0])
        # Short, but long enough for the checks below on a loaded machine.
        status, body = await admin(
            card_server, "POST", "/admin/v1/apps/oa/secret", {"secret": new, "overlap_s": 2}
        )
        assert status == 200 and body["app_id"] == "oa" and "secret" not in body
        until = body["previous_secret_valid_until"]
        status, one = await admin(card_server, "GET", "/admin/v1/apps/oa")
        assert one["secret_rotation"] == {"previous_secret_valid_until": until}
        assert new not in str(one) and old not in str(one)
        # During the overlap: both secrets sign.
        assert await signed_ok(card_server, "oa", old)
        assert await signed_ok(card_server, "oa", new)
        # Callbacks are signed with the new secret at once.
        await act(card_server, "li", card_id)
        await wait_for(lambda: len(stub.actions) == 2)
        assert [a.card_id for a in stub.actions] == [before, card_id]
        headers, raw = stub.received[1]
        verify_signature(new, headers, raw)
        with pytest.raises(SignatureError):
            verify_signature(old, headers, raw)
        # After it: only the new one.
        await asyncio.sleep(max(0.0, until / 1000 - time.time()) + 0.05)
        assert not await signed_ok(card_server, "oa", old)
        assert await signed_ok(card_server, "oa", new)
        status, one = await admin(card_server, "GET", "/admin/v1/apps/oa")
        assert one["secret_rotation"] is None
        [(actor, target, details)] = await audit_of(card_server, "admin.app_secret_rotate")
        assert (actor, target) == ("admin-key", "oa")
        assert details == {"overlap_s": 2, "previous_secret_valid_until": until, "generated": False}
        records = str(await card_server.world.store.audit.records())
        assert new not in records and old not in records
        assert (await asyncio.to_thread(verify_audit, card_server.world.config, None)).ok
        await oa.close()
    finally:
        await stub.stop()


async def test_generated_secret_is_returned_once_and_signs(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    status, body = await admin(card_server, "POST", "/admin/v1/apps/oa/secret", {"overlap_s": 0})
    assert status == 200 and len(body["secret"]) >= 32
    assert await signed_ok(card_server, "oa", body["secret"])
    assert not await signed_ok(card_server, "oa", stub.secret)  # no overlap asked for
    [(_, _, details)] = await audit_of(card_server, "admin.app_secret_rotate")
    assert details["generated"] is True and body["secret"] not in str(details)


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "field"),
    [
        ("/admin/v1/apps/nope/secret", {"overlap_s": 60}, 404, "no_such_app", None),
        (
            "/admin/v1/apps/oa/secret",
            {"overlap_s": 7 * 86400 + 1},
            400,
            "invalid_field",
            "overlap_s",
        ),
        ("/admin/v1/apps/oa/secret", {"overlap_s": -1}, 400, "invalid_field", "overlap_s"),
        ("/admin/v1/apps/oa/secret", {"overlap_s": "60"}, 400, "invalid_field", "overlap_s"),
        ("/admin/v1/apps/oa/secret", {"overlap_s": True}, 400, "invalid_field", "overlap_s"),
        ("/admin/v1/apps/oa/secret", {}, 400, "invalid_field", "overlap_s"),
        ("/admin/v1/apps/oa/secret", [1], 400, "invalid_field", "body"),
        ("/admin/v1/apps/oa/secret", b"{not json", 400, "invalid_field", "body"),
        (
            "/admin/v1/apps/oa/secret",
            {"overlap_s": 1, "secret": "short"},
            400,
            "invalid_field",
            "secret",
        ),
        ("/admin/v1/apps/oa/secret", {"overlap_s": 1, "secret": 5}, 400, "invalid_field", "secret"),
    ],
)
async def test_bad_rotation_requests_change_nothing(
    card_server: Harness,
    oa: BusinessClient,
    stub: BusinessStub,
    path: str,
    body: Any,
    status: int,
    code: str,
    field: str | None,
) -> None:
    _, before = await admin(card_server, "GET", "/admin/v1/apps/oa")
    raw = body if isinstance(body, bytes) else None
    got, err = await admin(card_server, "POST", path, None if raw else body, raw=raw)
    assert (got, err["error"]["code"], err["error"].get("field")) == (status, code, field)
    _, after = await admin(card_server, "GET", "/admin/v1/apps/oa")
    assert after == before
    assert await signed_ok(card_server, "oa", stub.secret)
    assert await audit_of(card_server, "admin.app_secret_rotate") == []


async def test_rotating_to_the_current_secret_is_refused(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    status, err = await admin(
        card_server, "POST", "/admin/v1/apps/oa/secret", {"secret": stub.secret, "overlap_s": 5}
    )
    assert (status, err["error"]["code"], err["error"]["field"]) == (400, "invalid_field", "secret")


async def test_register_again_replaces_the_registration_and_ends_an_overlap(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    old = stub.secret
    new = secrets.token_urlsafe(32)
    await admin(card_server, "POST", "/admin/v1/apps/oa/secret", {"secret": new, "overlap_s": 600})
    assert await signed_ok(card_server, "oa", old)
    _, before = await admin(card_server, "GET", "/admin/v1/apps/oa")
    stub.secret = new
    await register_app(card_server.world.http_url, stub)  # POST /admin/v1/apps, secret `new`
    assert not await signed_ok(card_server, "oa", old)
    _, after = await admin(card_server, "GET", "/admin/v1/apps/oa")
    assert after["secret_rotation"] is None and after["created_at"] == before["created_at"]


# --------------------------------------------------------------------------- apps_file rotation


def rotation_toml(path: Path, secret: str, previous: str, until: str) -> None:
    path.write_text(
        f'[[app]]\napp_id = "hr"\nsecret = "{secret}"\nprevious_secret = "{previous}"\n'
        f'previous_secret_until = {until}\ncallback_url = "http://127.0.0.1:9/cb"\n'
        'scope = ["*"]\n'
    )


def toml_time(seconds_from_now: float) -> str:
    at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds_from_now)
    return at.isoformat(timespec="seconds")


async def test_apps_file_rotation_both_secrets_until_the_set_time(
    start_server: Any, tmp_path: Path
) -> None:
    new, old = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    apps = tmp_path / "apps.toml"
    rotation_toml(apps, new, old, toml_time(3600))
    h: Harness = await start_server(
        auth={"admin_api_key": ADMIN_KEY}, cards={**CARD_SETTINGS, "apps_file": str(apps)}
    )
    assert await signed_ok(h, "hr", new) and await signed_ok(h, "hr", old)
    _, one = await admin(h, "GET", "/admin/v1/apps/hr")
    assert one["secret_rotation"] is not None
    [(actor, _, details)] = await audit_of(h, "admin.app_upsert")
    assert actor == "apps_file"
    assert (
        details["previous_secret_valid_until"]
        == one["secret_rotation"]["previous_secret_valid_until"]
    )
    assert new not in str(details) and old not in str(details)


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("previous_secret_until = {until}\n", "together"),
        ('previous_secret = "{old}"\n', "together"),
        ('previous_secret = "{old}"\nprevious_secret_until = "tomorrow"\n', "date-time"),
        ('previous_secret = "{old}"\nprevious_secret_until = 2026-12-04T10:00:00\n', "offset"),
        ('previous_secret = "{old}"\nprevious_secret_until = {far}\n', "7 days"),
        ('previous_secret = "short"\nprevious_secret_until = {until}\n', "32 characters"),
        ('previous_secret = "{new}"\nprevious_secret_until = {until}\n', "differ"),
    ],
)
def test_bad_rotation_in_the_apps_file_stops_the_start(
    tmp_path: Path, entry: str, says: str
) -> None:
    new, old = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    apps = tmp_path / "apps.toml"
    extra = entry.format(old=old, new=new, until=toml_time(60), far=toml_time(8 * 86400))
    apps.write_text(
        f'[[app]]\napp_id = "hr"\nsecret = "{new}"\n{extra}'
        'callback_url = "http://127.0.0.1:9/cb"\nscope = ["*"]\n'
    )
    with pytest.raises(ConfigError) as e:
        load_apps_file(apps)
    assert says in str(e.value)


# --------------------------------------------------------------------------- export


async def test_rotation_state_survives_the_export_to_postgresql(tmp_path: Path) -> None:
    """Schema 9's columns are copied by ``store export-postgres`` like every other."""
    db = tmp_path / "s.db"
    sqlite = SqliteStore(db)
    await sqlite.open()
    try:
        app = AppRecord("oa", "协同办公", "s" * 32, "http://127.0.0.1:9/cb", ("*",), ("tokens",))
        await sqlite.upsert_app(app, 1000)
        entry = AuditEntry("admin-key", "admin.app_secret_rotate", "oa", {"overlap_s": 60})
        assert await sqlite.rotate_app_secret("oa", "n" * 32, 61_000, 1_000, entry)
        before = await sqlite.list_apps()
    finally:
        await sqlite.close()
    assert before[0].app.previous_secret == "s" * 32
    assert (before[0].app.previous_secret_until, before[0].created_at) == (61_000, 1000)
    dsn, schema = fresh_dsn()
    try:
        await export_to_postgres(db, dsn)
        pg = PostgresStore(dsn)
        await pg.open()
        try:
            assert await pg.list_apps() == before
        finally:
            await pg.close()
    finally:
        drop_schema(schema)


# --------------------------------------------------------------------------- SDK


def test_sdk_verifies_callbacks_with_the_previous_secret_too() -> None:
    new, old, other = (secrets.token_urlsafe(32) for _ in range(3))
    for signer in (new, old):
        headers = sign_request("oa", signer, b"{}")
        verify_signature(new, headers, b"{}", previous_secret=old)
    with pytest.raises(SignatureError) as e:
        verify_signature(new, sign_request("oa", other, b"{}"), b"{}", previous_secret=old)
    assert e.value.code == "bad_signature"
    with pytest.raises(SignatureError):  # without previous_secret, only the new one
        verify_signature(new, sign_request("oa", old, b"{}"), b"{}")
