"""The notifier's pure part: messages in, notes (texts for a person) out. No Redis, no network.

- ``orders:executed`` is folded through the kernel's ``PositionLedger`` (the same accounting as the
  core, the executor and the PnL), so a closed position's realized PnL is the ledger's, net of fees,
  summed over the position's sells from the fill that opened it to the one that closed it. The state
  is rebuilt from the stream at start (``fold``), so a position opened before a restart and closed
  after it is reported with its whole PnL.
- ``trading:events``: stop placement failures, reconciliation results, the loss breaker and every
  other critical event become notes; the rest (fills are told from the reports, blocked entries are
  noise) is skipped.
- The kill switch: its transitions, from the key itself (polled) and from the CLI's ``kill_switch``
  events (which carry the reason even for a flip shorter than the poll), told once each.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Iterable

from services.trader_notifier.app import format as fmt
from services.trader_notifier.app.format import Note
from tradestack.clock import Clock
from tradestack.errors import PoisonMessage
from tradestack.ledger import Booking, PositionLedger
from tradestack.logs import get_logger
from tradestack.messages import Message, OrderExecuted, TradingEvent

log = get_logger(__name__)

ZERO = Decimal(0)
_CTX = decimal.Context(prec=40)

# Never a position without a stop: every way that can fail (DESIGN §5).
STOP_FAILURES = frozenset({"stop_rejected", "stop_failed", "emergency_failed", "emergency_incomplete"})
# The executor's start-up reconciliation with the exchange, and what it finds later.
RECONCILIATION = frozenset({"orphan_order", "order_adopted", "order_missing", "order_mismatch", "order_resurrected"})
BREAKERS = frozenset({"loss_breaker"})
NOTIFIED_KINDS = STOP_FAILURES | RECONCILIATION | BREAKERS


@dataclass(slots=True)
class _Trade:
    """One market's position from the fill that opened it: what was bought and sold, the PnL so far."""

    opened_ts: int
    bought: Decimal = ZERO
    bought_quote: Decimal = ZERO
    buy_fees: Decimal = ZERO
    sold: Decimal = ZERO
    sold_quote: Decimal = ZERO
    realized: Decimal = ZERO

    def add(self, b: Booking) -> None:
        if b.side == "buy":
            self.bought += b.delta_amount
            self.bought_quote += b.delta_quote
            self.buy_fees += b.fee_quote
        else:
            self.sold += b.delta_amount
            self.sold_quote += b.delta_quote
            self.realized += b.realized


class KillTracker:
    """The kill switch as last told. The key is the truth; events only add the reason and catch a flip
    between two polls. An event older than what is known already is stale (a backlog after a restart)."""

    def __init__(self) -> None:
        self.on: bool | None = None
        self.ts = 0

    def start(self, on: bool, record: dict[str, Any] | None, now_ms: int) -> list[Note]:
        """The state at start: told only when it is on (a person should know the stack is halted)."""
        self.on, self.ts = on, now_ms
        if not on:
            return []
        reason, by = _reason(record, on)
        return [Note(fmt.kill_text(True, reason, by, at_start=True), "kill_switch", "critical")]

    def observe_key(self, on: bool, record: dict[str, Any] | None, now_ms: int) -> list[Note]:
        """The key as polled now."""
        self.ts = max(self.ts, now_ms)
        if self.on is None:
            return self.start(on, record, now_ms)
        if on == self.on:
            return []
        self.on = on
        reason, by = _reason(record, on)
        return [Note(fmt.kill_text(on, reason, by), "kill_switch", "critical" if on else "warning")]

    def observe_event(self, on: bool, reason: str | None, by: str | None, ts: int) -> list[Note]:
        """A ``kill_switch`` event that says what it set (the CLI's, the bot's)."""
        if ts <= self.ts:
            return []
        self.ts = ts
        if on == self.on:
            return []
        self.on = on
        return [Note(fmt.kill_text(on, reason, by), "kill_switch", "critical" if on else "warning")]


def _reason(record: dict[str, Any] | None, on: bool) -> tuple[str | None, str | None]:
    """``trading:kill:reason``'s reason and author, when the record is about this state (someone may
    have set the key by hand, leaving an older record behind)."""
    if not record or bool(record.get("on")) != on:
        return None, None
    reason, by = record.get("reason"), record.get("by")
    return (str(reason) if reason is not None else None, str(by) if by is not None else None)


class Notes:
    """From the stack's messages to notes. ``mode``: only reports of this mode are booked (as the PnL)."""

    def __init__(self, mode: str, clock: Clock, extra_kinds: Iterable[str] = ()) -> None:
        self.mode = mode
        self.clock = clock
        self.ledger = PositionLedger()
        self.trades: dict[str, _Trade] = {}
        self.kill = KillTracker()
        self.kinds = NOTIFIED_KINDS | frozenset(extra_kinds)
        self.unbookable = 0

    # -- reports ---------------------------------------------------------------------------------

    def _book(self, report: OrderExecuted) -> tuple[Booking, _Trade] | None:
        if report.mode != self.mode:
            return None
        try:
            booking = self.ledger.apply(report)
        except PoisonMessage as exc:  # the PnL dead-letters it; here it is only not told
            self.unbookable += 1
            log.warning("report_not_booked", report_id=report.id, error=str(exc))
            return None
        if booking is None:
            return None
        trade = self.trades.get(report.market)
        if booking.opened or trade is None:
            trade = self.trades[report.market] = _Trade(opened_ts=report.ts)
        trade.add(booking)
        if booking.size_after == 0:
            self.trades.pop(report.market, None)
        return booking, trade

    def fold(self, msg: Message, entry_id: str = "") -> None:
        """Rebuild: the same bookings as live, nothing told."""
        if isinstance(msg, OrderExecuted):
            self._book(msg)

    def on_report(self, report: OrderExecuted) -> list[Note]:
        booked = self._book(report)
        if booked is None:
            return []
        booking, trade = booked
        now = self.clock.now_ms()
        entry = report.purpose == "entry" or (report.purpose == "unknown" and report.side == "buy")
        if entry and booking.became_final and report.filled_amount > 0:
            avg = report.avg_price if report.avg_price is not None else _CTX.divide(report.filled_quote,
                                                                                    report.filled_amount)
            return [Note(fmt.position_opened(report.market, report.filled_amount, avg, report.filled_quote,
                                             report.fee, report.fee_currency, self.mode, report.ts, now),
                         "position_opened")]
        if report.side != "sell" or booking.delta_amount == 0:
            return []
        reason = report.reason or report.purpose
        if booking.closed:
            cost = trade.bought_quote + trade.buy_fees
            avg_entry = _CTX.divide(trade.bought_quote, trade.bought) if trade.bought else None
            avg_exit = _CTX.divide(trade.sold_quote, trade.sold) if trade.sold else None
            ratio = _CTX.divide(trade.realized * 100, cost) if cost else None
            return [Note(fmt.position_closed(report.market, reason, trade.sold, avg_entry, avg_exit, trade.realized,
                                             ratio, self.mode, report.ts, now), "position_closed")]
        if booking.became_final:
            avg_exit = _CTX.divide(report.filled_quote, report.filled_amount) if report.filled_amount else None
            return [Note(fmt.position_reduced(report.market, reason, report.filled_amount, avg_exit,
                                              booking.size_after, trade.realized, self.mode, report.ts, now),
                         "position_reduced")]
        return []

    # -- events ----------------------------------------------------------------------------------

    def on_event(self, event: TradingEvent) -> list[Note]:
        if event.kind == "kill_switch":
            on = event.details.get("on")
            if on not in ("true", "false"):
                return []  # the core's "entry blocked: kill_switch", one per blocked signal
            return self.kill.observe_event(on == "true", event.details.get("reason"), event.details.get("by"),
                                           event.ts)
        if event.kind in self.kinds or event.severity == "critical":
            return [Note(fmt.event_text(event.kind, event.severity, event.message, event.ts, self.clock.now_ms()),
                         f"event:{event.kind}", event.severity)]
        return []

    def on_message(self, msg: Message) -> list[Note]:
        if isinstance(msg, OrderExecuted):
            return self.on_report(msg)
        if isinstance(msg, TradingEvent):
            return self.on_event(msg)
        return []
