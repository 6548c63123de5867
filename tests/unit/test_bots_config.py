"""``bots.toml`` checks, and the ``python -m bots`` command on a bad config."""

from __future__ import annotations

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
