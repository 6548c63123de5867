"""Apps registered in ``cards.apps_file`` are loaded, checked and usable at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from imserver.errors import ConfigError
from imserver_sdk import BusinessClient
from tests.cards_support import BusinessStub, approval_card
from tests.support import Harness


async def test_apps_file_registers_apps(start_server: Any, tmp_path: Path) -> None:
    stub = BusinessStub()
    await stub.start()
    apps = tmp_path / "apps.toml"
    apps.write_text(
        f'[[app]]\napp_id = "oa"\nsecret = "{stub.secret}"\n'
        f'callback_url = "{stub.url}"\nscope = ["user:li"]\nname = "协同办公"\n'
    )
    try:
        server: Harness = await start_server(cards={"apps_file": str(apps)})
        await server.users("li")
        app = await server.world.store.get_app("oa")
        assert app is not None and app.scope == ("user:li",) and app.name == "协同办公"
        async with BusinessClient(server.world.http_url, "oa", stub.secret) as oa:
            pushed = await oa.push_card(approval_card("f1", ["li"]), users=["li"])
        assert pushed["holders"] == 1
    finally:
        await stub.stop()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (
            '[[app]]\napp_id = "Bad Id"\nsecret = "' + "s" * 32 + '"\ncallback_url = "http://x"\n',
            "app_id",
        ),
        ('[[app]]\napp_id = "oa"\nsecret = "short"\ncallback_url = "http://x"\n', "secret"),
        ("[[app]\n", "not valid TOML"),
    ],
)
async def test_bad_apps_file_stops_the_server_at_start(
    start_server: Any, tmp_path: Path, content: str, reason: str
) -> None:
    apps = tmp_path / "apps.toml"
    apps.write_text(content)
    with pytest.raises(ConfigError) as info:
        await start_server(cards={"apps_file": str(apps)})
    assert info.value.key == "cards.apps_file" and reason in info.value.reason


async def test_missing_apps_file_is_named(start_server: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        await start_server(cards={"apps_file": str(tmp_path / "nope.toml")})
    assert "file not found" in info.value.reason
