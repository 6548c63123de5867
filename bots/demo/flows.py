"""The demo's flows: each a bot, its simulated business system and its scripted steps.

A flow plugs into the demo by one line in :data:`FLOW_MODULES`: the world
registers its app, starts its business system, adds its ``[[bot]]`` table
to the bots' config, ``run`` sends its live events, and the scenario runs
its steps and prints its counters. Three flows: 统建 OA, 12345 hotline and
督查督办.
"""

from __future__ import annotations

import importlib
import importlib.util
import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from bots.demo.org import Org

if TYPE_CHECKING:
    from bots.demo.world import DemoWorld


class BusinessSystem(Protocol):
    """A simulated business system: it sends signed events and receives the bot's forwards."""

    @property
    def forward_url(self) -> str: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send_event(self, url: str, event: dict[str, Any]) -> tuple[int, dict[str, Any]]: ...


@dataclass
class FlowResult:
    """What a flow's scenario did: counters for the summary table, and what went wrong."""

    counters: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n


@dataclass(frozen=True)
class Flow:
    """One pluggable flow (see the module docstring)."""

    name: str  # the bot's name and app id: /bots/<name>/events
    title: str  # for the summary table
    bot_class: str
    make_system: Callable[[str, Org], BusinessSystem]  # (event_secret, org) → system
    scenario: Callable[[DemoWorld, FlowContext, bool], Awaitable[FlowResult]]
    #: Realistic events for `run` (the business system sends one every interval).
    live_events: Callable[[Org, random.Random], Iterator[dict[str, Any]]]
    bot_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class FlowContext:
    """A flow as started: its secrets and its running business system."""

    flow: Flow
    app_secret: str
    event_secret: str
    system: BusinessSystem | None = None


#: Every flow's module; each has a ``FLOW``. Adding a flow is adding a line here.
FLOW_MODULES = ("bots.demo.oa_flow", "bots.demo.hotline_flow", "bots.demo.supervision_flow")


def flows() -> dict[str, Flow]:
    """Every flow whose bot is installed, by name, in :data:`FLOW_MODULES` order."""
    found: dict[str, Flow] = {}
    for module in FLOW_MODULES:
        flow: Flow = importlib.import_module(module).FLOW
        if importlib.util.find_spec(flow.bot_class.partition(":")[0]) is not None:
            found[flow.name] = flow
    return found
