"""The command line, run as a real subprocess: ``python -m imserver serve | token``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def cli_env(**extra: str) -> dict[str, str]:
    """The parent's environment without IMSERVER_* (so only ``extra`` applies)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMSERVER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imserver", *args],
        cwd=cwd,
        env=env if env is not None else cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_config(tmp_path: Path, ws_port: int, http_port: int) -> Path:
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(
        "[server]\n"
        'host = "127.0.0.1"\n'
        f"ws_port = {ws_port}\n"
        f"http_port = {http_port}\n"
        f'data_dir = "{(tmp_path / "data").as_posix()}"\n'
        'log_level = "INFO"\n'
        "use_uvloop = false\n"
        "shutdown_grace_s = 2.0\n"
        "[store]\n"
        'sqlite_synchronous = "NORMAL"\n'
    )
    return cfg


# --------------------------------------------------------------------------- config errors


def test_serve_with_mistyped_value_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('[server]\nws_port = "x"\n')
    proc = run_cli(["serve", "--config", "bad.toml"], tmp_path)
    assert proc.returncode != 0
    assert "server.ws_port" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def test_serve_with_unknown_key_names_it(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[server]\nwsport = 9000\n")
    proc = run_cli(["serve", "--config", "bad.toml"], tmp_path)
    assert proc.returncode != 0
    assert "server.wsport" in proc.stderr, proc.stderr
    assert "unknown" in proc.stderr.lower()
    assert "Traceback" not in proc.stderr, proc.stderr


def test_serve_with_unknown_section_names_it(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[servr]\nws_port = 9000\n")
    proc = run_cli(["serve", "--config", "bad.toml"], tmp_path)
    assert proc.returncode != 0
    assert "servr" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def test_serve_with_invalid_toml_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[server\nws_port = \n")
    proc = run_cli(["serve", "--config", "bad.toml"], tmp_path)
    assert proc.returncode != 0
    assert "bad.toml" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def test_serve_with_missing_config_file_fails_cleanly(tmp_path: Path) -> None:
    proc = run_cli(["serve", "--config", "nope.toml"], tmp_path)
    assert proc.returncode != 0
    assert "nope.toml" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def test_env_var_with_bad_value_names_the_key(tmp_path: Path) -> None:
    proc = run_cli(["serve"], tmp_path, env=cli_env(IMSERVER_SERVER_WS_PORT="abc"))
    assert proc.returncode != 0
    assert "server.ws_port" in proc.stderr, proc.stderr
    assert "abc" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def test_env_var_overrides_file(tmp_path: Path) -> None:
    """A valid file plus a bad env value for another key: the env value is what fails."""
    (tmp_path / "ok.toml").write_text('[server]\nws_port = 9000\nlog_level = "INFO"\n')
    proc = run_cli(
        ["serve", "--config", "ok.toml"],
        tmp_path,
        env=cli_env(IMSERVER_SERVER_LOG_LEVEL="LOUD"),
    )
    assert proc.returncode != 0
    assert "server.log_level" in proc.stderr, proc.stderr


def test_token_rejects_invalid_user_id(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, free_port(), free_port())
    proc = run_cli(
        ["token", "--user", "bad user", "--device", "pc", "--config", str(cfg)], tmp_path
    )
    assert proc.returncode != 0
    assert "--user" in proc.stderr
    assert proc.stdout == ""


# --------------------------------------------------------------------------- serve + token


@contextlib.asynccontextmanager
async def serving(
    cfg: Path, cwd: Path
) -> AsyncIterator[tuple[asyncio.subprocess.Process, list[str]]]:
    """Start ``serve``; yield once it logged "listening". Lines of stderr are collected."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "imserver",
        "serve",
        "--config",
        str(cfg),
        cwd=cwd,
        env=cli_env(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    lines: list[str] = []
    listening = asyncio.Event()

    async def pump() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace")
            lines.append(line)
            if "listening" in line:
                listening.set()

    reader = asyncio.create_task(pump())
    try:
        try:
            await asyncio.wait_for(listening.wait(), 15)
        except TimeoutError:
            pytest.fail("server did not log 'listening':\n" + "".join(lines))
        yield proc, lines
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader, 5)


async def test_token_is_accepted_and_sigterm_closes_with_1012(tmp_path: Path) -> None:
    ws_port, http_port = free_port(), free_port()
    cfg = write_config(tmp_path, ws_port, http_port)
    minted = await asyncio.to_thread(
        run_cli, ["token", "--user", "alice", "--device", "pc", "--config", str(cfg)], tmp_path
    )
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert token.count(".") == 2 and "\n" not in token
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["dev"] == "pc" and claims["typ"] == "user"

    async with serving(cfg, tmp_path) as (proc, lines):
        async with connect(f"ws://127.0.0.1:{ws_port}/") as ws:
            await ws.send(orjson.dumps({"type": "auth", "id": 1, "token": token}).decode())
            answer = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            assert answer["type"] == "result", answer
            assert answer["data"]["user"] == "alice" and answer["data"]["device"] == "pc"
            await ws.send('{"type": "ping", "id": 2}')
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "pong", "id": 2}

            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1012

            code = await asyncio.wait_for(proc.wait(), 10)
            assert code == 0, "".join(lines)
            assert time.monotonic() - started < 10
        log = "".join(lines)
        assert "listening" in log
        assert "Traceback" not in log, log


async def test_token_from_other_data_dir_is_refused(tmp_path: Path) -> None:
    """A token minted with another deployment's secret does not open this server."""
    ws_port, http_port = free_port(), free_port()
    cfg = write_config(tmp_path, ws_port, http_port)
    other = tmp_path / "other"
    other.mkdir()
    other_cfg = write_config(other, free_port(), free_port())
    minted = await asyncio.to_thread(
        run_cli, ["token", "--user", "alice", "--device", "pc", "--config", str(other_cfg)], other
    )
    assert minted.returncode == 0, minted.stderr
    # alice exists here too, so only the signature can be the reason for refusal.
    made = await asyncio.to_thread(
        run_cli, ["user", "add", "alice", "--config", str(cfg)], tmp_path
    )
    assert made.returncode == 0, made.stderr
    async with serving(cfg, tmp_path), connect(f"ws://127.0.0.1:{ws_port}/") as ws:
        await ws.send(
            orjson.dumps({"type": "auth", "id": 1, "token": minted.stdout.strip()}).decode()
        )
        answer = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        assert answer["type"] == "error" and answer["code"] == "token_invalid", answer
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4002
