"""The pattern every trading service copies, small enough to read in one go (docs/ARCHITECTURE.md,
"Writing a service"). A pure handler class holds the state; ``setup`` is the wiring.

It tallies fills (``TradingEvent`` with details market, amount) per market:
- each fill → a child message on ``example:out`` and two state writes (the market's running total,
  the fill's id in ``example:seen``), committed with the fill's ack: all visible or none;
- a timer writes a snapshot of the whole state to ``example:snapshot`` through the same commit;
- at start the state is rebuilt from ``example:fills`` (up to where the group has read);
- one active instance: the lease; a second one waits as a standby.

``python -m tests.example_service`` (env as any service, plus ``SNAPSHOT_EVERY_S``).
"""

from __future__ import annotations

import sys
from decimal import Decimal

import orjson
from pydantic import Field

from tradestack.bus import Delivery
from tradestack.config import CommonSettings
from tradestack.effects import Effect, HashSet, Output, SetKey
from tradestack.errors import PoisonMessage
from tradestack.messages import Message, MessageFactory, TradingEvent
from tradestack.service import Service, run_service

FILLS, OUT = "example:fills", "example:out"
TOTALS, SEEN, SNAPSHOT = "example:totals", "example:seen", "example:snapshot"


class Tally:
    """The pure part: state and message → effects. Tested without Redis."""

    def __init__(self, factory: MessageFactory) -> None:
        self.factory = factory
        self.totals: dict[str, Decimal] = {}
        self.count = 0

    def _apply(self, msg: Message) -> tuple[str, Decimal]:
        if not isinstance(msg, TradingEvent) or "market" not in msg.details or "amount" not in msg.details:
            raise PoisonMessage("a fill needs details market and amount")
        market, amount = msg.details["market"], Decimal(msg.details["amount"])
        self.totals[market] = self.totals.get(market, Decimal(0)) + amount
        self.count += 1
        return market, self.totals[market]

    def fold(self, msg: Message, entry_id: str = "") -> None:
        """Rebuild: the same state change, no effects."""
        self._apply(msg)

    def on_fill(self, msg: Message, delivery: Delivery) -> list[Effect]:
        market, total = self._apply(msg)
        out = self.factory.child(msg, TradingEvent, "tallied", kind="tallied", severity="info",
                                 message=f"{market} total {total}",
                                 details={"market": market, "total": str(total), "fill": msg.id})
        return [Output(OUT, out), HashSet(TOTALS, {market: str(total)}), HashSet(SEEN, {msg.id: "1"})]

    def snapshot(self) -> list[Effect]:
        state = {"count": self.count, "totals": {m: str(t) for m, t in sorted(self.totals.items())}}
        return [SetKey(SNAPSHOT, orjson.dumps(state))]


class Settings(CommonSettings):
    snapshot_every_s: float = Field(0.1, gt=0)


def setup(service: Service[Settings]) -> None:
    service.use_lease()  # before consume: every commit is fenced by the lease's token
    tally = Tally(service.messages)
    service.consume([FILLS], tally.on_fill, stateful=True)
    service.rebuild(FILLS, tally.fold)  # bounded by the group: nothing folded twice
    service.every(service.settings.snapshot_every_s, tally.snapshot)


if __name__ == "__main__":
    sys.exit(run_service("example_tally", Settings, "example_tally", setup))
