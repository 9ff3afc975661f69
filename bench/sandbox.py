"""Benchmark of the sandbox exchange server: WS event throughput and order round trips.

    python -m bench.sandbox [--secs 10] [--markets all|''|BTC-EUR,...] [--activity 1] [--compress] [--no-pin]

Starts ``python -m sandbox`` as a subprocess (default: all 420 markets at their normal activity;
bench knob ``--activity`` multiplies the simulated trade rate), then, for ``--secs`` seconds and at
the same time:
- a WS client in its own process, subscribed to book + trades + ticker + candles(1m) on every
  market, counts the events it receives (``ws_events_per_s``); like the official SDK it does not
  offer permessage-deflate unless ``--compress``;
- an aiohttp REST client places and cancels limit orders (``--pairs-per-s``; the bench raises the
  sandbox's rate-limit budget to fit that pace for any ``--secs``) and measures each round trip,
  interleaved with ``GET /v2/time`` as the baseline.
Then a raw aiohttp WebSocket server broadcasting one fixed frame in a tight loop gives the
ceiling of this machine's WS path (``raw_ws_broadcast_per_s``). Writes bench/results/sandbox.json.
Loopback only; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.common import machine, percentile, pin

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "sandbox.json"
KEY = "b" * 64
SECRET = "c" * 64


# -- WS consumer (own process, so the REST timings are not disturbed by frame decoding) ----------


def _consume(ws_url: str, markets: list[str], secs: float, warmup: float, out: Any, compress: int = 0) -> None:
    async def main() -> None:
        counts: dict[str, int] = {}
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(ws_url, max_msg_size=0, compress=compress) as ws:
                channels = [{"name": n, "markets": markets} for n in ("book", "trades", "ticker")]
                channels.append({"name": "candles", "interval": ["1m"], "markets": markets})
                await ws.send_json({"action": "subscribe", "channels": channels})
                loop = asyncio.get_running_loop()
                t_start = loop.time() + warmup
                while loop.time() < t_start:
                    await ws.receive(timeout=5)
                n = 0
                end = t_start + secs
                while (now := loop.time()) < end:
                    try:
                        msg = await ws.receive(timeout=end - now)
                    except asyncio.TimeoutError:
                        break
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    n += 1
                    d = msg.data
                    i = d.find('"event":"')
                    ev = d[i + 9 : d.find('"', i + 9)] if i >= 0 else "?"
                    counts[ev] = counts.get(ev, 0) + 1
                out.put({"events": n, "secs": loop.time() - t_start, "by_event": counts})

    asyncio.run(main())


# -- REST round trips ------------------------------------------------------------------------------


def _headers(method: str, path_qs: str, body: str = "") -> dict[str, str]:
    ts = str(time.time_ns() // 1_000_000)
    sig = hmac.new(SECRET.encode(), f"{ts}{method}{path_qs}{body}".encode(), hashlib.sha256).hexdigest()
    return {"Bitvavo-Access-Key": KEY, "Bitvavo-Access-Timestamp": ts, "Bitvavo-Access-Signature": sig,
            "Content-Type": "application/json"}


async def _rtts(base: str, market: str, secs: float, pairs_per_s: float) -> dict[str, list[float]]:
    order_ms: list[float] = []
    time_ms: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(base_url=base) as s:
        async with s.get(f"/v2/ticker/book?market={market}") as r:
            tb = await r.json()
        async with s.get(f"/v2/markets?market={market}") as r:
            tick = Decimal((await r.json())["tickSize"])
        price = str((Decimal(tb["bid"]) / 2 // tick) * tick)
        amount = str((Decimal(20) / Decimal(price)).quantize(Decimal("0.00000001")))
        loop = asyncio.get_running_loop()
        end = loop.time() + secs
        gap = 1.0 / pairs_per_s
        while loop.time() < end:
            t_next = loop.time() + gap
            body = json.dumps({"market": market, "side": "buy", "orderType": "limit", "amount": amount,
                               "price": price, "operatorId": 1}, separators=(",", ":"))
            t0 = time.perf_counter()
            async with s.post("/v2/order", data=body, headers=_headers("POST", "/v2/order", body)) as r:
                order = await r.json()
            order_ms.append((time.perf_counter() - t0) * 1000)
            if r.status != 200:
                errors += 1
                print(f"order failed: {order}", file=sys.stderr)
            else:
                qs = f"/v2/order?market={market}&orderId={order['orderId']}&operatorId=1"
                t0 = time.perf_counter()
                async with s.delete(qs, headers=_headers("DELETE", qs)) as r:
                    await r.read()
                order_ms.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            async with s.get("/v2/time") as r:
                await r.read()
            time_ms.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(max(t_next - loop.time(), 0))
    return {"order": order_ms, "time": time_ms, "errors": [float(errors)]}


# -- raw aiohttp broadcast baseline ---------------------------------------------------------------


def _raw_server(port_out: Any, secs: float) -> None:
    frame = json.dumps({"event": "book", "market": "BTC-EUR", "nonce": 1, "bids": [["60000", "0.1"]], "asks": [],
                        "timestamp": 1})

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        end = asyncio.get_running_loop().time() + secs + 2
        while asyncio.get_running_loop().time() < end and not ws.closed:
            for _ in range(100):
                await ws.send_str(frame)
            await asyncio.sleep(0)
        await ws.close()
        return ws

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_out.put(site._server.sockets[0].getsockname()[1])
        await asyncio.sleep(secs + 5)
        await runner.cleanup()

    asyncio.run(main())


def _raw_rate(secs: float) -> float:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    srv = ctx.Process(target=_raw_server, args=(q, secs), daemon=True)
    srv.start()
    port = q.get(timeout=30)

    async def client() -> float:
        async with aiohttp.ClientSession() as s, s.ws_connect(f"ws://127.0.0.1:{port}/") as ws:
            loop = asyncio.get_running_loop()
            await ws.receive(timeout=5)
            n, t0 = 0, loop.time()
            while loop.time() - t0 < secs:
                msg = await ws.receive(timeout=5)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                n += 1
            return n / (loop.time() - t0)

    rate = asyncio.run(client())
    srv.terminate()
    srv.join(5)
    return rate


# -- main ------------------------------------------------------------------------------------------


def _histogram(text: str, name: str) -> dict[str, Any]:
    """p99 upper bound (the first bucket holding 99% of samples) and share above 5 ms, from the
    cumulative buckets of a scraped histogram covering the whole run."""
    buckets: list[tuple[float, float]] = []
    for ln in text.splitlines():
        if ln.startswith(name + "_bucket{"):
            le = ln.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(ln.split()[-1])))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return {"p99_le_ms": None, "over_5ms_share": None}
    p99 = next(le for le, n in buckets if n >= 0.99 * total)
    upto_5ms = max((n for le, n in buckets if le <= 0.005), default=0.0)
    return {"p99_le_ms": p99 * 1000, "over_5ms_share": round(1 - upto_5ms / total, 5)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sandbox")
    ap.add_argument("--secs", type=float, default=10.0)
    ap.add_argument("--activity", type=float, default=1.0, help="sandbox bench knob: trade-rate multiplier")
    ap.add_argument("--markets", default="all", help="'all' (default), '' = the engine's default set, or a list")
    ap.add_argument("--compress", action="store_true", help="the WS client offers permessage-deflate")
    ap.add_argument("--pairs-per-s", type=float, default=20.0, help="order place+cancel pairs per second")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="let the OS place the processes (default: the sandbox alone on core 0, the WS and REST "
                         "clients on core 1, so the bench's own clients never take the sandbox's core)")
    args = ap.parse_args(argv)

    # Budget for the pace (2 weight points a pair, 20% spare), never below Bitvavo's 1000/min.
    points = max(1000, int(args.pairs_per_s * 2 * 60 * 1.2))
    env = dict(os.environ, SANDBOX_API_KEY=KEY, SANDBOX_API_SECRET=SECRET, SANDBOX_EUR="1000000",
               SANDBOX_RATELIMIT_POINTS_PER_MIN=str(points))
    cmd = [sys.executable, "-m", "sandbox", "--port", "0", "--activity", str(args.activity), "--history-hours", "0.2",
           "--log-level", "WARNING"]
    if args.markets:
        cmd += ["--markets", args.markets]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        rest = proc.stdout.readline().split()[1]
        ws_url = proc.stdout.readline().split()[1]
        base = rest[: -len("/v2")]

        async def markets() -> list[str]:
            async with aiohttp.ClientSession() as s, s.get(rest + "/markets") as r:
                return [m["market"] for m in await r.json()]

        mkts = asyncio.run(markets())
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        warmup = 1.0
        consumer = ctx.Process(target=_consume, args=(ws_url, mkts, args.secs, warmup, q, 15 if args.compress else 0),
                               daemon=True)
        consumer.start()
        if args.pin:
            pin(proc.pid, 0)
            pin(consumer.pid, 1)
            pin(0, 1)  # this process: the REST client
        time.sleep(warmup)  # bench pacing, not test synchronisation: let the subscription settle
        rtt = asyncio.run(_rtts(base, "BTC-EUR", args.secs, args.pairs_per_s))
        if args.pin:
            pin(0, -1)  # back to every core for the raw baseline
        ws_res = q.get(timeout=args.secs + 30)
        consumer.join(10)
        async def scrape() -> str:
            async with aiohttp.ClientSession() as s, s.get(base + "/metrics") as r:
                return await r.text()
        metrics_text = asyncio.run(scrape())
    finally:
        proc.terminate()
        proc.wait(10)
    raw = _raw_rate(min(args.secs, 5.0))

    lag = _histogram(metrics_text, "sandbox_event_loop_lag_seconds")
    step = [ln for ln in metrics_text.splitlines() if ln.startswith("sandbox_step_duration_seconds_")]
    step_sum = next((float(ln.split()[-1]) for ln in step if "_sum" in ln), 0.0)
    step_count = next((float(ln.split()[-1]) for ln in step if "_count" in ln), 0.0)
    res: dict[str, Any] = {
        "ws_events_per_s": round(ws_res["events"] / ws_res["secs"], 1),
        "ws_events_by_type": ws_res["by_event"],
        "ws_markets": len(mkts),
        "activity_knob": args.activity,
        "ws_compression": bool(args.compress),
        "pinned": bool(args.pin),
        "duration_s": args.secs,
        "order_rtt_p50_ms": round(statistics.median(rtt["order"]), 3),
        "order_rtt_p99_ms": round(percentile(rtt["order"], 99), 3),
        "order_rtt_max_ms": round(max(rtt["order"]), 3),
        "order_requests": len(rtt["order"]),
        "order_errors": int(rtt["errors"][0]),
        "baseline_rtt_p50_ms": round(statistics.median(rtt["time"]), 3),
        "baseline_rtt_p99_ms": round(percentile(rtt["time"], 99), 3),
        "raw_ws_broadcast_per_s": round(raw, 1),
        "server_step_mean_ms": round(1000 * step_sum / step_count, 3) if step_count else None,
        "server_loop_lag_p99_ms_at_most": lag["p99_le_ms"],
        "server_loop_lag_over_5ms_share": lag["over_5ms_share"],
        "machine": {**machine(), "aiohttp": aiohttp.__version__},
        "command": "python -m bench.sandbox " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    print(f"sandbox bench: {len(mkts)} markets, activity knob x{args.activity} (raises simulated trade rate), "
          f"{args.secs:.0f} s")
    rows = [
        ("ws_events_per_s", res["ws_events_per_s"], "target >= 20000"),
        ("raw_ws_broadcast_per_s", res["raw_ws_broadcast_per_s"], "baseline: bare aiohttp, one fixed frame"),
        ("order_rtt_p50_ms", res["order_rtt_p50_ms"], f"{res['order_requests']} REST place/cancel"),
        ("order_rtt_p99_ms", res["order_rtt_p99_ms"], "target < 5 ms"),
        ("baseline_rtt_p50_ms", res["baseline_rtt_p50_ms"], "GET /v2/time"),
        ("baseline_rtt_p99_ms", res["baseline_rtt_p99_ms"], "GET /v2/time"),
        ("server_step_mean_ms", res["server_step_mean_ms"], "one 50 ms tick: step + fan-out + requests between slices"),
        ("server_loop_lag_p99_ms", f"<= {res['server_loop_lag_p99_ms_at_most']}",
         "sandbox's event loop: how late a 5 ms timer fired (the wait inside the sandbox)"),
    ]
    for name, value, note in rows:
        print(f"  {name:<24} {value!s:>12}   {note}")
    print(f"  events by type: {res['ws_events_by_type']}")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
