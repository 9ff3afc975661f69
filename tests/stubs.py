"""Message factories for tests (as NautilusTrader's TestEventStubs)."""

from __future__ import annotations

from tradestack.messages import Trace, TradingEvent, new_id

TRACE = Trace(id="tick-1", ts=1_700_000_000_000)


def event(i: int = 0, msg_id: str | None = None) -> TradingEvent:
    return TradingEvent(id=msg_id or new_id(), ts=1_700_000_000_000 + i, src="test", trace=TRACE,
                        kind="test", severity="info", message=f"message {i}", details={"i": str(i)})
