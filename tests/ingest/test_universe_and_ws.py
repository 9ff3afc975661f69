"""Following trading:universe live, and the WS client's robustness (bad frames, quiet feeds)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import redis
from aiohttp import web

from ingest.ticker24h import Settings
from tests.ingest.helpers import ingest_service, poll, sandbox
from tradestack import streams
from tradestack.backoff import Backoff
from tradestack.bitvavo.feeds import TickerFeed
from tradestack.bitvavo.ws import BitvavoWs
from tradestack.messages import decode


def test_universe_is_followed_live(redis_url: str, rclient: redis.Redis, tmp_path: Path) -> None:
    async def main() -> None:
        async with sandbox(seed=5, ticker24h_ms=100) as sb:
            settings = Settings(redis_url=redis_url, bitvavo_rest_url=sb.rest_url, bitvavo_ws_url=sb.ws_url,
                                metrics_port=0, parquet_dir=str(tmp_path), ingest_markets=["universe"],
                                universe_poll_s=0.05)
            rclient.hset(streams.UNIVERSE, mapping={"BTC-EUR": "{}", "ETH-EUR": "{}"})

            def subs() -> set[str]:
                return {m for s in sb.hub.sessions.values() for m in s.subs.get("ticker24h", {})}

            def seen() -> set[str]:
                return {decode(f).market for _, f in rclient.xrevrange(streams.TICKER24H, count=50)}

            async with ingest_service("ingest_ticker24h", settings, lambda service, rest, **kw: TickerFeed(**kw)) as (_, feed):
                await poll(lambda: subs() == {"BTC-EUR", "ETH-EUR"}, 10, "first universe")
                await poll(lambda: seen() == {"BTC-EUR", "ETH-EUR"}, 10, "ticker entries")
                rclient.hdel(streams.UNIVERSE, "ETH-EUR")
                rclient.hset(streams.UNIVERSE, "SOL-EUR", "{}")
                await poll(lambda: subs() == {"BTC-EUR", "SOL-EUR"}, 10, "universe change applied live")
                rclient.delete(streams.TICKER24H)
                await poll(lambda: seen() == {"BTC-EUR", "SOL-EUR"}, 10, "entries follow the universe")
                # A market the exchange does not know is dropped; the rest stay subscribed.
                rclient.hset(streams.UNIVERSE, "NOPE-EUR", "{}")
                await poll(lambda: feed.ws.unexpected >= 1 and "NOPE-EUR" not in feed.ws.subs[("ticker24h", None)],
                           10, "unknown market dropped")
                await poll(lambda: subs() == {"BTC-EUR", "SOL-EUR"}, 10, "others still subscribed")

    asyncio.run(main())


def test_ws_survives_bad_frames_and_treats_a_quiet_feed_as_dead() -> None:
    async def main() -> None:
        connections = []

        async def handler(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse(autoping=True)
            await ws.prepare(request)
            connections.append(ws)
            first = await ws.receive()
            assert orjson.loads(first.data)["action"] == "subscribe"
            for frame in ("not json", "[1,2]", '{"what":1}', '{"event":"book","market":"X"}',
                          '{"event":"book","market":"X","nonce":1,"bids":[],"asks":[],"timestamp":1}'):
                await ws.send_str(frame)
            async for _ in ws:  # then say nothing more (getTime probes get no answer)
                pass
            return ws

        app = web.Application()
        app.router.add_get("/v2/", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        events, states, reasons = [], [], []

        def on_event(frame, t0):
            if "nonce" not in frame:
                raise KeyError("nonce")
            events.append(frame)

        ws = BitvavoWs(f"ws://127.0.0.1:{port}/v2/", on_event=on_event, on_state=states.append,
                       on_unexpected=reasons.append, quiet_s=0.4, ping_every_s=5, backoff=Backoff(0.01, 0.05))
        await ws.subscribe("book", ["X"])
        stop = asyncio.Event()
        task = asyncio.create_task(ws.run(stop))
        await poll(lambda: len(connections) >= 2 and len(events) >= 2, 10, "reconnect after a quiet feed")
        stop.set()
        await asyncio.wait_for(task, 5)
        await runner.cleanup()
        assert len(events) >= 2  # the good frame, on each connection
        assert {"not_json", "not_object", "unknown_frame", "bad_book"} <= set(reasons)
        assert states[:2] == [True, False]

    asyncio.run(main())
