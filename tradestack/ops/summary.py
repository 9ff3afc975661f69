"""The summary ``tradestack up --for`` ends with: what the stack did during the run.

Messages per stream (entries added: ``entries-added`` of XINFO STREAM on Redis 7, the length's
growth on 6.2, where a trimmed stream shows at most its MAXLEN), the universe's size, signals,
decisions by outcome and first reason, intents by kind, orders and fills by purpose and status
(from the ``orders:executed`` reports: the last report of each order), open positions and PnL, and
tick→intent latency: an intent's ``trace.ts`` is the market event's time, its entry id the time it
was written.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterator

import orjson
import redis

from tradestack import streams
from tradestack.ops.processes import KNOWN_STREAMS
from tradestack.ops.status import entry_ms, message_data, short_decimal, text

PAGE = 1000


def stream_counts(client: redis.Redis) -> dict[str, dict[str, int | None]]:
    """Length and entries ever added (None on Redis < 7) of every known stream that exists."""
    out: dict[str, dict[str, int | None]] = {}
    for name in KNOWN_STREAMS:
        try:
            info = client.xinfo_stream(name)
        except redis.ResponseError:  # no such stream
            continue
        added = info.get("entries-added")
        out[name] = {"length": int(info["length"]), "added": int(added) if added is not None else None}
    return out


def window(client: redis.Redis, stream: str, since_ms: int, until_ms: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Entries written in [since_ms, until_ms], page by page: (entry id, message as a dict)."""
    start = f"{since_ms}-0"
    while True:
        page: list[Any] = client.xrange(stream, min=start, max=f"{until_ms}-18446744073709551615", count=PAGE) or []
        for entry_id, fields in page:
            data = message_data(fields)
            if data is not None:
                yield text(entry_id), {**data, "_type": text((fields or {}).get(b"type", b""))}
        if len(page) < PAGE:
            return
        start = "(" + text(page[-1][0])


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def collect_summary(client: redis.Redis, since_ms: int, until_ms: int, before: dict[str, dict[str, int | None]],
                    maxlen_overrides: dict[str, int] | None = None) -> dict[str, Any]:
    after = stream_counts(client)
    messages: dict[str, dict[str, Any]] = {}
    for name, now in after.items():
        was = before.get(name, {"length": 0, "added": 0 if now["added"] is not None else None})
        if now["added"] is not None and was.get("added") is not None:
            messages[name] = {"added": now["added"] - (was["added"] or 0), "exact": True}
        else:
            grown = (now["length"] or 0) - (was.get("length") or 0)
            # Approximate trimming never cuts below MAXLEN: a stream still shorter lost nothing.
            exact = (now["length"] or 0) < streams.maxlen_for(name, maxlen_overrides) or not streams.is_market_data(name)
            messages[name] = {"added": max(grown, 0), "exact": exact}
    messages = {n: m for n, m in messages.items() if m["added"]}

    signals = Counter(f"{d.get('strategy')} {d.get('side')}"
                      for _, d in window(client, streams.SIGNALS_BASELINE, since_ms, until_ms))
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for _, d in window(client, streams.ORDERS_SIGNALS, since_ms, until_ms):
        outcomes["accepted" if d.get("accepted") else "blocked"] += 1
        if not d.get("accepted"):
            reasons[(d.get("reasons") or ["?"])[0]] += 1
    intents: Counter[str] = Counter()
    latencies: list[float] = []
    for entry_id, d in window(client, streams.ORDERS_SHADOW, since_ms, until_ms):
        intents[d["_type"].removeprefix("intent.") or "?"] += 1
        trace_ts = (d.get("trace") or {}).get("ts")
        if isinstance(trace_ts, int):
            latencies.append(float(entry_ms(entry_id) - trace_ts))
    last_report: dict[str, dict[str, Any]] = {}
    fills: set[str] = set()
    fill_purposes: Counter[str] = Counter()
    for _, d in window(client, streams.ORDERS_EXECUTED, since_ms, until_ms):
        last_report[str(d.get("client_order_id"))] = d
        for fill in d.get("fills") or []:
            key = f"{d.get('client_order_id')}/{fill.get('fill_id')}"
            if key not in fills:
                fills.add(key)
                fill_purposes[str(d.get("purpose"))] += 1
    orders = Counter(f"{d.get('purpose')} {d.get('status')}" for d in last_report.values())
    pnl = {text(k): text(v) for k, v in client.hgetall(streams.PNL).items()}
    positions = {text(k): orjson.loads(v) for k, v in client.hgetall(streams.POSITIONS).items()}
    return {
        "since_ms": since_ms, "until_ms": until_ms, "seconds": round((until_ms - since_ms) / 1000, 1),
        "messages": messages, "universe": client.hlen(streams.UNIVERSE),
        "signals": {"total": sum(signals.values()), "by_strategy_side": dict(signals)},
        "decisions": {"total": sum(outcomes.values()), "by_outcome": dict(outcomes), "blocked_by_reason": dict(reasons)},
        "intents": {"total": sum(intents.values()), "by_kind": dict(intents)},
        "orders": {"total": len(last_report), "by_purpose_status": dict(orders)},
        "fills": {"total": len(fills), "by_purpose": dict(fill_purposes)},
        "positions": positions, "pnl": pnl,
        "tick_to_intent_ms": {"count": len(latencies), "p50": percentile(latencies, 0.5),
                              "p99": percentile(latencies, 0.99)},
    }


def _counts(counter: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"


def format_summary(s: dict[str, Any], processes: list[tuple[str, str]] | None = None) -> str:
    lines = [f"summary of the run ({s['seconds']} s)"]
    if processes:
        lines.append("  processes: " + ", ".join(f"{name} {how}" for name, how in processes))
    lines.append("  messages per stream:")
    for name, m in sorted(s["messages"].items()):
        lines.append(f"    {name:<28} {'' if m['exact'] else '>='}{m['added']}")
    if not s["messages"]:
        lines.append("    none")
    lines.append(f"  universe: {s['universe']} markets")
    lines.append(f"  signals: {s['signals']['total']} ({_counts(s['signals']['by_strategy_side'])})")
    d = s["decisions"]
    lines.append(f"  decisions: {d['total']} ({_counts(d['by_outcome'])}); blocked by: {_counts(d['blocked_by_reason'])}")
    lines.append(f"  intents: {s['intents']['total']} ({_counts(s['intents']['by_kind'])})")
    lines.append(f"  orders: {s['orders']['total']} ({_counts(s['orders']['by_purpose_status'])})")
    lines.append(f"  fills: {s['fills']['total']} ({_counts(s['fills']['by_purpose'])})")
    if s["positions"]:
        lines.append("  open positions: " + "; ".join(
            f"{m} {p.get('size')} @ {short_decimal(p.get('avg_cost'))} (unrealized {p.get('unrealized')})"
            for m, p in sorted(s["positions"].items())))
    else:
        lines.append("  open positions: none")
    pnl = s["pnl"]
    if pnl:
        lines.append(f"  pnl: equity {pnl.get('equity')} EUR, realized {pnl.get('realized')}, unrealized "
                     f"{pnl.get('unrealized')}, fees {pnl.get('fees')}, drawdown {pnl.get('drawdown_pct')}%")
    else:
        lines.append("  pnl: none written")
    lat = s["tick_to_intent_ms"]
    if lat["count"]:
        lines.append(f"  tick→intent latency: p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms ({lat['count']} intents)")
    else:
        lines.append("  tick→intent latency: no intents")
    return "\n".join(lines)
