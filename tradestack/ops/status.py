"""``tradestack status``: who is alive, streams with their groups' lag and pending, dead letters,
the kill switch, lease holders, positions, PnL (equity, drawdown), and the last decision and fill.

Reads only (GET, HGETALL, XLEN, XINFO GROUPS, XREVRANGE, PTTL): the `operator` Redis user of
deploy/redis/users.acl may run it.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable, TextIO

import orjson
import redis

from tradestack import streams
from tradestack.ops.processes import LEASED, NAMES, STREAMS_SHOWN

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen
FILL_SEARCH = 100  # newest reports looked through for the last fill


def short_decimal(value: Any) -> Any:
    """A long exact decimal (an average: cost / size) cut to 10 decimal places for reading."""
    try:
        return format(Decimal(str(value)).quantize(Decimal("1e-10")).normalize(), "f")
    except (ArithmeticError, ValueError):
        return value


def text(value: Any) -> str:
    """A reply's bytes as text (redis-py types every reply as possibly None)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def entry_ms(entry_id: Any) -> int:
    """The time part of a stream entry id: when Redis wrote it (epoch ms)."""
    return int(text(entry_id).split("-", 1)[0])


def message_data(fields: Any) -> dict[str, Any] | None:
    """The message of a stream entry as a plain dict (``data`` field), None when unreadable."""
    raw = (fields or {}).get(b"data", (fields or {}).get("data"))
    if raw is None:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def fmt_ts(ms: int | None) -> str:
    if not ms:
        return "?"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def collect_services(client: redis.Redis, now_ms: int) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = {}
    for name in NAMES:
        raw = client.get(streams.heartbeat(name))
        if raw is None:
            services[name] = {"alive": False}
            continue
        beat = orjson.loads(raw)
        services[name] = {"alive": beat.get("state") not in ("stopped", "faulted"), "state": beat.get("state"),
                          "age_s": round((now_ms - beat.get("ts", now_ms)) / 1000, 1), "mode": beat.get("mode"),
                          "consumer": beat.get("consumer"), "metrics_port": beat.get("metrics_port"),
                          "role": beat.get("role", "active")}
    return services


def collect_streams(client: redis.Redis) -> dict[str, dict[str, Any]]:
    info = {}
    for name in STREAMS_SHOWN:
        length = client.xlen(name)
        groups = []
        if length or client.exists(name):
            for g in client.xinfo_groups(name):
                groups.append({"group": text(g["name"]), "pending": g["pending"], "lag": g.get("lag")})
        info[name] = {"length": length, "groups": groups, "dlq": client.xlen(streams.dlq(name))}
    return info


def collect_leases(client: redis.Redis) -> dict[str, dict[str, Any]]:
    """``lease:<service>`` = ``<token>:<host:pid>`` of the active instance, for every leased process."""
    leases: dict[str, dict[str, Any]] = {}
    for name in LEASED:
        raw = client.get(f"lease:{name}")
        if raw is None:
            leases[name] = {"held": False}
            continue
        token, _, holder = text(raw).partition(":")
        ttl = client.pttl(f"lease:{name}")
        leases[name] = {"held": True, "token": int(token) if token.isdigit() else token, "holder": holder,
                        "ttl_ms": ttl if ttl >= 0 else None}
    return leases


def last_decision(client: redis.Redis, now_ms: int) -> dict[str, Any] | None:
    """The newest entry of ``orders:signals``."""
    entries = client.xrevrange(streams.ORDERS_SIGNALS, count=1)
    if not entries:
        return None
    entry_id, fields = entries[0]
    data = message_data(fields) or {}
    written = entry_ms(entry_id)
    return {"entry_id": text(entry_id), "written_ms": written, "age_s": round((now_ms - written) / 1000, 1),
            "id": data.get("id"), "market": data.get("market"), "side": data.get("side"),
            "strategy": data.get("strategy"), "accepted": data.get("accepted"), "reasons": data.get("reasons", []),
            "intent_id": data.get("intent_id"), "mode": data.get("mode")}


def last_fill(client: redis.Redis, now_ms: int) -> dict[str, Any] | None:
    """The newest report of ``orders:executed`` with something filled (else the newest report)."""
    entries = client.xrevrange(streams.ORDERS_EXECUTED, count=FILL_SEARCH)
    if not entries:
        return None
    chosen = entries[0]
    for entry in entries:
        data = message_data(entry[1]) or {}
        try:
            if float(data.get("filled_amount") or 0) > 0:
                chosen = entry
                break
        except ValueError:
            continue
    entry_id, fields = chosen
    data = message_data(fields) or {}
    written = entry_ms(entry_id)
    return {"entry_id": text(entry_id), "written_ms": written, "age_s": round((now_ms - written) / 1000, 1),
            "market": data.get("market"), "side": data.get("side"), "purpose": data.get("purpose"),
            "status": data.get("status"), "filled_amount": data.get("filled_amount"),
            "avg_price": data.get("avg_price"), "fee": data.get("fee"), "fee_currency": data.get("fee_currency"),
            "client_order_id": data.get("client_order_id"), "mode": data.get("mode")}


def collect_status(client: redis.Redis, now_ms: int) -> dict[str, Any]:
    kill = client.get(streams.KILL) == b"1"
    reason = client.get(streams.KILL_REASON)
    pnl = {text(k): text(v) for k, v in client.hgetall(streams.PNL).items()}
    positions = {text(k): orjson.loads(v) for k, v in client.hgetall(streams.POSITIONS).items()}
    stream_info = collect_streams(client)
    return {"services": collect_services(client, now_ms), "streams": stream_info, "kill_switch": kill,
            "kill_reason": orjson.loads(reason) if reason else None, "pnl": pnl, "positions": positions,
            "dlq": {name: s["dlq"] for name, s in stream_info.items() if s["dlq"]},
            "leases": collect_leases(client), "last_decision": last_decision(client, now_ms),
            "last_fill": last_fill(client, now_ms)}


def decision_line(d: dict[str, Any]) -> str:
    verdict = (f"accepted, intent {d.get('intent_id')}" if d.get("accepted")
               else "blocked: " + (", ".join(d.get("reasons") or []) or "?"))
    return (f"{fmt_ts(d.get('written_ms'))} ({d.get('age_s')} s ago)  {d.get('market')} {d.get('side')} "
            f"{d.get('strategy')}  {verdict}  [{d.get('mode')}]")


def fill_line(f: dict[str, Any]) -> str:
    price = f" @ {f['avg_price']}" if f.get("avg_price") else ""
    return (f"{fmt_ts(f.get('written_ms'))} ({f.get('age_s')} s ago)  {f.get('market')} {f.get('side')} "
            f"{f.get('purpose')} {f.get('status')}  filled {f.get('filled_amount')}{price}  "
            f"fee {f.get('fee')} {f.get('fee_currency') or ''}  [{f.get('mode')}]".rstrip())


def format_status(status: dict[str, Any], mode: str) -> str:
    out: list[str] = []
    kill = "ON" if status["kill_switch"] else "off"
    reason = status["kill_reason"]
    why = f" ({reason.get('reason')} by {reason.get('by')})" if reason and status["kill_switch"] else ""
    # The mode the running stack trades in (the executor's, else any live service's), not this shell's.
    alive = {n: v for n, v in status["services"].items() if v.get("alive")}
    running = alive.get("trader_executor", next(iter(alive.values()), None))
    shown = running["mode"] if running else f"{mode} (nothing running)"
    out.append(f"mode: {shown}   kill switch: {kill}{why}")
    pnl = status["pnl"]
    if pnl:
        out.append(f"equity {pnl.get('equity', '?')} EUR   daily PnL {pnl.get('daily_pnl', '?')}   "
                   f"realized {pnl.get('realized', '?')}   unrealized {pnl.get('unrealized', '?')}   "
                   f"fees {pnl.get('fees', '?')}   drawdown {pnl.get('drawdown_pct', '?')}% "
                   f"(peak {pnl.get('peak_equity', '?')})   exposure {pnl.get('exposure', '?')}")
    out.append("\nservices")
    for name, s in status["services"].items():
        if not s["alive"]:
            out.append(f"  {name:<26} {'down' if 'state' not in s else s['state']}")
        else:
            role = "" if s.get("role", "active") == "active" else f"  ({s['role']})"
            out.append(f"  {name:<26} {s['state']:<9} beat {s['age_s']:>5} s ago  mode {s['mode']:<7} "
                       f"metrics :{s['metrics_port']}  {s['consumer']}{role}")
    leases = status.get("leases") or {}
    if leases:
        out.append("\nleases")
        for name, lease in leases.items():
            if lease.get("held"):
                ttl = f"  expires in {lease['ttl_ms']} ms" if lease.get("ttl_ms") is not None else ""
                out.append(f"  {name:<26} {lease['holder']}  token {lease['token']}{ttl}")
            else:
                out.append(f"  {name:<26} not held")
    out.append("\nstreams")
    for name, s in status["streams"].items():
        groups = ", ".join(f"{g['group']} pending {g['pending']} lag {g['lag'] if g['lag'] is not None else '?'}"
                           for g in s["groups"]) or "no consumer group"
        dlq = f"  DLQ {s['dlq']}" if s["dlq"] else ""
        out.append(f"  {name:<26} {s['length']:>9}  {groups}{dlq}")
    dlq_total = sum((status.get("dlq") or {}).values())
    out.append(f"  dead letters: {dlq_total}" + (" (redis-cli XREVRANGE <stream>:dlq + - COUNT 5)" if dlq_total else ""))
    if status.get("positions"):
        out.append("\npositions")
        for market, p in sorted(status["positions"].items()):
            avg = short_decimal(p.get('avg_cost'))
            out.append(f"  {market:<12} size {p.get('size'):<14} avg cost {avg:<14} mark {p.get('mark')}  "
                       f"unrealized {p.get('unrealized')}  realized {p.get('realized')}")
    else:
        out.append("\npositions: none open")
    out.append("\nlast decision: " + (decision_line(status["last_decision"]) if status.get("last_decision") else "none"))
    out.append("last fill:     " + (fill_line(status["last_fill"]) if status.get("last_fill") else "none"))
    if pnl:
        out.append("\npnl")
        for key, value in sorted(pnl.items()):
            out.append(f"  {key:<26} {value}")
    return "\n".join(out)


def watch(render: Callable[[], str], every_s: float, out: TextIO = sys.stdout, clear: bool = True,
          rounds: int | None = None) -> int:
    """Print ``render()`` every ``every_s`` seconds, in place (ANSI clear) when ``clear``; Ctrl-C exits 0.
    ``rounds`` bounds the refreshes (tests)."""
    done = 0
    try:
        while rounds is None or done < rounds:
            frame = render()
            out.write((CLEAR if clear else "") + frame + "\n")
            out.flush()
            done += 1
            if rounds is not None and done >= rounds:
                break
            time.sleep(every_s)  # the refresh period
    except KeyboardInterrupt:
        out.write("\n")
    return 0
