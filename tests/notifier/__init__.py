"""Tier-1 tests of the notifier's pure parts (texts, notes from messages, the outbox's limits and
batching, command parsing and authorisation, the sender's retry rules), and the stubs they share.
``fake_telegram.py`` is the loopback Bot API the process and Alertmanager tests talk to."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tradestack.messages import OrderExecuted, Trace, TradingEvent, derive_id

T0 = 1_700_000_000_000
TRACE = Trace(id="tick-1", ts=T0)


def fill(position: str, side: str, amount: str, quote: str, *, purpose: str = "entry", status: str = "filled",
         fee: str = "0", reason: str | None = None, market: str = "BTC-EUR", seq: int = 0, ts: int = T0,
         coid: str | None = None, mode: str = "paper") -> OrderExecuted:
    """An execution report (cumulative per order) of the position ``position``."""
    a, q = Decimal(amount), Decimal(quote)
    client_order_id = coid or derive_id(position, purpose)
    return OrderExecuted(id=f"rep-{client_order_id}-{seq}", ts=ts, src="trader_executor", trace=TRACE,
                         intent_id=position, client_order_id=client_order_id, order_id=None, market=market,
                         side=side, status=status, filled_amount=a, filled_quote=q,  # type: ignore[arg-type]
                         avg_price=(q / a) if a else None, fee=Decimal(fee), fee_currency="EUR",
                         mode=mode, reason=reason or ("entry" if purpose == "entry" else purpose),  # type: ignore[arg-type]
                         position_id=position, purpose=purpose)  # type: ignore[arg-type]


def event(kind: str, severity: str = "warning", message: str = "", ts: int = T0, msg_id: str | None = None,
          **details: Any) -> TradingEvent:
    return TradingEvent(id=msg_id or derive_id(kind, f"{ts}/{message}"), ts=ts, src="trader_executor", trace=TRACE,
                        kind=kind, severity=severity, message=message or f"{kind} happened",  # type: ignore[arg-type]
                        details={k: str(v) for k, v in details.items()})
