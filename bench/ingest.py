"""Ingest capacity: `python -m bench.ingest [--events 100000] [--markets 438]`.

A local aiohttp WS server (its own process) replays a pre-generated list of Bitvavo-shaped
``book`` frames for ``--markets`` markets as fast as the client reads them (loopback, bounded
count), once every market of the feed is subscribed, so every client sees the identical feed.
Two clients, one after the other, each in its own process pinned to one core:

- ours: ``tradestack.bitvavo`` (asyncio WS client → local books with the resync recipe → deltas
  and top of book, JSONL rows flushed, then pipelined XADD), i.e. the ``ingest.orderbook`` path;
- naive: the official SDK's thread-based WS client (``subscriptionBookUpdate`` per market),
  each event written with a plain ``XADD`` from its callback.

Reported: events/s from first frame received to last XADD done, and receive → XADD latency
p50/p99 per event; a first run with the feed as fast as possible (capacity: latency there is
queueing), a second paced at ``--paced-rate`` (default 5000/s, above the real full feed) for latency.
Prints a table and writes ``bench/results/ingest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from bench.common import bench_redis_binary, machine, percentile, pin

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "ingest.json"


# -- the feed ----------------------------------------------------------------------------------


def markets_for(n: int) -> list[str]:
    return [f"M{i:03d}-EUR" for i in range(n)]


def generate(n_events: int, n_markets: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    markets = markets_for(n_markets)
    mids = {m: rng.randint(1_000, 90_000) for m in markets}
    nonce = {m: 0 for m in markets}
    frames = []
    ts = 1_790_000_000_000_000_000
    for _ in range(n_events):
        m = markets[rng.randrange(n_markets)]
        nonce[m] += 1
        mid = mids[m] = max(100, mids[m] + rng.randint(-2, 2))
        bids = [[f"{(mid - rng.randint(1, 40)) / 100:.2f}", "0" if rng.random() < 0.25 else f"{rng.random() * 3:.8f}"]
                for _ in range(rng.randint(0, 3))]
        asks = [[f"{(mid + rng.randint(1, 40)) / 100:.2f}", "0" if rng.random() < 0.25 else f"{rng.random() * 3:.8f}"]
                for _ in range(rng.randint(0, 3))]
        ts += 100_000
        frames.append(orjson.dumps({"event": "book", "market": m, "nonce": nonce[m], "bids": bids, "asks": asks,
                                    "timestamp": ts}).decode())
    return frames


async def serve(frames_path: str, n_markets: int, rate: float = 0.0) -> None:
    from aiohttp import web

    frames = Path(frames_path).read_text().splitlines()
    markets = set(markets_for(n_markets))

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        subscribed: set[str] = set()
        async for msg in ws:
            data = orjson.loads(msg.data)
            if data.get("action") == "subscribe":
                for ch in data.get("channels", []):
                    subscribed.update(ch.get("markets", []))
                await ws.send_str(orjson.dumps({"event": "subscribed", "subscriptions": {"book": []}}).decode())
                if subscribed >= markets:
                    loop = asyncio.get_running_loop()
                    start = loop.time()
                    for i, frame in enumerate(frames):
                        if rate and i % 10 == 0:  # paced: frame i is due at start + i / rate
                            delay = start + i / rate - loop.time()
                            if delay > 0:
                                await asyncio.sleep(delay)
                        await ws.send_str(frame)
            elif data.get("action") == "getTime":
                await ws.send_str(orjson.dumps({"action": "getTime", "response": {"time": int(time.time() * 1000)}}).decode())
        return ws

    async def book(request: web.Request) -> web.Response:
        market = request.match_info["market"]
        return web.json_response({"market": market, "nonce": 0, "bids": [], "asks": [], "timestamp": 0})

    async def any_rest(request: web.Request) -> web.Response:
        return web.json_response({"time": int(time.time() * 1000)})

    app = web.Application()
    app.router.add_get("/v2/", ws_handler)
    app.router.add_get("/v2/{market}/book", book)
    app.router.add_get("/v2/{tail:.*}", any_rest)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"PORT {port}", flush=True)
    await asyncio.Event().wait()


# -- the clients -------------------------------------------------------------------------------


async def run_ours(port: int, redis_url: str, n_events: int, n_markets: int, parquet_dir: str) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from tradestack.bitvavo.emit import Emitter
    from tradestack.bitvavo.feeds import BookFeed, IngestMetrics
    from tradestack.bitvavo.rest import BitvavoRest
    from tradestack.bitvavo.ws import BitvavoWs
    from tradestack.metrics import ServiceMetrics
    from tradestack.storage import ParquetSink

    redis = aioredis.Redis.from_url(redis_url)
    metrics = IngestMetrics(ServiceMetrics("bench_ingest"))
    sink = ParquetSink(parquet_dir)
    emitter = Emitter(redis, sink, metrics=metrics)
    emitter.latencies = []
    rest = BitvavoRest(f"http://127.0.0.1:{port}/v2", points_per_min=1000, reserve=0)
    feed = BookFeed(rest=rest, src="bench", emitter=emitter, metrics=metrics, snapshot_every_s=3600, resync_workers=8)
    seen = {"n": 0, "first": 0.0}
    inner = feed.on_event

    def on_event(frame: dict[str, Any], t0: float) -> None:
        if not seen["n"]:
            seen["first"] = t0
        seen["n"] += 1
        inner(frame, t0)

    ws = BitvavoWs(f"ws://127.0.0.1:{port}/v2/", on_event=on_event, on_connected=feed.on_connected,
                   on_state=feed.on_state, quiet_s=60, backpressure=emitter.backpressure)
    feed.attach(ws)
    stop, emit_stop = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(ws.run(stop)), asyncio.create_task(feed.run(stop))]
    emit_task = asyncio.create_task(emitter.run(emit_stop))
    await feed.set_markets(markets_for(n_markets))
    warmup = 0
    while not (feed.syncs and all(s.synced for s in feed.syncs.values())):
        await asyncio.sleep(0.001)
    # Steady state only: latencies of rows received while the 438 initial snapshots were
    # being fetched (events buffered until their book syncs) are left out.
    warmup, emitter.latencies = seen["n"], []
    while seen["n"] < n_events or not emitter._idle.is_set():
        await asyncio.sleep(0.005)
    done = time.perf_counter()
    stop.set()
    await asyncio.gather(*tasks)
    emit_stop.set()
    await emit_task
    sink.close()
    await rest.close()
    xadds = await redis.xlen("bitvavo:orderbook:update") + await redis.xlen("bitvavo:book")
    await redis.aclose()
    elapsed = done - seen["first"]
    lat = emitter.latencies
    return {"client": "ours", "events": seen["n"], "xadds": xadds, "elapsed_s": elapsed,
            "events_per_s": seen["n"] / elapsed, "p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000,
            "synced_books": sum(s.synced for s in feed.syncs.values()), "gaps": feed.gaps,
            "latency_excludes_warmup_events": warmup}


def run_naive(port: int, redis_url: str, n_events: int, n_markets: int) -> dict[str, Any]:
    import redis as sync_redis
    from python_bitvavo_api.bitvavo import Bitvavo

    r = sync_redis.Redis.from_url(redis_url)
    lat: list[float] = []
    state = {"n": 0, "first": 0.0, "last": 0.0}
    finished = threading.Event()

    def callback(msg: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        if not state["n"]:
            state["first"] = t0
        r.xadd("bench:naive:book", {"data": orjson.dumps(msg)})
        t1 = time.perf_counter()
        lat.append(t1 - t0)
        state["n"] += 1
        state["last"] = t1
        if state["n"] >= n_events:
            finished.set()

    bv = Bitvavo({"RESTURL": f"http://127.0.0.1:{port}/v2", "WSURL": f"ws://127.0.0.1:{port}/v2/"})
    ws = bv.newWebsocket()
    ws.setErrorCallback(lambda err: None)
    for m in markets_for(n_markets):
        ws.subscriptionBookUpdate(m, callback)
    if not finished.wait(600):
        raise RuntimeError(f"naive client saw only {state['n']} of {n_events} events")
    elapsed = state["last"] - state["first"]
    try:
        ws.keepAlive = False
        ws.ws.close()
    except Exception:  # noqa: BLE001 - the SDK's close path is known to be noisy (reference §9.5)
        pass
    return {"client": "naive_sdk", "events": state["n"], "xadds": r.xlen("bench:naive:book"), "elapsed_s": elapsed,
            "events_per_s": state["n"] / elapsed, "p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000}


def client_main(args: argparse.Namespace) -> None:
    pin(0, args.core)
    if args.client == "ours":
        with tempfile.TemporaryDirectory() as tmp:
            result = asyncio.run(run_ours(args.port, args.redis, args.events, args.markets, tmp))
    else:
        result = run_naive(args.port, args.redis, args.events, args.markets)
    print("RESULT " + json.dumps(result), flush=True)


# -- the driver ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ingest")
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--markets", type=int, default=438)
    p.add_argument("--serve")
    p.add_argument("--client", choices=["ours", "naive"])
    p.add_argument("--port", type=int)
    p.add_argument("--redis")
    p.add_argument("--core", type=int, default=0)
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--rate", type=float, default=0.0, help="server pacing in events/s (0 = as fast as possible)")
    p.add_argument("--paced-rate", type=float, default=5_000.0,
                   help="second run at this rate for latency (~ the real full feed; 0 = skip)")
    args = p.parse_args(argv)
    if args.serve:
        pin(0, 1)
        asyncio.run(serve(args.serve, args.markets, args.rate))
        return 0
    if args.client:
        client_main(args)
        return 0

    import redis as sync_redis

    from tradestack.embedded_redis import EmbeddedRedis

    with tempfile.TemporaryDirectory() as tmp:
        frames = generate(args.events, args.markets)
        path = Path(tmp) / "frames.txt"
        path.write_text("\n".join(frames))
        redis_bin, redis_version = bench_redis_binary()
        redis_srv = EmbeddedRedis(Path(tmp) / "redis", binary=redis_bin, appendonly=False).start()
        try:
            if getattr(redis_srv, "proc", None) is not None:
                pin(redis_srv.proc.pid, 1)
            results = []
            runs = [(c, 0.0) for c in ["ours"] + ([] if args.skip_naive else ["naive"])]
            if args.paced_rate:
                runs += [(c, args.paced_rate) for c in ["ours"] + ([] if args.skip_naive else ["naive"])]
            for client, rate in runs:
                sync_redis.Redis.from_url(redis_srv.url).flushall()
                server = subprocess.Popen([sys.executable, "-m", "bench.ingest", "--serve", str(path),
                                           "--markets", str(args.markets), "--rate", str(rate)],
                                          cwd=ROOT, stdout=subprocess.PIPE)
                try:
                    assert server.stdout is not None
                    port = int(server.stdout.readline().decode().split()[1])
                    out = subprocess.run([sys.executable, "-m", "bench.ingest", "--client", client, "--port", str(port),
                                          "--redis", redis_srv.url, "--events", str(args.events), "--markets",
                                          str(args.markets), "--core", "0"], cwd=ROOT, capture_output=True, timeout=900)
                finally:
                    server.terminate()
                    server.wait(10)
                lines = [ln for ln in out.stdout.decode().splitlines() if ln.startswith("RESULT ")]
                if not lines:
                    print(out.stderr.decode()[-3000:], file=sys.stderr)
                    raise SystemExit(f"{client} client failed")
                result = json.loads(lines[-1][7:])
                result["feed_rate"] = "max" if not rate else int(rate)
                results.append(result)
        finally:
            redis_srv.stop()
    by = {r["client"]: r for r in results if r["feed_rate"] == "max"}
    summary: dict[str, Any] = {
        "feed": {"events": args.events, "markets": args.markets, "kind": "book deltas, 0-3 levels per side"},
        "machine": machine(),
        "redis_server": {"binary": redis_bin, "version": redis_version},
        "results": results,
        "target": {"events_per_s": 20_000, "p99_ms": 5.0},
    }
    if "naive_sdk" in by:
        summary["ratio_events_per_s"] = by["ours"]["events_per_s"] / by["naive_sdk"]["events_per_s"]
    print(f"redis-server {redis_version} ({redis_bin}; REDIS_SERVER_BIN picks another)")
    print(f"{'client':<10} {'feed/s':>7} {'events':>8} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'xadds':>8}")
    for r in results:
        print(f"{r['client']:<10} {r['feed_rate']:>7} {r['events']:>8} {r['events_per_s']:>10.0f} {r['p50_ms']:>8.3f} "
              f"{r['p99_ms']:>8.3f} {r['xadds']:>8}")
    if "ratio_events_per_s" in summary:
        print(f"ours / naive throughput: {summary['ratio_events_per_s']:.1f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
