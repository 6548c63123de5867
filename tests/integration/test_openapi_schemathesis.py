"""schemathesis against a real running server: every operation of /openapi.json,
no 5xx, every answer (status code, content type, headers, body) as described.

The server is a real ``python -m imserver serve`` child on free ports. Auth
is added to each generated request the way a real caller would: app routes
are signed over the exact body bytes being sent (a ``requests`` auth hook sees
the prepared request), admin routes carry the admin key, user routes a user
token. Besides the generated cases: the description's request examples are
sent in order (the integrator's flow), and the links of a pushed card's
answer are followed (read, update, act). ``IM_SCHEMATHESIS_EXAMPLES`` sets
the examples per operation (12 in CI: about 25 s on this machine).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from imserver.appauth import sign_headers
from imserver.http import openapi_examples as examples
from imserver.http.openapi import build_spec
from imserver.tokens import TokenSigner, load_or_create_secret
from tests.cards_support import ADMIN_KEY
from tests.processes import ServerProcess

APP_ID = "schema"
APP_SECRET = "s" * 40
USER = "alice"
MAX_EXAMPLES = int(os.environ.get("IM_SCHEMATHESIS_EXAMPLES", "12"))  # 12: ~20 s in CI


class CallerAuth(requests.auth.AuthBase):
    """Adds what each route needs: an app signature, the admin key or a user token."""

    def __init__(self, user_token: str, app_id: str = APP_ID, secret: str = APP_SECRET) -> None:
        self.user_token = user_token
        self.app_id, self.secret = app_id, secret

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        path = (r.path_url or "").split("?", 1)[0]
        body = r.body or b""
        if isinstance(body, str):
            body = body.encode()
        if path.startswith(("/api/v1/apps/", "/api/v1/templates", "/api/v1/stream")):
            r.headers.update(sign_headers(self.app_id, self.secret, body))
        elif path.startswith("/admin/"):
            r.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
        elif path.startswith(("/api/v1/files", "/api/v1/todo", "/api/v1/cards/")):
            r.headers["Authorization"] = f"Bearer {self.user_token}"
        return r


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx: Any, value: Any) -> dict[str, Any]:
    """The directory sync's body: generated text, sent as it is (UTF-8)."""
    return {"data": value.encode() if isinstance(value, str) else bytes(value)}


def _token(data_dir: Path, user: str) -> str:
    """A user token signed with the server's own secret (kept in its data dir)."""
    return TokenSigner(load_or_create_secret("", data_dir)).mint(user, "d1", 3600)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, CallerAuth, Path]]:
    data = tmp_path_factory.mktemp("schemathesis") / "data"
    server = ServerProcess(
        data,
        f'[auth]\nadmin_api_key = "{ADMIN_KEY}"\n'
        "[cards]\napp_requests_per_s = 1e6\napp_burst = 1000000\n",
    )
    server.start()
    try:
        asyncio.run(server.wait_ready())
        base = server.http_url
        auth = CallerAuth(_token(data, USER))
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        r = requests.post(
            f"{base}/admin/v1/users", headers=admin, json={"users": [{"id": USER}]}, timeout=10
        )
        assert r.status_code == 200, r.text
        r = requests.post(
            f"{base}/admin/v1/apps",
            headers=admin,
            json={
                "app_id": APP_ID,
                "secret": APP_SECRET,
                "callback_url": "http://127.0.0.1:9/callback",
                "scope": ["*"],
            },
            timeout=10,
        )
        assert r.status_code == 201, r.text
        card = {"out_track_id": "seed", "title": "审批", "policy": None}
        body = json.dumps({"card": card, "to": {"users": [USER]}}).encode()
        r = requests.post(
            f"{base}/api/v1/apps/cards",
            data=body,
            headers={**sign_headers(APP_ID, APP_SECRET, body), "Content-Type": "application/json"},
            timeout=10,
        )
        assert r.status_code == 201, r.text
        yield base, auth, data
    finally:
        server.stop()


#: What the description promises: no 5xx; status codes, content types, headers and
#: bodies as described. (Not ``positive_data_acceptance``: the description gives
#: shapes, and rules such as "the user must exist" are checked by the server.)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
#: The description the server serves (checked below), loaded once for parametrising.
SCHEMA = schemathesis.openapi.from_dict(build_spec())
#: ``IM_SCHEMATHESIS_MODE=negative`` (by hand, not in CI): schema-breaking inputs,
#: checked for no 5xx only -- a hunt for crashes on bad input.
MODE = os.environ.get("IM_SCHEMATHESIS_MODE", "positive")
SCHEMA.config.generation.update(
    modes=[MODE], max_examples=MAX_EXAMPLES, with_security_parameters=False
)
if MODE == "negative":
    CHECKS = [not_a_server_error]
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


def test_the_server_serves_this_description(running: tuple[str, CallerAuth, Path]) -> None:
    base, _, _ = running
    assert requests.get(f"{base}/openapi.json", timeout=10).json() == build_spec()


@pytest.mark.slow
@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
def test_every_operation_conforms(operation: Any, running: tuple[str, CallerAuth, Path]) -> None:
    base, auth, _ = running

    @given(case=operation.as_strategy())
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: Any) -> None:
        with requests.Session() as session:
            session.auth = auth
            response = case.call(base_url=base, session=session, timeout=10)
        assert response.status_code < 500, (case.method, case.path, response.text[:500])
        case.validate_response(response, checks=CHECKS)

    check()


def _resolve(expression: str, body: dict[str, Any]) -> str:
    """An OpenAPI runtime expression ``$response.body#/<key>`` against ``body``."""
    prefix = "$response.body#/"
    assert expression.startswith(prefix), expression
    return str(body[expression[len(prefix) :]])


def test_the_links_of_a_pushed_card_lead_to_working_calls(
    running: tuple[str, CallerAuth, Path],
) -> None:
    """Stateful, by the description's links: push a card, then follow every link of
    the answer (read, update, act) with the ids it names; each call succeeds and
    answers as described.

    Walked by hand rather than by a hypothesis state machine: link targets depend on
    the server's answers, which a replaying generator treats as flaky data.
    """
    base, auth, _ = running
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    # A generated full directory sync may have removed every user: bring the holder back.
    r = requests.post(
        f"{base}/admin/v1/users", headers=admin, json={"users": [{"id": USER}]}, timeout=10
    )
    assert r.status_code == 200, r.text
    spec = build_spec()
    push = copy.deepcopy(examples.PUSH_CARD)
    push["card"]["out_track_id"] = "linked-1"
    push["to"] = {"users": [USER]}
    push["card"]["policy"]["actors"] = [USER]
    bodies: dict[str, Any] = {
        "getCard": None,
        "updateCard": {"if_version": 1, "status": {"text": "已催办", "color": "orange"}},
        "actOnCard": {"action": "approve", "action_id": "linked-approve"},
    }
    by_id = {
        operation["operationId"]: (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
    }

    def call(method: str, path: str, body: Any, **path_parameters: str) -> Any:
        operation = SCHEMA[path][method]
        if body is None:
            case = operation.Case(path_parameters=path_parameters)
        else:
            case = operation.Case(body=body, path_parameters=path_parameters)
        with requests.Session() as session:
            session.auth = auth
            response = case.call(base_url=base, session=session, timeout=10)
        assert 200 <= response.status_code < 300, (method, path, response.text)
        case.validate_response(response, checks=CHECKS)
        return response

    pushed = call("POST", "/api/v1/apps/cards", push).json()
    links = spec["paths"]["/api/v1/apps/cards"]["post"]["responses"]["201"]["links"]
    followed = []
    for name in ("GetCard", "UpdateCard", "ActOnCard"):  # in an order that must work
        link = links[name]
        method, path = by_id[link["operationId"]]
        params = {k: _resolve(v, pushed) for k, v in link["parameters"].items()}
        answer = call(method, path, bodies[link["operationId"]], **params).json()
        followed.append((name, answer.get("version")))
    assert followed == [("GetCard", 1), ("UpdateCard", 2), ("ActOnCard", 3)]


def test_the_documented_examples_work_in_order(running: tuple[str, CallerAuth, Path]) -> None:
    """Every request body example of the description, sent as an integrator would."""
    base, _, data = running
    auth = CallerAuth(_token(data, "li"), examples.APP_ID, examples.APP_SECRET)
    spec = build_spec()

    def send(method: str, path: str, example_of: str, **path_parameters: str) -> Any:
        operation = SCHEMA[path][method]
        body = spec["paths"][path][method.lower()]["requestBody"]["content"]["application/json"]
        case = operation.Case(body=body["example"], path_parameters=path_parameters)
        with requests.Session() as session:
            session.auth = auth
            response = case.call(base_url=base, session=session, timeout=10)
        assert 200 <= response.status_code < 300, (example_of, response.text)
        case.validate_response(response, checks=CHECKS)
        return response.json()

    send("POST", "/admin/v1/users", "upsertUsers")
    send("POST", "/admin/v1/apps", "upsertApp")
    card = send("POST", "/api/v1/apps/cards", "pushCard")
    assert card["out_track_id"] == examples.CARD_TRACK and card["version"] == 1
    updated = send(
        "PATCH",
        "/api/v1/apps/cards/{out_track_id}",
        "updateCard",
        out_track_id=card["out_track_id"],
    )
    assert updated["version"] == 2
    acted = send("POST", "/api/v1/cards/{card_id}/act", "actOnCard", card_id=card["card_id"])
    assert (acted["state"], acted["decided_by"]) == ("approved", "li")
    send("POST", "/api/v1/apps/notices", "sendNotice")
