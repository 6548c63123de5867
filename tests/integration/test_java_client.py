"""A Java business system integrating from the docs alone (issue #13, "What must be shown").

``clients/java`` is compiled with the JDK's ``javac`` (no build tool, no
dependencies) and run as a real child process against a real server: it pushes
a signed approval card, receives the decision over HTTP callbacks or over
stream mode, verifies the server's signature, drops the repeat the server sends
after a deliberately slow first answer, and answers with a ``card_update``. A
real WebSocket user clicks approve; the holders must see the Java side's update.
The Java program reports what it did as lines on stdout (clients/java/README.md).
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from imserver.appauth import sign_headers
from imserver_sdk import BusinessClient, Client
from tests.cards_support import ADMIN_KEY, CARD_SETTINGS
from tests.conftest import StartServer
from tests.processes import REPO, free_port
from tests.support import Harness

APP = "oa-java"
JAVA_SOURCES = REPO / "clients" / "java" / "src"
INSTALL_HINT = "install a JDK 17: apt-get install -y openjdk-17-jdk-headless"
# Longer than the server's callback timeout (CARD_SETTINGS: 0.5 s), so the first delivery
# times out and the server sends it again: the Java side must see the repeat and drop it.
STALL_FIRST_MS = 1200
DONE_TEXT = "已办结（Java）"


def jdk_tool(name: str) -> str:
    """The JDK tool's path; a missing JDK fails the test (never a skip) saying what to do."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` not found on PATH: {INSTALL_HINT} (or `make install`)")
    return path


@pytest.fixture(scope="module")
def java_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """clients/java compiled with plain ``javac``, as its README says, into a temp dir."""
    javac = jdk_tool("javac")
    version = subprocess.run([javac, "-version"], capture_output=True, text=True, check=False)
    major = (version.stdout + version.stderr).split()[-1].split(".")[0]
    if not major.isdigit() or int(major) < 17:
        pytest.fail(f"clients/java needs Java 17 or later, found {version.stdout}: {INSTALL_HINT}")
    out = tmp_path_factory.mktemp("java-classes")
    sources = sorted(str(p) for p in JAVA_SOURCES.rglob("*.java"))
    assert sources, f"no Java sources under {JAVA_SOURCES}"
    done = subprocess.run(
        [
            javac,
            "-encoding",
            "UTF-8",
            "-Xlint:all",
            "-Werror",
            "-d",
            str(out),
            *sources,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"javac failed:\n{done.stdout}{done.stderr}"
    return out


class JavaApp:
    """``java imserver.example.Main`` as a child process; its stdout read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[list[str]] = []
        self._seen = 0  # lines already returned by expect()

    @classmethod
    async def start(cls, classes: Path, *args: str) -> JavaApp:
        proc = await asyncio.create_subprocess_exec(
            jdk_tool("java"),
            "-cp",
            str(classes),
            "imserver.example.Main",
            *args,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def expect(self, word: str, timeout: float = 20.0) -> list[str]:
        """The next line starting with ``word`` (earlier other lines are kept in ``lines``)."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(self._seen, len(self.lines)):
                if self.lines[i][0] == word:
                    self._seen = i + 1
                    return self.lines[i]
            assert self.proc.stdout is not None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {word} line from the Java app; got {self.lines}")
            raw = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            if not raw:
                raise AssertionError(f"Java app ended before {word}; got {self.lines}")
            self.lines.append(raw.decode().split())

    def named(self, word: str) -> list[list[str]]:
        return [line for line in self.lines if line[0] == word]

    async def finish(self, timeout: float = 20.0) -> int:
        """Reads to the end; the exit code."""
        await self.expect("DONE", timeout)
        assert self.proc.stdout is not None
        rest = await asyncio.wait_for(self.proc.stdout.read(), timeout)
        self.lines += [line.split() for line in rest.decode().splitlines() if line.strip()]
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@pytest.fixture
async def javas() -> AsyncIterator[list[JavaApp]]:
    started: list[JavaApp] = []
    yield started
    for j in started:
        await j.stop()


async def register(server: Harness, secret: str, callback_url: str) -> None:
    """As docs/cards.md section 1: ``POST /admin/v1/apps`` with the operator's key."""
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{server.world.http_url}/admin/v1/apps",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            json={"app_id": APP, "secret": secret, "callback_url": callback_url, "scope": ["*"]},
        ) as r,
    ):
        assert r.status == 201, await r.text()


async def approve(li: Client, card_id: str) -> dict[str, Any]:
    action_id = uuid.uuid4().hex
    answer = await li.request(
        "card.act", card_id=card_id, action="approve", action_id=action_id, inputs={}
    )
    return {**answer, "action_id": action_id}


async def run_java_flow(
    server: Harness, classes: Path, javas: list[JavaApp], secret: str, mode: str, *extra: str
) -> tuple[JavaApp, dict[str, Any], str, list[Client]]:
    """Java pushes, li approves; returns the app, li's answer, the card id, the holders."""
    li, wang = await server.client("li"), await server.client("wang")
    java = await JavaApp.start(
        classes,
        *("--mode", mode, "--server", server.world.http_url, "--app", APP, "--secret", secret),
        *("--to", "li,wang", "--actors", "li", "--track", f"java-{mode}"),
        *("--stall-first-ms", str(STALL_FIRST_MS), "--linger-ms", "2500"),
        *extra,
    )
    javas.append(java)
    await java.expect("READY")
    pushed = await java.expect("PUSHED")
    card_id = pushed[1]
    assert pushed[2:] == [f"java-{mode}", "1", "false"], pushed
    # The card reached both holders as the Java side pushed it.
    for c in (li, wang):
        await c.next_event("message", predicate=lambda e: e.data.get("kind") == "card", timeout=5)
    return java, await approve(li, card_id), card_id, [li, wang]


async def assert_decided_once_and_updated(
    server: Harness,
    java: JavaApp,
    clicked: dict[str, Any],
    card_id: str,
    holders: list[Client],
    transport: str,
    secret: str,
) -> None:
    assert await java.finish() == 0, java.lines
    decision = clicked["action_id"]
    # Seen once, verified, with the callback's version; the server's redelivery was dropped.
    assert java.named("DECISION") == [
        ["DECISION", decision, "approve", "li", str(clicked["version"]), "approved", transport]
    ], java.lines
    assert ["REPEAT", decision, transport] in java.named("REPEAT"), java.lines
    # The card_update answer made exactly one version after the callback's.
    final_version = clicked["version"] + 1
    assert java.named("CONFIRMED") == [
        ["CONFIRMED", decision, str(final_version), "approved", "green"]
    ], java.lines
    for c in holders:
        ev = await c.next_event(
            "card",
            predicate=lambda e: e.data["card_id"] == card_id and e.data["version"] == final_version,
            timeout=5,
        )
        assert ev.data["status"] == {"text": DONE_TEXT, "color": "green"}, ev.data
        assert ev.data["state"] == "approved"
    async with BusinessClient(server.world.http_url, APP, secret) as oa:
        card = await oa.get_card(f"java-{transport}")
    assert card["version"] == final_version and card["callback"] == "ok", card
    assert "li" in card["body_md"] and f"第 {clicked['version']} 版" in card["body_md"]


async def post_callback(url: str, body: bytes, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
        return r.status


async def test_java_http_callbacks_verify_drop_the_repeat_and_update_every_holder(
    card_server: Harness, java_classes: Path, javas: list[JavaApp]
) -> None:
    secret = secrets.token_urlsafe(32)
    port = free_port()
    callback_url = f"http://127.0.0.1:{port}/callback"
    await register(card_server, secret, callback_url)
    java, clicked, card_id, holders = await run_java_flow(
        card_server, java_classes, javas, secret, "http", "--callback-port", str(port)
    )
    assert java.named("READY") == [["READY", "http", callback_url]]
    assert clicked["state"] == "approved", clicked
    await assert_decided_once_and_updated(
        card_server, java, clicked, card_id, holders, "http", secret
    )


async def test_java_http_callback_server_refuses_forged_and_replayed_requests(
    card_server: Harness, java_classes: Path, javas: list[JavaApp]
) -> None:
    """What only the server may send: a wrong secret, a stale timestamp, a reused nonce."""
    secret = secrets.token_urlsafe(32)
    port = free_port()
    url = f"http://127.0.0.1:{port}/callback"
    await register(card_server, secret, url)
    java = await JavaApp.start(
        java_classes,
        *("--mode", "http", "--server", card_server.world.http_url, "--app", APP),
        *("--secret", secret, "--to", "li", "--actors", "li", "--track", "java-forged"),
        *("--callback-port", str(port), "--timeout-s", "30"),
    )
    javas.append(java)
    await card_server.users("li")
    await java.expect("PUSHED")
    forged = orjson.dumps(
        {
            "type": "card.action",
            "app_id": APP,
            "action_id": "forged-1",
            "card_id": "c_x",
            "out_track_id": "java-forged",
            "version": 2,
            "actor": "li",
            "action": "approve",
            "decision": "approve",
            "inputs": {},
            "state": "approved",
            "at": 1,
        }
    )
    wrong_key = sign_headers(APP, secrets.token_urlsafe(32), forged)
    assert await post_callback(url, forged, wrong_key) == 401
    assert (await java.expect("REFUSED"))[1:] == ["bad_signature", "http"]
    stale = sign_headers(APP, secret, forged, now=time.time() - 3600)
    assert await post_callback(url, forged, stale) == 401
    assert (await java.expect("REFUSED"))[1:] == ["signature_expired", "http"]
    # A genuine delivery (an app event, which decides nothing) replayed with its nonce.
    event = orjson.dumps(
        {"type": "event", "event": "card_read", "event_id": "ev_replay", "app_id": APP}
    )
    genuine = sign_headers(APP, secret, event)
    assert await post_callback(url, event, genuine) == 200
    assert (await java.expect("EVENT"))[1:] == ["ev_replay", "card_read", "http"]
    assert await post_callback(url, event, genuine) == 401
    assert (await java.expect("REFUSED"))[1:] == ["nonce_replayed", "http"]
    assert java.named("DECISION") == []


async def test_java_stream_mode_verifies_acks_drops_the_repeat_and_updates_every_holder(
    card_server: Harness, java_classes: Path, javas: list[JavaApp]
) -> None:
    secret = secrets.token_urlsafe(32)
    await register(card_server, secret, "")  # stream-only: no callback URL at all
    java, clicked, card_id, holders = await run_java_flow(
        card_server, java_classes, javas, secret, "stream"
    )
    assert java.named("STREAM_HELLO")[0][1] == APP, java.lines
    assert card_server.world.callbacks.streams.count(APP) == 1
    await assert_decided_once_and_updated(
        card_server, java, clicked, card_id, holders, "stream", secret
    )
    # The stalled first ack came after the server had redelivered under a new id.
    assert java.named("STREAM_ERROR")[0][:2] == ["STREAM_ERROR", "unknown_delivery"], java.lines
    assert java.named("REFUSED") == []


async def pending_callback(server: Harness, action_id: str) -> dict[str, Any]:
    """The outbox entry of ``action_id`` as the operator sees it (``GET /admin/v1/callbacks``)."""
    async with (
        aiohttp.ClientSession() as s,
        s.get(
            f"{server.world.http_url}/admin/v1/callbacks?state=pending",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        ) as r,
    ):
        listed: dict[str, Any] = await r.json()
    return next((c for c in listed["callbacks"] if c["action_id"] == action_id), {})


async def test_java_stream_refuses_frames_it_cannot_verify_and_takes_them_after_redeploy(
    start_server: StartServer, java_classes: Path, javas: list[JavaApp]
) -> None:
    """A secret rotation the app has not deployed yet (docs/admin.md section 7).

    The server signs stream frames with the new secret at once: a Java side that knows only
    the old one must refuse them (nack, so they are retried, never a decision). Redeployed
    to verify with either secret, as the rotation procedure says, it takes the redelivery.
    """
    server = await start_server(
        auth={"admin_api_key": ADMIN_KEY}, cards={**CARD_SETTINGS, "callback_max_attempts": 50}
    )
    old, new = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    await register(server, old, "")
    li = await server.client("li")
    args = ("--mode", "stream", "--server", server.world.http_url, "--app", APP)
    card = ("--to", "li", "--actors", "li", "--track", "java-rotate")
    stale = await JavaApp.start(java_classes, *args, "--secret", old, *card, "--timeout-s", "30")
    javas.append(stale)
    card_id = (await stale.expect("PUSHED"))[1]
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{server.world.http_url}/admin/v1/apps/{APP}/secret",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            json={"secret": new, "overlap_s": 3600},
        ) as r,
    ):
        assert r.status == 200, await r.text()
    clicked = await approve(li, card_id)
    assert (await stale.expect("REFUSED"))[1:] == ["bad_signature", "stream"]
    # The refusal reached the server as a nack: the operator sees why, and it is retried.
    entry: dict[str, Any] = {}
    for _ in range(100):
        entry = await pending_callback(server, clicked["action_id"])
        if entry.get("last_error", "").startswith("nack: "):
            break
        await asyncio.sleep(0.05)
    assert entry["last_error"] == "nack: refused: bad_signature", entry
    await stale.stop()  # no stream now: the item waits in the outbox, spending no attempts
    assert stale.named("DECISION") == []

    # Redeployed: still signs with the old secret (valid during the overlap), verifies with both.
    fixed = await JavaApp.start(
        java_classes, *args, "--secret", old, "--verify-also", new, *card, "--linger-ms", "300"
    )
    javas.append(fixed)
    # Pushing the same out_track_id again is safe: the existing card, as it is now — the
    # waiting decision may already have been taken (and answered) over the new stream.
    pushed = await fixed.expect("PUSHED")
    assert pushed[1:3] == [card_id, "java-rotate"] and pushed[4] == "true", pushed
    assert int(pushed[3]) in (clicked["version"], clicked["version"] + 1), pushed
    assert await fixed.finish() == 0, fixed.lines
    assert fixed.named("DECISION") == [
        [
            "DECISION",
            clicked["action_id"],
            "approve",
            "li",
            str(clicked["version"]),
            "approved",
            "stream",
        ]
    ], fixed.lines
    assert fixed.named("CONFIRMED")[0][2] == str(clicked["version"] + 1), fixed.lines
    ev = await li.next_event(
        "card",
        predicate=lambda e: e.data["card_id"] == card_id and e.data["version"] > clicked["version"],
        timeout=5,
    )
    assert ev.data["status"]["text"] == DONE_TEXT


async def test_java_stream_handshake_with_a_wrong_secret_is_refused_and_not_retried(
    card_server: Harness, java_classes: Path, javas: list[JavaApp]
) -> None:
    """The refusal is an ordinary 401 with the JSON error body, read before any socket."""
    await register(card_server, secrets.token_urlsafe(32), "")
    java = await JavaApp.start(
        java_classes,
        *("--mode", "stream", "--server", card_server.world.http_url, "--app", APP),
        *("--secret", secrets.token_urlsafe(32), "--to", "li", "--actors", "li"),
    )
    javas.append(java)
    assert await java.expect("STREAM_REFUSED") == ["STREAM_REFUSED", "401", "bad_signature"]
    assert (await java.expect("FAILED"))[1] == "stream_handshake_refused"
    assert await asyncio.wait_for(java.proc.wait(), 20) == 3  # gave up: a 401 needs a fix
    assert java.named("PUSHED") == []
    assert card_server.world.callbacks.streams.count(APP) == 0
