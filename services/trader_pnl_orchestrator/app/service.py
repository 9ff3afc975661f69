"""PnL orchestrator: settings, streams and wiring (DESIGN §1, §5). The accounting is in accounting.py
(``PnlBook``, plain code on the shared ``PositionLedger``; docs/pnl.md).

Reads ``orders:executed`` (every report booked once, through the same ledger as the core and the
executor), ``bitvavo:book`` (marks: the best bid of markets with a position) and ``trading:events``
(counted, and archived to Parquet). Writes ``trading:positions`` (market → JSON) and ``trading:pnl``
(totals) in one atomic commit with the report's ack, ``pnl:snapshots`` after every fill and on a
period, and trips the kill switch (``trading:kill=1``, ``trading:kill:reason``, a critical event)
when the daily loss or the drawdown passes its limit. It never clears the switch.

At start: the last snapshot (starting equity, the day, its start equity, the peak), the reports its
group has read, and the latest marks are folded, so the figures continue exactly. In sandbox and live
mode the booked balances are compared with the exchange's on a period: a drift beyond
``PNL_DRIFT_TOLERANCE_EUR`` is a critical event and a metric, never a silent fix.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, cast

import orjson
from pydantic import Field, field_validator

from services.trader_pnl_orchestrator.app.accounting import PnlBook, PnlLimits, PnlTotals
from tradestack import streams
from tradestack.bitvavo.private import BitvavoPrivate
from tradestack.bitvavo.rest import BitvavoRest, RestError
from tradestack.bus import Delivery
from tradestack.catalog import load_catalog
from tradestack.config import CommonSettings
from tradestack.effects import DelKey, Effect, HashDel, HashSet, Output, SetKey
from tradestack.errors import PoisonMessage
from tradestack.logs import get_logger
from tradestack.messages import (
    BookTopUpdated,
    Message,
    Mode,
    OrderExecuted,
    PnlSnapshotTaken,
    Trace,
    TradingEvent,
    decode,
    derive_id,
)
from tradestack.metrics import ServiceMetrics
from tradestack.ratelimit import shared_budget
from tradestack.rebuild import Rebuild, fold_history
from tradestack.service import Service, run_service

log = get_logger(__name__)

NAME = "trader_pnl_orchestrator"
METRICS_PREFIX = "trader_pnl"
READS = [streams.ORDERS_EXECUTED, streams.TRADING_EVENTS, streams.BOOK]
WRITES = [streams.PNL_SNAPSHOTS, streams.TRADING_EVENTS]
KEYS = [streams.PNL, streams.POSITIONS, streams.KILL, streams.KILL_REASON]


class Settings(CommonSettings):
    metrics_port: int = Field(9604, ge=0, le=65535)
    paper_eur: Decimal = Field(Decimal(1000), gt=0)  # paper mode: the starting equity (the paper account's EUR)
    max_daily_loss_pct: Decimal | None = Field(Decimal(5), gt=0)  # of the day-start equity; empty: no limit
    max_drawdown_pct: Decimal | None = Field(Decimal(15), gt=0)  # from the peak equity; empty: no limit
    pnl_snapshot_secs: float = Field(60.0, gt=0)  # pnl:snapshots on this period (and after every fill)
    pnl_fill_snapshot_min_ms: int = Field(100, ge=0)  # a burst of fills: one snapshot per this many ms, the last
                                                      # state always (the marks timer writes it when due)
    pnl_write_secs: float = Field(1.0, gt=0)  # marks move trading:pnl/positions at most this often
    pnl_book_history_s: float = Field(120.0, ge=0)  # marks folded at start
    pnl_drift_check_secs: float = Field(300.0, gt=0)  # sandbox/live: booked vs exchange balances
    pnl_drift_tolerance_eur: Decimal = Field(Decimal("0.05"), ge=0)

    @field_validator("max_daily_loss_pct", "max_drawdown_pct", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value


class Metrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__(METRICS_PREFIX)
        g = self.gauge
        self.realized = g("realized_eur", "Realized PnL, net of fees", [])
        self.unrealized = g("unrealized_eur", "Unrealized PnL at the marks (best bid), net of buy fees", [])
        self.fees = g("fees_eur", "Fees paid", [])
        self.equity = g("equity_eur", "Cash plus positions at the marks", [])
        self.cash = g("cash_eur", "Cash", [])
        self.daily = g("daily_pnl_eur", "Equity change since the start of the UTC day", [])
        self.drawdown = g("drawdown_pct", "Drop from the peak equity, percent", [])
        self.max_drawdown = g("max_drawdown_pct", "The loss breaker's drawdown limit (MAX_DRAWDOWN_PCT; no series: "
                              "none)", [])
        self.max_daily_loss = g("max_daily_loss_pct", "The loss breaker's daily loss limit (MAX_DAILY_LOSS_PCT; no "
                                "series: none)", [])
        self.peak = g("peak_equity_eur", "Peak equity", [])
        self.exposure = g("exposure_eur", "Positions at the marks, per asset", ["asset"])
        self.global_exposure = g("global_exposure_eur", "Positions at the marks, all assets", [])
        self.open_positions = g("open_positions", "Markets with a position", [])
        self.drift = g("drift", "Exchange balance minus booked balance, per asset (sandbox/live)", ["asset"])
        self.booked = self.hot_counter("reports_booked_total", "Execution reports booked (duplicates excluded)", [])
        self.trips = self.counter("breaker_trips_total", "Times the loss breaker set the kill switch", ["limit"])
        self.events = self.hot_counter("events_total", "trading:events seen, by kind and severity",
                                       ["kind", "severity"])


def setup(service: Service[Settings]) -> None:
    s = service.settings
    mode = cast(Mode, s.mode)
    metrics = service.metrics
    assert isinstance(metrics, Metrics)
    limits = PnlLimits(max_daily_loss_pct=s.max_daily_loss_pct, max_drawdown_pct=s.max_drawdown_pct)
    if s.max_drawdown_pct is not None:  # for the alert "drawdown near the limit"
        metrics.max_drawdown.set(float(s.max_drawdown_pct))
    if s.max_daily_loss_pct is not None:
        metrics.max_daily_loss.set(float(s.max_daily_loss_pct))
    holder: dict[str, Any] = {"dirty": False, "tripped": None, "last_snapshot_ms": 0}
    budget = shared_budget(service.redis, s, service.clock)  # the key's budget, shared with the executor

    def book() -> PnlBook:
        return cast(PnlBook, holder["book"])

    def private() -> BitvavoPrivate | None:
        if mode == "paper" or s.bitvavo_api_key is None or s.bitvavo_api_secret is None:
            return None
        return BitvavoPrivate(BitvavoRest(s.bitvavo_rest_url, clock=service.clock, shared=budget),
                              s.bitvavo_api_key.get_secret_value(),
                              s.bitvavo_api_secret.get_secret_value(), s.bitvavo_operator_id or 0)

    async def start() -> None:
        catalog, _ = await load_catalog(service.redis, s.bitvavo_rest_url, service.clock)
        last = await service.redis.xrevrange(streams.PNL_SNAPSHOTS, count=1)
        snapshot = None
        if last:
            try:
                msg = decode(last[0][1])
                snapshot = msg if isinstance(msg, PnlSnapshotTaken) else None
            except PoisonMessage as exc:
                log.warning("pnl_snapshot_unreadable", error=str(exc))
        starting = s.paper_eur
        if snapshot is not None:
            starting = snapshot.starting_equity or starting
        # The catalog check runs in the fold exactly as live (a report dead-lettered live is skipped by
        # the rebuild too). A market removed from /markets since would make its old reports poison here:
        # its booking then differs from the core's; it raises a warning at start (below).
        b = PnlBook(starting, limits=limits, catalog=catalog)
        holder["book"] = b

        skipped: list[str] = []

        def fold_report(msg: Message, entry_id: str) -> None:
            if isinstance(msg, OrderExecuted) and msg.mode == mode:
                try:
                    b.on_report(msg)
                except PoisonMessage as exc:  # dead-lettered when it was live: skipped the same way
                    skipped.append(str(exc))

        def fold_mark(msg: Message, entry_id: str) -> None:
            if isinstance(msg, BookTopUpdated) and b.ledger.size(msg.market) > 0:  # as live: held markets only
                b.on_mark(msg.market, msg.bid, msg.exchange_ts or msg.ts)

        # Reports, then marks, then the snapshot's day, day-start equity and peak (exact in this order).
        await fold_history(service.redis, Rebuild(streams.ORDERS_EXECUTED, fold_report, group=NAME))
        now = service.clock.now_ms()
        await fold_history(service.redis, Rebuild(streams.BOOK, fold_mark,
                                                  since_ms=now - int(s.pnl_book_history_s * 1000)))
        if snapshot is not None:
            b.restore(snapshot)
        elif mode != "paper":
            # The first start on an account: the exchange's EUR now, minus what the reports folded above
            # moved (they are in that balance already), so the cash booked equals the exchange's.
            client = private()
            assert client is not None
            try:
                balances = await client.balance("EUR")
            finally:
                await client.rest.close()
            eur = sum(balances.get("EUR", (Decimal(0), Decimal(0))), Decimal(0))
            b.set_starting_equity(eur - (b.cash - b.starting_equity))
            log.info("starting_equity_from_exchange", eur=str(eur), starting_equity=str(b.starting_equity))
        if skipped:
            log.warning("reports_not_booked", count=len(skipped), first=skipped[0])
        holder["dirty"] = True
        log.info("pnl_ready", mode=mode, equity=str(b.equity), positions=len(b.positions))

    def state_effects() -> list[Effect]:
        b = book()
        # One atomic rewrite: no reader ever sees a half-written hash.
        positions = b.positions_json()
        out: list[Effect] = [DelKey(streams.POSITIONS)]
        if positions:
            out.append(HashSet(streams.POSITIONS, positions))
        out.append(HashSet(streams.PNL, b.totals_json()))
        holder["dirty"] = False
        return out

    def snapshot_effect(parent: Message | None, totals: PnlTotals | None = None) -> Output:
        holder["last_snapshot_ms"] = service.clock.now_ms()
        return Output(streams.PNL_SNAPSHOTS, book().snapshot(service.messages, parent, mode, totals=totals))

    def breaker_effects(parent: Message | None) -> list[Effect]:
        reason = book().breaker()
        limit = "daily_loss" if reason is not None and reason.startswith("daily") else "drawdown"
        if reason is None or holder["tripped"] == (book().day, limit):
            return []
        holder["tripped"] = (book().day, limit)
        metrics.trips.labels(limit=limit).inc()
        now = service.clock.now_ms()
        log.critical("loss_breaker_tripped", reason=reason)
        trace = parent.trace if parent is not None else Trace(id=derive_id(NAME, f"breaker/{now}"), ts=now)
        event = TradingEvent(id=derive_id(trace.id, f"breaker/{limit}/{book().day}"), ts=now, src=service.messages.src,
                             trace=trace, kind="loss_breaker", severity="critical",
                             message=f"kill switch set: {reason}",
                             details={"limit": limit, "reason": reason, "day": book().day,
                                      "equity": str(book().equity), "daily_pnl": str(book().daily_pnl),
                                      "drawdown_pct": str(book().drawdown_pct)})
        why = orjson.dumps({"on": True, "reason": reason, "by": NAME, "ts": now}).decode()
        return [SetKey(streams.KILL, "1"), SetKey(streams.KILL_REASON, why), Output(streams.TRADING_EVENTS, event)]

    def handle(msg: Message, delivery: Delivery) -> list[Effect]:
        b = book()
        if isinstance(msg, OrderExecuted) and delivery.stream == streams.ORDERS_EXECUTED:
            if msg.mode != mode:
                raise PoisonMessage(f"a {msg.mode} report reached the {mode} PnL: not booked")
            booking = b.on_report(msg)  # PoisonMessage: dead-lettered with the reason, nothing booked
            if booking is None:
                return []
            metrics.booked.inc(())
            # This market's field and the totals, with the ack (a full rewrite would cost O(positions)
            # per report; marks rewrite the whole hash on their period).
            position = b.position_json(msg.market)
            totals = b.totals()
            changed: list[Effect] = [HashSet(streams.POSITIONS, {msg.market: position}) if position is not None
                                     else HashDel(streams.POSITIONS, (msg.market,)),
                                     HashSet(streams.PNL, b.totals_json(totals))]
            now = service.clock.now_ms()
            if now - holder["last_snapshot_ms"] >= s.pnl_fill_snapshot_min_ms:
                holder["snapshot_due"] = False
                changed.append(snapshot_effect(msg, totals))
            else:
                holder["snapshot_due"] = True  # within a burst: the marks timer writes the last state
            return [*changed, *breaker_effects(msg)]
        if isinstance(msg, BookTopUpdated) and delivery.stream == streams.BOOK:
            if b.ledger.size(msg.market) > 0:  # marks matter only where coins are held (cheap per top)
                b.on_mark(msg.market, msg.bid, msg.exchange_ts or msg.ts)
                holder["dirty"] = True
            return []
        if isinstance(msg, TradingEvent) and delivery.stream == streams.TRADING_EVENTS:
            metrics.events.inc((msg.kind, msg.severity))
            return []
        if delivery.stream == streams.TRADING_EVENTS:
            return []  # other event types (universe changes) are the archive's
        raise PoisonMessage(f"{msg.TYPE} does not belong on {delivery.stream}")

    def on_marks() -> list[Effect]:
        out: list[Effect] = []
        if holder.get("snapshot_due"):
            holder["snapshot_due"] = False
            out.append(snapshot_effect(None))
        if holder["dirty"]:
            out += [*state_effects(), *breaker_effects(None)]
        return out

    def periodic_snapshot() -> list[Effect]:
        return [snapshot_effect(None)]

    async def check_drift() -> list[Effect]:
        client = private()
        if client is None:
            return []
        try:
            balances = await client.balance()
        except (RestError, OSError, TimeoutError) as exc:
            log.warning("drift_check_failed", error=f"{type(exc).__name__}: {exc}")
            return []
        finally:
            await client.rest.close()
        b = book()
        booked: dict[str, Decimal] = {"EUR": b.cash}
        for market, view in b.positions.items():
            booked[market.split("-")[0]] = booked.get(market.split("-")[0], Decimal(0)) + view.size
        out: list[Effect] = []
        now = service.clock.now_ms()
        for asset in sorted(set(booked) | set(balances)):
            held = sum(balances.get(asset, (Decimal(0), Decimal(0))), Decimal(0))
            drift = held - booked.get(asset, Decimal(0))
            metrics.drift.labels(asset=asset).set(float(drift))
            tolerance = s.pnl_drift_tolerance_eur if asset == "EUR" else Decimal("1e-8")
            if abs(drift) > tolerance:
                trace = Trace(id=derive_id(NAME, f"drift/{now}"), ts=now)
                out.append(Output(streams.TRADING_EVENTS, TradingEvent(
                    id=derive_id(trace.id, asset), ts=now, src=service.messages.src, trace=trace, kind="balance_drift",
                    severity="critical", message=f"{asset}: exchange holds {held}, booked {booked.get(asset, 0)}",
                    details={"asset": asset, "exchange": str(held), "booked": str(booked.get(asset, Decimal(0))),
                             "drift": str(drift), "tolerance": str(tolerance)})))
        return out

    def refresh_metrics() -> list[Effect]:
        b = book()
        metrics.realized.set(float(b.realized))
        metrics.unrealized.set(float(b.unrealized))
        metrics.fees.set(float(b.fees))
        metrics.equity.set(float(b.equity))
        metrics.cash.set(float(b.cash))
        metrics.daily.set(float(b.daily_pnl))
        metrics.drawdown.set(float(b.drawdown_pct))
        metrics.peak.set(float(b.peak_equity))
        metrics.exposure.clear()
        exposure = b.exposure_by_asset()
        for asset, value in exposure.items():
            metrics.exposure.labels(asset=asset).set(float(value))
        metrics.global_exposure.set(float(b.exposure))
        metrics.open_positions.set(len(exposure))
        return []

    service.use_lease()
    service.on_start(start)
    service.consume([streams.ORDERS_EXECUTED, streams.TRADING_EVENTS, streams.BOOK], handle, stateful=True)
    service.archive([streams.PNL_SNAPSHOTS, streams.TRADING_EVENTS])
    # Snapshots and events older than STREAM_MAX_AGE_DAYS, once every group has read them (the newest
    # snapshot always stays: the restart starts from it). Not orders:executed: every ledger refolds it.
    service.trim_by_age([streams.PNL_SNAPSHOTS, streams.TRADING_EVENTS])
    service.every(s.pnl_write_secs, on_marks, name="marks")
    service.every(s.pnl_snapshot_secs, periodic_snapshot, name="snapshot")
    service.every(1.0, refresh_metrics, name="metrics")
    if mode != "paper":
        service.every(s.pnl_drift_check_secs, check_drift, name="drift")
    service.summary = lambda: orjson.dumps(book().totals_json() if "book" in holder else {}).decode()


def main() -> int:
    return run_service(NAME, Settings, METRICS_PREFIX, setup, metrics=Metrics)
