"""``bots.toml`` checks, and the ``python -m bots`` command on a bad config."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bots.runtime.config import ConfigError, load_runtime_config, parse_runtime_config

SECRET = "s" * 32
REPO = Path(__file__).resolve().parents[2]


def config(**bot: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "oa", "class": "bots.oa:OABot", "app_id": "oa", "app_secret": SECRET,
        "event_secret": SECRET, "forward_url": "http://127.0.0.1:1/d",
    }  # fmt: skip
    base.update(bot)
    return {"runtime": {"server_url": "http://127.0.0.1:8700"}, "bot": [base]}


def test_config_reads_secrets_from_the_environment() -> None:
    doc = config(app_secret_env="OA_APP_SECRET")
    cfg = parse_runtime_config(doc, {"OA_APP_SECRET": "e" * 40})
    assert cfg.bots[0].app_secret == "e" * 40 and cfg.port == 8800


@pytest.mark.parametrize(
    ("bot", "message"),
    [
        ({"name": "OA!"}, "bot[0].name"),
        ({"class": "bots.oa.OABot"}, "bot[0].class"),
        ({"app_secret": "short"}, "bot[0].app_secret must be at least 32"),
        ({"event_secret_env": "UNSET_VAR"}, "UNSET_VAR, which is not set"),
    ],
)
def test_config_errors_name_the_key(bot: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_runtime_config(config(**bot), {})


def test_poll_table_defaults_and_signs_with_the_event_secret_unless_told() -> None:
    cfg = parse_runtime_config(config(poll={"url": "http://127.0.0.1:9/feed"}), {})
    poll = cfg.bots[0].poll
    assert poll is not None and (poll.interval_s, poll.page_size) == (5.0, 50)
    assert poll.secret == SECRET  # the bot's event_secret, already shared
    doc = config(poll={"url": "https://feed/x", "secret_env": "FEED", "interval_s": 0.5})
    poll = parse_runtime_config(doc, {"FEED": "f" * 32}).bots[0].poll
    assert poll is not None and (poll.secret, poll.interval_s) == ("f" * 32, 0.5)
    assert parse_runtime_config(config(), {}).bots[0].poll is None


@pytest.mark.parametrize(
    ("poll", "message"),
    [
        ("http://x", "bot[0].poll must be a table"),
        ({}, "bot[0].poll.url is required"),
        ({"url": "ftp://x"}, "bot[0].poll.url must be an http(s) URL"),
        ({"url": "http://x", "interval_s": 0}, "bot[0].poll.interval_s must be a number > 0"),
        ({"url": "http://x", "interval_s": "5"}, "bot[0].poll.interval_s must be a number > 0"),
        ({"url": "http://x", "page_size": 0}, "bot[0].poll.page_size must be an integer"),
        ({"url": "http://x", "secret": "short"}, "bot[0].poll.secret must be at least 32"),
        ({"url": "http://x", "secret_env": "UNSET"}, "bot[0].poll.secret_env names UNSET"),
    ],
)
def test_poll_config_errors_name_the_key(poll: object, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_runtime_config(config(poll=poll), {})


def test_the_command_refuses_a_bad_poll_table_with_exit_code_2(tmp_path: Path) -> None:
    bad = tmp_path / "bots.toml"
    bad.write_text(
        '[runtime]\nserver_url = "http://127.0.0.1:1"\n[[bot]]\nname = "oa"\n'
        f'class = "bots.oa:OABot"\napp_id = "oa"\napp_secret = "{SECRET}"\n'
        f'event_secret = "{SECRET}"\nforward_url = "http://127.0.0.1:1/d"\n'
        '[bot.poll]\nurl = "http://127.0.0.1:1/feed"\ninterval_s = -1\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "bots", "run", "--config", str(bad)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "bot[0].poll.interval_s must be a number > 0" in proc.stderr


def test_the_command_refuses_a_bad_config_with_exit_code_2(tmp_path: Path) -> None:
    bad = tmp_path / "bots.toml"
    bad.write_text('[runtime]\nserver_url = "ftp://x"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "bots", "run", "--config", str(bad)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "runtime.server_url must be an http(s) URL" in proc.stderr


def test_the_example_config_loads() -> None:
    env = {"OA_APP_SECRET": "a" * 32, "OA_EVENT_SECRET": "b" * 32}
    for name in ("HOTLINE", "DUBAN"):
        env.update({f"{name}_APP_SECRET": "c" * 32, f"{name}_EVENT_SECRET": "d" * 32})
    cfg = load_runtime_config(REPO / "bots" / "bots.example.toml", env)
    bot, hotline, duban = cfg.bots
    assert (bot.name, bot.bot_class, bot.event_secret) == ("oa", "bots.oa:OABot", "b" * 32)
    assert (hotline.name, hotline.bot_class) == ("hotline", "bots.hotline:HotlineBot")
    assert (duban.name, duban.bot_class) == ("duban", "bots.supervision:SupervisionBot")
    assert cfg.server_url == "http://127.0.0.1:8701"
