"""Redis authentication for the bus: a password (or an ACL user) on one Redis and on a Cluster.

Real ``redis-server`` processes with ``requirepass`` on free loopback ports
(``tests/redis_support.py``), real servers on one PostgreSQL schema. The
right credentials carry messages across nodes; wrong or missing ones stop
``serve`` at start with one line naming the fix; the password never shows in
a log line or an error.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis

from imserver.bus.redis import RedisBus
from imserver.bus.redis_links import RedisAuth
from imserver.bus.redis_settings import RedisBusSettings
from imserver.config import load_config
from imserver.errors import BusUnavailable, ConfigError
from tests.postgres_support import drop_schema, fresh_dsn
from tests.redis_support import (
    RedisCluster,
    SingleRedis,
    free_port,
    fresh_prefix,
    started_cluster,
    started_server,
)
from tests.support import Harness, RawClient, make_test_config, start_harness, stop_harness

REPO = Path(__file__).resolve().parents[2]
SECRET = "s" * 40
PASSWORD = "redis-pw-7Hq2xZ"  # requirepass: the "default" user's password
ACL_USER, ACL_PASSWORD = "imserver", "acl-pw-Rk81vW"
#: An ACL user without channel permissions (Redis 7 denies channels by default).
NO_CHANNELS_USER = "no-channels"
WRONG = "not-the-pw-Q4m"


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[SingleRedis]:
    """One Redis with ``requirepass``, an ACL user allowed everything and one without channels."""
    acl = ["--user", ACL_USER, "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all"]
    acl += ["--user", NO_CHANNELS_USER, "on", f">{ACL_PASSWORD}", "~*", "+@all"]
    yield from started_server(PASSWORD, acl)


@pytest.fixture(scope="module")
def locked_cluster() -> Iterator[RedisCluster]:
    """Three masters with ``requirepass`` and ``masterauth``."""
    yield from started_cluster(password=PASSWORD)


@asynccontextmanager
async def two_nodes(tmp_path: Path, bus: dict[str, Any]) -> AsyncIterator[tuple[Harness, Harness]]:
    """Two servers on one PostgreSQL schema and the Redis bus ``bus`` describes."""
    dsn, schema = fresh_dsn()
    shared = {
        "store": {"backend": "postgres", "dsn": dsn, "pool_min_size": 1, "pool_max_size": 4},
        "bus": {"backend": "redis", "channel_prefix": fresh_prefix(), **bus},
        "auth": {"secret": SECRET},
    }
    a = await start_harness(make_test_config(tmp_path / "a", shared))
    try:
        b = await start_harness(make_test_config(tmp_path / "b", shared))
    except BaseException:
        await stop_harness(a)
        drop_schema(schema)
        raise
    try:
        yield a, b
    finally:
        await stop_harness(a)
        await stop_harness(b)
        drop_schema(schema)


async def send_text(raw: RawClient, text: str, **target: str) -> dict[str, Any]:
    answer = await raw.request(
        "send", kind="text", body={"text": text}, client_msg_id=os.urandom(6).hex(), **target
    )
    assert answer["type"] == "result", answer
    data: dict[str, Any] = answer.get("data", answer)
    return data


def is_message(conv: str, seq: int) -> Any:
    def match(frame: dict[str, Any]) -> bool:
        if frame.get("type") != "event" or frame.get("event") != "message":
            return False
        return bool(frame["data"]["conv"] == conv and frame["data"]["seq"] == seq)

    return match


async def assert_messages_cross(a: Harness, b: Harness, users: int = 1) -> None:
    """1:1 conversations from a user on A to ``users`` users on B, and one answer back."""
    names = [f"u{i:02d}" for i in range(users)]
    await a.users("alice", *names)
    alice = await a.raw("alice")
    peers = [await b.raw(name) for name in names]
    convs = []
    for name, peer in zip(names, peers, strict=True):
        sent = await send_text(alice, f"你好 {name}", to=name)
        got = await peer.recv_until(is_message(sent["conv"], sent["seq"]))
        assert got["data"]["body"] == {"text": f"你好 {name}"}
        convs.append(sent["conv"])
    reply = await send_text(peers[0], "收到", conv=convs[0])
    await alice.recv_until(is_message(reply["conv"], reply["seq"]))


def credentials(how: str, redis: SingleRedis) -> dict[str, Any]:
    url = f"redis://127.0.0.1:{redis.port}/0"
    if how == "password":
        return {"redis_url": url, "redis_password": PASSWORD}
    if how == "acl user":
        return {"redis_url": url, "redis_username": ACL_USER, "redis_password": ACL_PASSWORD}
    return {"redis_url": f"redis://:{PASSWORD}@127.0.0.1:{redis.port}/0"}  # as before


@pytest.mark.parametrize("how", ["password", "acl user", "password in the url"])
async def test_nodes_with_the_right_credentials_deliver_across_nodes(
    tmp_path: Path, locked_redis: SingleRedis, how: str
) -> None:
    async with two_nodes(tmp_path, credentials(how, locked_redis)) as (a, b):
        await assert_messages_cross(a, b)
        assert isinstance(a.world.bus, RedisBus) and a.world.bus.connected


async def test_nodes_on_a_redis_cluster_with_a_password_deliver_across_nodes(
    tmp_path: Path, locked_cluster: RedisCluster
) -> None:
    """B's channels spread over every master: each of its subscriber links authenticated."""
    bus = {"redis_cluster_nodes": locked_cluster.nodes, "redis_password": PASSWORD}
    async with two_nodes(tmp_path, bus) as (a, b):
        await assert_messages_cross(a, b, users=15)
        assert isinstance(b.world.bus, RedisBus)
        assert b.world.bus.health()["connected"] is True
        name = b.world.bus.settings.node_name
        for port in locked_cluster.ports:
            master = SyncRedis(host="127.0.0.1", port=port, password=PASSWORD)
            links = [c for c in master.client_list() if c.get("name") == name]
            master.close()
            assert links, f"no subscriber link of node B on the master at port {port}"


def serve(
    tmp_path: Path, bus_toml: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    cfg = tmp_path / "bus.toml"
    cfg.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\nws_port = 0\nhttp_port = 0\n'
        f'use_uvloop = false\n[bus]\nbackend = "redis"\nchannel_prefix = "{fresh_prefix()}"\n'
        + bus_toml
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IMSERVER_")}
    return subprocess.Popen(
        [sys.executable, "-m", "imserver", "serve", "--config", str(cfg)],
        cwd=REPO,
        env={**clean, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(
    ("bus_toml", "env"),
    [
        ("", {}),  # no password at all
        (f'redis_password = "{WRONG}"\n', {}),
        ("", {"IMSERVER_BUS_REDIS_PASSWORD": WRONG}),  # from the environment
        (f'redis_username = "{ACL_USER}"\nredis_password = "{WRONG}"\n', {}),
    ],
    ids=["missing", "wrong", "wrong-from-env", "wrong-acl-user"],
)
def test_wrong_or_missing_credentials_stop_serve_with_one_line_naming_the_fix(
    tmp_path: Path, locked_redis: SingleRedis, bus_toml: str, env: dict[str, str]
) -> None:
    url = f'redis_url = "redis://127.0.0.1:{locked_redis.port}/0"\n'
    proc = serve(tmp_path, url + bus_toml, env)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 5, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    line = errors[0]
    assert line.startswith(
        f"error: bus_unavailable: the Redis bus at redis://127.0.0.1:{locked_redis.port}/0"
        " refused this node's credentials"
    ), line
    assert "redis_password" in line and "IMSERVER_BUS_REDIS_PASSWORD" in line
    assert "Traceback" not in err
    for secret in (WRONG, PASSWORD, ACL_PASSWORD):
        assert secret not in out + err


async def test_serve_with_the_password_logs_no_password(
    tmp_path: Path, locked_redis: SingleRedis
) -> None:
    """Start-up and shutdown lines name the Redis, never its password."""
    url = f'redis_url = "redis://127.0.0.1:{locked_redis.port}/0"\n'
    proc = serve(tmp_path, url, {"IMSERVER_BUS_REDIS_PASSWORD": PASSWORD})
    assert proc.stderr is not None
    lines: list[str] = []
    loop = asyncio.get_running_loop()
    try:
        while not any("imserver listening" in line for line in lines):
            line = await asyncio.wait_for(loop.run_in_executor(None, proc.stderr.readline), 30)
            assert line, f"serve ended before listening: {''.join(lines)}"
            lines.append(line)
        await asyncio.sleep(0.5)  # the signal handlers are installed right after that line
    finally:
        proc.send_signal(signal.SIGINT)
        out, rest = proc.communicate(timeout=30)
    assert proc.returncode == 0, "".join(lines) + rest
    logged = "".join(lines) + rest + out
    assert "bus: redis" in logged
    assert PASSWORD not in logged


async def test_a_cluster_with_a_wrong_password_is_refused_naming_the_fix(
    locked_cluster: RedisCluster,
) -> None:
    bus = RedisBus(
        RedisBusSettings(cluster_nodes=tuple(locked_cluster.nodes), auth=RedisAuth(password=WRONG)),
        store=None,  # type: ignore[arg-type]  # never reached: start fails first
    )
    with pytest.raises(BusUnavailable) as e:
        await bus.start()
    message = e.value.message
    assert message.startswith("the Redis bus at Redis Cluster ")
    assert "refused this node's credentials" in message
    assert "IMSERVER_BUS_REDIS_PASSWORD" in message and WRONG not in message


async def test_a_user_without_the_bus_channels_is_refused_naming_the_fix(
    locked_redis: SingleRedis,
) -> None:
    settings = RedisBusSettings(
        url=f"redis://127.0.0.1:{locked_redis.port}/0",
        auth=RedisAuth(NO_CHANNELS_USER, ACL_PASSWORD),
    )
    bus = RedisBus(settings, store=None)  # type: ignore[arg-type]  # start fails first
    with pytest.raises(BusUnavailable) as e:
        await bus.start()
    message = e.value.message
    assert "refused a command of this node's user" in message, message
    assert "ACL SETUSER" in message and ACL_PASSWORD not in message


async def test_an_unreachable_cluster_is_reported_like_an_unreachable_redis() -> None:
    """A cluster's start-up error is not a ``RedisError``: still one line, not a traceback."""
    node = f"127.0.0.1:{free_port()}"  # nothing listens there
    bus = RedisBus(RedisBusSettings(cluster_nodes=(node,)), store=None)  # type: ignore[arg-type]
    with pytest.raises(BusUnavailable) as e:
        await bus.start()
    assert e.value.message.startswith(f"cannot reach the Redis bus at Redis Cluster {node}")
    assert "redis_cluster_nodes" in e.value.message


def test_credentials_from_the_environment_and_kept_out_of_reprs() -> None:
    config = load_config(
        None,
        env={
            "IMSERVER_BUS_BACKEND": "redis",
            "IMSERVER_BUS_REDIS_USERNAME": ACL_USER,
            "IMSERVER_BUS_REDIS_PASSWORD": ACL_PASSWORD,
        },
    )
    assert (config.bus.redis_username, config.bus.redis_password) == (ACL_USER, ACL_PASSWORD)
    assert ACL_PASSWORD not in repr(config)
    auth = RedisAuth(config.bus.redis_username, config.bus.redis_password)
    assert ACL_PASSWORD not in repr(RedisBusSettings(auth=auth))


def test_credentials_in_the_url_and_in_the_keys_at_once_are_refused() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(
            None,
            env={},
            overrides={
                "bus": {
                    "backend": "redis",
                    "redis_url": f"redis://:{PASSWORD}@127.0.0.1:6379/0",
                    "redis_password": PASSWORD,
                }
            },
        )
    assert e.value.key == "bus.redis_password"
    assert "one place" in e.value.reason
