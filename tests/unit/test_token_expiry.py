"""When a live session is warned about its token, and when a flooder is closed (pure)."""

from __future__ import annotations

from imserver.gateway.server import flood_refusals
from imserver.tokens import EXPIRY_WARNING_S, LEEWAY_S, expiry_warning_lead_s


def test_access_tokens_are_warned_a_minute_ahead() -> None:
    assert expiry_warning_lead_s(900) == EXPIRY_WARNING_S == 60.0
    assert expiry_warning_lead_s(3600) == 60.0


def test_short_tokens_are_warned_a_quarter_of_their_life_ahead() -> None:
    assert expiry_warning_lead_s(120) == 30.0
    assert expiry_warning_lead_s(4) == 1.0
    assert expiry_warning_lead_s(0) == 0.0
    assert expiry_warning_lead_s(-5) == 0.0  # a clock-skewed iat never warns "in the past"


def test_the_leeway_is_five_seconds() -> None:
    assert LEEWAY_S == 5  # documented in docs/protocol.md section 3.1


def test_flooders_are_closed_after_twice_the_burst_but_never_fewer_than_100() -> None:
    assert flood_refusals(60) == 120
    assert flood_refusals(5) == 100
