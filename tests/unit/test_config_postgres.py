"""``[store] backend = "postgres"``: what the configuration accepts and refuses at start."""

from __future__ import annotations

import pytest

from imserver.config import ConfigError, load_config

DSN = "postgresql://imserver@db.internal:5432/imserver"


def test_postgres_backend_with_dsn_and_pool_sizes() -> None:
    c = load_config(
        None,
        env={},
        overrides={"store": {"backend": "postgres", "dsn": DSN, "pool_max_size": 20}},
    )
    assert (c.store.backend, c.store.dsn, c.store.pool_min_size, c.store.pool_max_size) == (
        "postgres",
        DSN,
        2,
        20,
    )


def test_environment_overrides_choose_postgres() -> None:
    env = {
        "IMSERVER_STORE_BACKEND": "postgres",
        "IMSERVER_STORE_DSN": DSN,
        "IMSERVER_STORE_POOL_MIN_SIZE": "1",
        "IMSERVER_STORE_POOL_MAX_SIZE": "4",
    }
    c = load_config(None, env=env)
    assert (c.store.backend, c.store.dsn, c.store.pool_min_size, c.store.pool_max_size) == (
        "postgres",
        DSN,
        1,
        4,
    )


def test_postgres_without_a_dsn_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, env={}, overrides={"store": {"backend": "postgres"}})
    assert caught.value.key == "store.dsn"
    assert "IMSERVER_STORE_DSN" in caught.value.reason


@pytest.mark.parametrize(
    ("store", "key"),
    [
        ({"dsn": "mysql://x"}, "store.dsn"),
        ({"dsn": DSN, "pool_min_size": -1}, "store.pool_min_size"),
        ({"dsn": DSN, "pool_max_size": 0}, "store.pool_max_size"),
        ({"dsn": DSN, "pool_min_size": 5, "pool_max_size": 4}, "store.pool_max_size"),
    ],
)
def test_bad_postgres_settings_are_refused(store: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, env={}, overrides={"store": {"backend": "postgres", **store}})
    assert caught.value.key == key


def test_unknown_backend_lists_both_known_ones() -> None:
    with pytest.raises(ConfigError, match="known: sqlite, postgres"):
        load_config(None, env={}, overrides={"store": {"backend": "mongodb"}})


def test_sqlite_ignores_the_postgres_keys() -> None:
    c = load_config(None, env={}, overrides={"store": {"pool_max_size": 0}})
    assert c.store.backend == "sqlite"
