"""``[bus]``: the Redis keys are checked at start, with the key's name in the error."""

from __future__ import annotations

import pytest

from imserver.bus.redis import RedisBus
from imserver.bus.redis_settings import RedisBusSettings
from imserver.config import load_config
from imserver.errors import BusUnavailable, ConfigError
from tests.redis_support import free_port


def test_redis_bus_from_the_environment() -> None:
    config = load_config(
        None,
        env={
            "IMSERVER_BUS_BACKEND": "redis",
            "IMSERVER_BUS_REDIS_CLUSTER_NODES": "10.0.0.1:7000, 10.0.0.2:7000",
            "IMSERVER_BUS_CHANNEL_PREFIX": "prod:",
        },
    )
    assert config.bus.backend == "redis"
    assert config.bus.redis_cluster_nodes == ("10.0.0.1:7000", "10.0.0.2:7000")
    assert config.bus.channel_prefix == "prod:"


@pytest.mark.parametrize(
    ("bus", "key"),
    [
        ({"backend": "kafka"}, "bus.backend"),
        ({"backend": "redis", "redis_url": "localhost:6379"}, "bus.redis_url"),
        ({"backend": "redis", "redis_cluster_nodes": ["10.0.0.1"]}, "bus.redis_cluster_nodes"),
        ({"backend": "redis", "redis_cluster_nodes": ["h:99999"]}, "bus.redis_cluster_nodes"),
        ({"backend": "redis", "channel_prefix": "{same-slot}"}, "bus.channel_prefix"),
        ({"backend": "redis", "channel_prefix": ""}, "bus.channel_prefix"),
    ],
)
def test_bad_bus_settings_name_the_key(bus: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, env={}, overrides={"bus": bus})
    assert e.value.key == key


async def test_an_unreachable_redis_stops_the_start_with_one_line_naming_the_fix() -> None:
    port = free_port()  # nothing listens there
    bus = RedisBus(RedisBusSettings(url=f"redis://127.0.0.1:{port}/0"), store=None)  # type: ignore[arg-type]
    with pytest.raises(BusUnavailable) as e:
        await bus.start()
    message = str(e.value.message)
    assert f"127.0.0.1:{port}" in message and "IMSERVER_BUS_REDIS_URL" in message
    assert "\n" not in message
