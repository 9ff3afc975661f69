"""The texts the notifier sends: plain text (no Telegram parse mode, so no character of a market
name, a reason or an exchange error can break a message), one line per note where possible.

Pure functions: numbers in, strings out. Money is ``Decimal`` throughout; what is shown is rounded
for reading, never for computing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal

Severity = Literal["info", "warning", "critical"]

MAX_CHARS = 4096  # Telegram's limit for one message's text
LATE_AFTER_MS = 60_000  # a note about something older than this says when it happened

ICON: dict[str, str] = {"info": "ℹ️", "warning": "⚠️", "critical": "🚨"}


@dataclass(frozen=True, slots=True)
class Note:
    """One thing to tell a person. ``chat_id`` None: every configured chat; else a reply to one."""

    text: str
    kind: str  # for metrics and tests: position_opened, position_closed, event, kill_switch, reply, ...
    severity: Severity = "info"
    chat_id: int | None = None


# -- numbers -------------------------------------------------------------------------------------


def amount(value: Decimal) -> str:
    """A base amount as the exchange would write it: no exponent, no trailing zeros."""
    text = format(value.normalize(), "f")
    return text if value != 0 else "0"


def price(value: Decimal | None) -> str:
    """A price with at most 8 decimals (more than any Bitvavo tick size), trailing zeros dropped."""
    if value is None:
        return "?"
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -8:
        value = value.quantize(Decimal("1e-8"), rounding=ROUND_HALF_EVEN)
    return amount(value)


def eur(value: Decimal, signed: bool = False) -> str:
    """Money to the cent, ``+1.23``/``-1.23`` when ``signed``."""
    text = format(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN), "f")
    if text == "-0.00":
        text = "0.00"
    return f"+{text}" if signed and not text.startswith("-") and text != "0.00" else text


def pct(value: Decimal | None) -> str:
    if value is None:
        return "?"
    text = format(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN), "f")
    if text == "-0.00":
        text = "0.00"
    return (f"+{text}" if not text.startswith("-") and text != "0.00" else text) + "%"


def clock_time(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).strftime("%H:%M:%SZ")


def late(ts_ms: int, now_ms: int) -> str:
    """`` (at 12:03:04Z)`` for something that happened over a minute ago (a backlog after a restart)."""
    if now_ms - ts_ms <= LATE_AFTER_MS:
        return ""
    stamp = datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    return f" (at {stamp})"


def truncate(text: str, limit: int = MAX_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- notes ---------------------------------------------------------------------------------------


def position_opened(market: str, filled: Decimal, avg: Decimal | None, quote: Decimal, fee: Decimal,
                    fee_currency: str, mode: str, ts_ms: int, now_ms: int) -> str:
    fee_text = f", fee {amount(fee)} {fee_currency}" if fee else ""
    return (f"🟢 {market} position opened: bought {amount(filled)} @ {price(avg)} "
            f"({eur(quote)} EUR{fee_text}) [{mode}]{late(ts_ms, now_ms)}")


def position_closed(market: str, reason: str, sold: Decimal, avg_entry: Decimal | None, avg_exit: Decimal | None,
                    realized: Decimal, realized_pct: Decimal | None, mode: str, ts_ms: int, now_ms: int) -> str:
    icon = "✅" if realized > 0 else "🔻" if realized < 0 else "⚪"
    return (f"{icon} {market} position closed ({reason}): sold {amount(sold)} @ {price(avg_exit)} "
            f"(entry {price(avg_entry)}); realized PnL {eur(realized, signed=True)} EUR ({pct(realized_pct)}) "
            f"[{mode}]{late(ts_ms, now_ms)}")


def position_reduced(market: str, reason: str, sold: Decimal, avg_exit: Decimal | None, left: Decimal,
                     realized: Decimal, mode: str, ts_ms: int, now_ms: int) -> str:
    return (f"↘️ {market} position reduced ({reason}): sold {amount(sold)} @ {price(avg_exit)}, {amount(left)} left; "
            f"realized {eur(realized, signed=True)} EUR [{mode}]{late(ts_ms, now_ms)}")


def event_text(kind: str, severity: str, message: str, ts_ms: int, now_ms: int) -> str:
    return f"{ICON.get(severity, '•')} {kind}: {message}{late(ts_ms, now_ms)}"


def kill_text(on: bool, reason: str | None, by: str | None, at_start: bool = False) -> str:
    why = f": {reason}" if reason else ""
    who = f" (by {by})" if by else ""
    if at_start:
        return f"🛑 Kill switch is ON{why}{who}; no new entries are made"
    if on:
        return f"🛑 Kill switch ON{why}{who}: no new entries; exits still run"
    return f"▶️ Kill switch off{why}{who}: entries allowed again"


def started_text(mode: str, kill_on: bool, chats: int) -> str:
    return (f"🤖 tradestack notifier started [{mode}], kill switch {'ON' if kill_on else 'off'}; "
            f"{chats} chat(s); /status, /kill, /help")


HELP = ("tradestack bot\n"
        "/status: mode, kill switch, equity and PnL, open positions, services down, dead letters\n"
        "/kill [reason]: set the kill switch (no new entries; exits still run). Clearing it is done "
        "by a person on the host: tradestack kill off --reason \"...\"")


# -- /status -------------------------------------------------------------------------------------


def status_text(status: dict[str, Any], mode: str) -> str:
    """A compact reading of ``tradestack status`` (tradestack/ops/status.py:collect_status) for a phone."""
    services = status.get("services") or {}
    alive = {n: v for n, v in services.items() if v.get("alive")}
    running = alive.get("trader_executor", next(iter(alive.values()), None))
    shown_mode = running["mode"] if running else f"{mode}, nothing running"
    kill = "ON" if status.get("kill_switch") else "off"
    reason = status.get("kill_reason") or {}
    why = f" ({reason.get('reason')}, by {reason.get('by')})" if status.get("kill_switch") and reason else ""
    lines = [f"tradestack [{shown_mode}] kill switch {kill}{why}"]
    pnl = status.get("pnl") or {}
    if pnl:
        lines.append(f"equity {_money(pnl.get('equity'))} EUR, day {_money(pnl.get('daily_pnl'), True)}, "
                     f"realized {_money(pnl.get('realized'), True)}, unrealized {_money(pnl.get('unrealized'), True)}, "
                     f"drawdown {pnl.get('drawdown_pct', '?')}%")
    positions = status.get("positions") or {}
    if positions:
        lines.append(f"positions ({len(positions)}):")
        for market, p in sorted(positions.items()):
            size = p.get("size")
            lines.append(f"  {market} {_num(size)} avg {_num(p.get('avg_cost'))} mark {_num(p.get('mark'))} "
                         f"unrealized {_money(p.get('unrealized'), True)}")
    else:
        lines.append("positions: none open")
    down = sorted(n for n, v in services.items() if not v.get("alive"))
    lines.append(f"services: {len(services) - len(down)}/{len(services)} up" + (f" (down: {', '.join(down)})" if down else ""))
    dlq = sum((status.get("dlq") or {}).values())
    if dlq:
        lines.append(f"dead letters: {dlq}")
    fill = status.get("last_fill")
    if fill:
        lines.append(f"last fill: {fill.get('market')} {fill.get('side')} {fill.get('purpose')} {fill.get('status')} "
                     f"{fill.get('filled_amount')} @ {_num(fill.get('avg_price'))}, {fill.get('age_s')} s ago")
    return truncate("\n".join(lines))


def _num(value: Any) -> str:
    if value is None:
        return "?"
    try:
        return price(Decimal(str(value)))
    except ArithmeticError:
        return str(value)


def _money(value: Any, signed: bool = False) -> str:
    if value is None:
        return "?"
    try:
        return eur(Decimal(str(value)), signed)
    except ArithmeticError:
        return str(value)
