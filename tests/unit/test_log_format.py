"""Log lines as JSON objects, the request id on every line, and the config key."""

from __future__ import annotations

import logging

import orjson
import pytest

from imserver.config import load_config
from imserver.errors import ConfigError
from imserver.log_format import JsonFormatter, RequestIdFilter, TextFormatter
from imserver.request_context import (
    accepted_request_id,
    reset_request_id,
    set_request_id,
)


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("cards.service", logging.INFO, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    RequestIdFilter().filter(rec)
    return rec


def test_a_json_line_has_the_fixed_keys_the_request_id_and_the_context() -> None:
    token = set_request_id("trace-1")
    try:
        rec = record("decided by %s\nsecond line", "li", card_id="c_1")
    finally:
        reset_request_id(token)
    line = JsonFormatter().format(rec)
    assert "\n" not in line  # one object per line, whatever the message holds
    out = orjson.loads(line)
    assert out["level"] == "INFO" and out["logger"] == "cards.service"
    assert out["msg"] == "decided by li\nsecond line"
    assert out["request_id"] == "trace-1" and out["card_id"] == "c_1"
    assert out["ts"].endswith("+00:00")


def test_outside_a_request_there_is_no_request_id() -> None:
    out = orjson.loads(JsonFormatter().format(record("x")))
    assert "request_id" not in out
    assert TextFormatter().format(record("x")).endswith("cards.service: x")


def test_the_text_line_names_the_request_id() -> None:
    token = set_request_id("abc")
    try:
        assert TextFormatter().format(record("x")).endswith("x [request_id=abc]")
    finally:
        reset_request_id(token)


@pytest.mark.parametrize("given", ["ok-1.2:3_x", "A" * 128])
def test_a_well_formed_incoming_id_is_kept(given: str) -> None:
    assert accepted_request_id(given) == given


@pytest.mark.parametrize("given", [None, "", "has space", "new\nline", "A" * 129, "中文"])
def test_anything_else_gets_a_new_id(given: str | None) -> None:
    made = accepted_request_id(given)
    assert made != given and len(made) == 32 and int(made, 16) >= 0


def test_log_format_must_be_text_or_json() -> None:
    assert load_config(None, env={}, overrides={"server": {"log_format": "json"}}).server
    with pytest.raises(ConfigError, match=r"server\.log_format"):
        load_config(None, env={}, overrides={"server": {"log_format": "xml"}})
