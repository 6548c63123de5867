"""Unit tests for imserver/config.py: defaults, the TOML file, env overrides, checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from imserver.config import (
    AuthConfig,
    ChatConfig,
    Config,
    GatewayConfig,
    LimitsConfig,
    ServerConfig,
    StoreConfig,
    load_config,
)
from imserver.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config" / "default.toml"
SECRET = "s" * 32


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "imserver.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _config_error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(_toml(tmp_path, text), env={})
    return info.value


# -- defaults and the shipped file -------------------------------------------------
def test_defaults_without_file_or_env() -> None:
    c = load_config(None, env={})
    assert c == Config()
    assert c.server.ws_port == 8700
    assert c.server.http_port == 8701
    assert c.server.host == "127.0.0.1"
    assert c.store.backend == "sqlite"
    assert c.limits.max_frame_bytes == 65536
    assert c.limits.max_text_chars == 5000
    assert c.gateway.idle_timeout_s == 120.0
    assert c.chat.recall_window_s == 120.0
    assert c.auth.secret == ""
    assert c.sqlite_file == Path("./data") / "imserver.db"


def test_shipped_default_toml_equals_builtin_defaults() -> None:
    shipped = load_config(SHIPPED, env={})
    builtin = load_config(None, env={})
    for section in dataclasses.fields(Config):
        assert getattr(shipped, section.name) == getattr(builtin, section.name), section.name
    assert shipped == builtin


def test_shipped_default_toml_lists_every_key() -> None:
    import tomllib

    raw = tomllib.loads(SHIPPED.read_text(encoding="utf-8"))
    for section in dataclasses.fields(Config):
        cls: Any = section.default_factory
        keys = {f.name for f in dataclasses.fields(cls)}
        assert set(raw.get(section.name, {})) == keys, section.name


def test_env_none_reads_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMSERVER_SERVER_WS_PORT", "9123")
    assert load_config(None).server.ws_port == 9123
    assert load_config(None, env={}).server.ws_port == 8700  # an explicit env wins


# -- file values --------------------------------------------------------------------
def test_file_values_override_defaults(tmp_path: Path) -> None:
    path = _toml(
        tmp_path,
        f"""
[server]
ws_port = 9000
host = "0.0.0.0"
use_uvloop = false
shutdown_grace_s = 2      # an integer is fine for a float key

[auth]
secret = "{SECRET}"

[limits]
max_text_chars = 10
allowed_file_types = ["text/plain", "image/png"]

[store]
sqlite_path = "/tmp/x.db"
""",
    )
    c = load_config(path, env={})
    assert c.server.ws_port == 9000
    assert c.server.host == "0.0.0.0"
    assert c.server.use_uvloop is False
    assert c.server.shutdown_grace_s == 2.0 and isinstance(c.server.shutdown_grace_s, float)
    assert c.auth.secret == SECRET
    assert c.limits.max_text_chars == 10
    assert c.limits.allowed_file_types == ("text/plain", "image/png")
    assert c.sqlite_file == Path("/tmp/x.db")
    # untouched keys keep their defaults
    assert c.server.http_port == 8701
    assert c.limits.max_frame_bytes == LimitsConfig().max_frame_bytes
    assert c.gateway == GatewayConfig()


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(_toml(tmp_path, ""), env={}) == Config()


# -- environment overrides ---------------------------------------------------------
def test_env_overrides_int() -> None:
    c = load_config(None, env={"IMSERVER_SERVER_WS_PORT": "9001"})
    assert c.server.ws_port == 9001


def test_env_overrides_float() -> None:
    c = load_config(None, env={"IMSERVER_GATEWAY_IDLE_TIMEOUT_S": "3.5"})
    assert c.gateway.idle_timeout_s == 3.5


def test_env_int_for_float_key() -> None:
    c = load_config(None, env={"IMSERVER_CHAT_RECALL_WINDOW_S": "30"})
    assert c.chat.recall_window_s == 30.0 and isinstance(c.chat.recall_window_s, float)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("on", True),
        (" On ", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("off", False),
    ],
)
def test_env_overrides_bool(text: str, value: bool) -> None:
    c = load_config(None, env={"IMSERVER_GATEWAY_COMPRESSION": text})
    assert c.gateway.compression is value


def test_env_overrides_str() -> None:
    c = load_config(
        None, env={"IMSERVER_SERVER_HOST": "0.0.0.0", "IMSERVER_SERVER_LOG_LEVEL": "debug"}
    )
    assert c.server.host == "0.0.0.0"
    assert c.server.log_level == "debug"


def test_env_overrides_list() -> None:
    c = load_config(None, env={"IMSERVER_LIMITS_ALLOWED_FILE_TYPES": " text/plain, image/png ,,"})
    assert c.limits.allowed_file_types == ("text/plain", "image/png")


def test_env_overrides_file_and_overrides_beat_env(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[server]\nws_port = 9000\nhttp_port = 9100\n")
    c = load_config(path, env={"IMSERVER_SERVER_WS_PORT": "9001"})
    assert c.server.ws_port == 9001  # env beats the file
    assert c.server.http_port == 9100  # the file beats the default
    c = load_config(
        path,
        env={"IMSERVER_SERVER_WS_PORT": "9001"},
        overrides={"server": {"ws_port": 9002}},
    )
    assert c.server.ws_port == 9002  # overrides beat env


def test_env_variables_of_other_programs_are_ignored() -> None:
    c = load_config(None, env={"HOME": "/root", "IMSERVERX": "1", "PATH": "/bin"})
    assert c == Config()


# -- invalid configurations: ConfigError names the key -----------------------------
def test_unknown_section(tmp_path: Path) -> None:
    err = _config_error(tmp_path, "[nope]\nx = 1\n")
    assert err.key == "nope"


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    err = _config_error(tmp_path, "server = 5\n")
    assert err.key == "server"


def test_unknown_key(tmp_path: Path) -> None:
    err = _config_error(tmp_path, "[server]\nwsport = 9000\n")
    assert err.key == "server.wsport"


def test_unknown_key_in_overrides() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={"limits": {"max_nothing": 1}})
    assert info.value.key == "limits.max_nothing"


@pytest.mark.parametrize(
    ("snippet", "key"),
    [
        ('[server]\nws_port = "8700"', "server.ws_port"),
        ("[server]\nws_port = 1.5", "server.ws_port"),
        ("[server]\nws_port = true", "server.ws_port"),
        ("[server]\nhost = 5", "server.host"),
        ("[server]\nuse_uvloop = 1", "server.use_uvloop"),
        ('[server]\nuse_uvloop = "true"', "server.use_uvloop"),
        ("[server]\nshutdown_grace_s = true", "server.shutdown_grace_s"),
        ('[gateway]\nidle_timeout_s = "soon"', "gateway.idle_timeout_s"),
        ('[limits]\nallowed_file_types = "text/plain"', "limits.allowed_file_types"),
        ("[limits]\nallowed_file_types = [1, 2]", "limits.allowed_file_types"),
        ("[auth]\nsecret = 12345", "auth.secret"),
    ],
)
def test_wrong_type_in_file(tmp_path: Path, snippet: str, key: str) -> None:
    err = _config_error(tmp_path, snippet + "\n")
    assert err.key == key


@pytest.mark.parametrize(
    ("var", "value", "key"),
    [
        ("IMSERVER_SERVER_WS_PORT", "abc", "server.ws_port"),
        ("IMSERVER_SERVER_WS_PORT", "", "server.ws_port"),
        ("IMSERVER_SERVER_WS_PORT", "80.5", "server.ws_port"),
        ("IMSERVER_SERVER_USE_UVLOOP", "maybe", "server.use_uvloop"),
        ("IMSERVER_SERVER_USE_UVLOOP", "", "server.use_uvloop"),
        ("IMSERVER_GATEWAY_IDLE_TIMEOUT_S", "soon", "gateway.idle_timeout_s"),
    ],
)
def test_wrong_type_in_env(var: str, value: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={var: value})
    assert info.value.key == key


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"ws_port": 70000}, "server.ws_port"),
        ({"ws_port": -1}, "server.ws_port"),
        ({"http_port": 65536}, "server.http_port"),
        ({"http_port": -80}, "server.http_port"),
        ({"ws_port": 9000, "http_port": 9000}, "server.http_port"),
    ],
)
def test_bad_ports(values: dict[str, int], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={"server": values})
    assert info.value.key == key


def test_port_zero_means_any_free_port_and_may_repeat() -> None:
    c = load_config(None, env={}, overrides={"server": {"ws_port": 0, "http_port": 0}})
    assert (c.server.ws_port, c.server.http_port) == (0, 0)


def test_bad_port_from_env() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"IMSERVER_SERVER_HTTP_PORT": "99999"})
    assert info.value.key == "server.http_port"


@pytest.mark.parametrize("level", ["LOUD", "TRACE", "", "CRITICAL"])
def test_bad_log_level(level: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"IMSERVER_SERVER_LOG_LEVEL": level})
    assert info.value.key == "server.log_level"


@pytest.mark.parametrize("level", ["DEBUG", "info", "Warning", "ERROR"])
def test_good_log_levels(level: str) -> None:
    assert load_config(None, env={"IMSERVER_SERVER_LOG_LEVEL": level}).server.log_level == level


def test_too_short_secret() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"IMSERVER_AUTH_SECRET": "s" * 31})
    assert info.value.key == "auth.secret"
    c = load_config(None, env={"IMSERVER_AUTH_SECRET": "s" * 32})
    assert c.auth.secret == "s" * 32


def test_too_short_admin_api_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={"auth": {"admin_api_key": "k" * 15}})
    assert info.value.key == "auth.admin_api_key"
    c = load_config(None, env={}, overrides={"auth": {"admin_api_key": "k" * 16}})
    assert c.auth.admin_api_key == "k" * 16


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("store", "backend", "mysql"),  # "postgres" is supported (test_config_postgres.py)
        ("store", "sqlite_synchronous", "SOMETIMES"),
        ("bus", "backend", "kafka"),  # "redis" is supported (test_config_bus.py)
    ],
)
def test_unsupported_choices(section: str, key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={section: {key: value}})
    assert info.value.key == f"{section}.{key}"


_INT_LIMITS = [
    f.name
    for f in dataclasses.fields(LimitsConfig)
    if isinstance(getattr(LimitsConfig(), f.name), int)
]


@pytest.mark.parametrize("value", [0, -1])
@pytest.mark.parametrize("name", _INT_LIMITS)
def test_limits_must_be_positive(name: str, value: int) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={"limits": {name: value}})
    assert info.value.key == f"limits.{name}"


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("store", "group_commit_max", 0),
        ("store", "group_commit_max", -5),
        ("auth", "token_ttl_s", 0),
        ("auth", "token_ttl_s", -1),
        ("auth", "auth_timeout_s", 0.0),
        ("auth", "auth_timeout_s", -1.0),
        ("gateway", "ping_interval_s", -1.0),
        ("gateway", "ping_timeout_s", 0.0),
        ("gateway", "idle_timeout_s", -0.5),
        ("gateway", "send_buffer_limit_bytes", -1),
        ("chat", "recall_window_s", -1.0),
    ],
)
def test_negative_or_zero_values_rejected(section: str, key: str, value: float) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={section: {key: value}})
    assert info.value.key == f"{section}.{key}"


def test_negative_shutdown_grace_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={"server": {"shutdown_grace_s": -1.0}})
    assert info.value.key == "server.shutdown_grace_s"


def test_zero_recall_window_is_allowed() -> None:
    c = load_config(None, env={}, overrides={"chat": {"recall_window_s": 0}})
    assert c.chat.recall_window_s == 0.0


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("limits.max_frame_bytes", 1023),
        ("limits.max_group_members", 1),
        ("gateway.send_buffer_limit_bytes", 65535),
    ],
)
def test_minimums(key: str, value: int) -> None:
    section, name = key.split(".")
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={section: {name: value}})
    assert info.value.key == key


@pytest.mark.parametrize(
    ("var", "text"),
    [
        ("IMSERVER_GATEWAY_IDLE_TIMEOUT_S", "nan"),
        ("IMSERVER_GATEWAY_IDLE_TIMEOUT_S", "inf"),
        ("IMSERVER_CHAT_RECALL_WINDOW_S", "nan"),
        ("IMSERVER_CHAT_RECALL_WINDOW_S", "inf"),
        ("IMSERVER_GATEWAY_PING_INTERVAL_S", "nan"),
        ("IMSERVER_AUTH_AUTH_TIMEOUT_S", "nan"),
        ("IMSERVER_AUTH_TOKEN_TTL_S", "nan"),  # an int key: int("nan") fails, as it should
    ],
)
def test_non_finite_floats_rejected(var: str, text: str) -> None:
    # float("nan") passes every `value <= 0` / `value < 0` check. The server later
    # does int(idle_timeout_s) for every auth result and int(recall_window_s * 1000)
    # when it builds ChatService; both raise for nan and inf. Such a value must
    # fail at start-up with a ConfigError naming the key.
    key = var.removeprefix("IMSERVER_").lower().replace("_", ".", 1)
    with pytest.raises(ConfigError) as info:
        load_config(None, env={var: text})
    assert info.value.key == key


def test_non_finite_float_in_toml_rejected(tmp_path: Path) -> None:
    err = _config_error(tmp_path, "[gateway]\nidle_timeout_s = nan\n")
    assert err.key == "gateway.idle_timeout_s"


def test_invalid_toml_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[server\nws_port = = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.key == str(path)
    assert "TOML" in info.value.reason


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.key == str(path)
    assert "not found" in info.value.reason


def test_config_error_message_names_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"IMSERVER_SERVER_WS_PORT": "x"})
    assert "server.ws_port" in str(info.value)


def test_section_dataclasses_are_the_sections() -> None:
    names = [f.name for f in dataclasses.fields(Config)]
    assert names == [
        "server",
        "store",
        "bus",
        "auth",
        "limits",
        "gateway",
        "http",
        "chat",
        "cards",
        "security",
    ]
    c = Config()
    assert isinstance(c.server, ServerConfig)
    assert isinstance(c.store, StoreConfig)
    assert isinstance(c.auth, AuthConfig)
    assert isinstance(c.chat, ChatConfig)


def test_misspelt_environment_variable_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"IMSERVER_SERVER_WS_PROT": "9000"})
    assert info.value.key == "IMSERVER_SERVER_WS_PROT"


def test_imserver_config_variable_is_not_a_key() -> None:
    assert load_config(None, env={"IMSERVER_CONFIG": "x.toml"}) == load_config(None, env={})


@pytest.mark.parametrize("value", [0, -1.0])
def test_a_ding_interval_that_is_not_positive_is_refused(value: float) -> None:
    """0 s between re-notifications would send DINGs in a tight loop."""
    with pytest.raises(ConfigError) as e:
        load_config(None, env={}, overrides={"chat": {"ding_interval_s": value}})
    assert e.value.key == "chat.ding_interval_s"
    assert "greater than 0" in e.value.reason
