"""A stored message with per-reader frames (masked / clear card) is one bus payload."""

from __future__ import annotations

from imserver.bus.base import TOPIC_DELIVER
from imserver.bus.local import LocalBus
from imserver.hub import Hub
from imserver.metrics import Metrics
from imserver.protocol.frames import event_frame
from tests.unit.test_hub import FakeSocket

MASKED = event_frame("message", {"conv": "g:1", "seq": 7, "body": {"phone": "138****1234"}})
CLEAR = event_frame("message", {"conv": "g:1", "seq": 7, "body": {"phone": "13812341234"}})


async def test_each_variant_reaches_only_its_recipients_once() -> None:
    hub = Hub(Metrics())
    li, zhang, wang = FakeSocket("li", "d"), FakeSocket("zhang", "d"), FakeSocket("wang", "d")
    for sock in (li, zhang, wang):
        hub.register(sock)
    bus = LocalBus()
    bus.subscribe(TOPIC_DELIVER, hub.on_deliver)
    await bus.publish(
        TOPIC_DELIVER,
        {
            "variants": [
                {"recipients": ["li", "wang"], "frame": MASKED},
                {"recipients": ["zhang"], "frame": CLEAR},
            ],
            "conv": "g:1",
            "seq": 7,
        },
    )
    assert li.frames() == [MASKED] and wang.frames() == [MASKED]
    assert zhang.frames() == [CLEAR]
