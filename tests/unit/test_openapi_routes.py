"""The OpenAPI description covers every HTTP route of a built server, and
docs/openapi.json is the current output of ``python -m imserver openapi``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import orjson

from imserver.app import build_world
from imserver.http import apps_api, openapi_schemas
from imserver.http.openapi import build_spec
from tests.support import make_test_config

ROOT = Path(__file__).resolve().parents[2]
#: Added by aiohttp for every GET; described by the GET itself.
IMPLICIT = {"HEAD"}
#: /healthz answers 503 with its own report; a missing static file is aiohttp's empty 404.
BODY_EXCEPTIONS = {"/healthz", "/dashboard/static/{filename}"}


def routes_of_built_app(tmp_path: Path) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route the composition root adds."""
    world = build_world(make_test_config(tmp_path))
    found: set[tuple[str, str]] = set()
    for route in world.http_app.router.routes():
        if route.method in IMPLICIT or route.resource is None:
            continue
        info = route.resource.get_info()
        path = info.get("path") or info.get("formatter")
        if "prefix" in info:  # static files: one operation for every file under the prefix
            path = info["prefix"] + "/{filename}"
        assert path, info
        # aiohttp writes {name:regex} for constrained parameters; OpenAPI just {name}.
        found.add((route.method, re.sub(r"\{(\w+):[^}]+\}", r"{\1}", path)))
    return found


def test_every_route_is_described(tmp_path: Path) -> None:
    paths = build_spec()["paths"]
    described = {(m.upper(), p) for p, ops in paths.items() for m in ops}
    missing = sorted(routes_of_built_app(tmp_path) - described)
    assert not missing, "routes missing from imserver/http/openapi.py: " + ", ".join(
        f"{m} {p}" for m, p in missing
    )


def test_every_described_route_exists(tmp_path: Path) -> None:
    paths = build_spec()["paths"]
    described = {(m.upper(), p) for p, ops in paths.items() for m in ops}
    stale = sorted(described - routes_of_built_app(tmp_path))
    assert not stale, "described but not served: " + ", ".join(f"{m} {p}" for m, p in stale)


def test_every_operation_documents_its_security_and_the_error_body() -> None:
    spec = build_spec()
    schemes = set(spec["components"]["securitySchemes"])
    for path, ops in spec["paths"].items():
        for method, operation in ops.items():
            where = f"{method.upper()} {path}"
            assert "security" in operation, where
            for requirement in operation["security"]:
                assert set(requirement) <= schemes, where
            for status, answer in operation["responses"].items():
                if status.startswith(("4", "5")) and path not in BODY_EXCEPTIONS:
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, where


def test_the_committed_description_is_current() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "imserver", "openapi"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    committed = (ROOT / "docs" / "openapi.json").read_bytes()
    assert orjson.loads(out) == orjson.loads(committed), (
        "docs/openapi.json is stale: run `python -m imserver openapi > docs/openapi.json`"
    )


def test_the_app_event_names_are_the_servers() -> None:
    assert openapi_schemas.APP_EVENTS == apps_api.APP_EVENTS


def test_the_updatable_card_keys_are_the_card_models() -> None:
    from cards.model import UPDATABLE

    assert openapi_schemas.UPDATABLE == UPDATABLE
    props = build_spec()["components"]["schemas"]["CardDocument"]["properties"]
    assert set(UPDATABLE) <= set(props)  # each $ref of CardUpdate resolves


def test_the_description_is_valid_openapi_3_1() -> None:
    import schemathesis

    schema = schemathesis.openapi.from_dict(build_spec())
    schema.validate()  # against the OpenAPI 3.1 meta-schema; raises naming the path
    assert build_spec()["openapi"] == "3.1.0" and "cardAction" in build_spec()["webhooks"]
