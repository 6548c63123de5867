"""Request bodies that work, for the OpenAPI description's ``example`` fields.

Together they are the documented flow an integrator follows: create users,
register the app, push an approval card, read and update it, a holder
approves, send a notice. tests/integration/test_openapi_schemathesis.py
sends them, in this order, to a real server and checks every answer against
the description -- so an example here never drifts from what the server takes.
"""

from __future__ import annotations

from typing import Any, Final

#: The app the examples register and sign as (the secret is an example too:
#: make your own with at least 32 random characters).
APP_ID: Final = "oa"
APP_SECRET: Final = "example-secret-0123456789abcdefghijklmnop"
CARD_TRACK: Final = "leave-2026-0042"

USERS: Final[dict[str, Any]] = {
    "users": [{"id": "li", "name": "李四"}, {"id": "wang", "name": "王五"}]
}

APP: Final[dict[str, Any]] = {
    "app_id": APP_ID,
    "name": "协同办公",
    "secret": APP_SECRET,
    "callback_url": "https://oa.example.gov.cn/imserver/callback",
    "scope": ["*"],
}

PUSH_CARD: Final[dict[str, Any]] = {
    "card": {
        "out_track_id": CARD_TRACK,
        "title": "请假审批：张三 3 天",
        "fields": [
            {"label": "申请人", "value": "张三"},
            {"label": "手机", "value": "13812341234", "sensitive": True},
        ],
        "body_md": "**起止**：11月27日—11月29日",
        "status": {"text": "待审批", "color": "orange"},
        "actions": [
            {"id": "approve", "label": "同意", "decision": "approve", "style": "primary"},
            {"id": "reject", "label": "驳回", "decision": "reject", "style": "danger"},
        ],
        "inputs": [{"id": "comment", "type": "text", "label": "意见", "required_for": ["reject"]}],
        "policy": {"type": "any", "actors": ["li", "wang"]},
    },
    "to": {"users": ["li", "wang"]},
}

UPDATE_CARD: Final[dict[str, Any]] = {
    "if_version": 1,
    "status": {"text": "待审批（已催办）", "color": "orange"},
}

ACT: Final[dict[str, Any]] = {
    "action": "approve",
    "action_id": "9f2c4e1a-li-approve-1",
    "inputs": {"comment": "同意"},
}

NOTICE: Final[dict[str, Any]] = {
    "title": "关于报送年度工作总结的通知",
    "text": "请各单位于 12 月 20 日前报送。",
    "to": {"users": ["li", "wang"]},
}
