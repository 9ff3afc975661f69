"""The batched WS writer: frames of every header size arrive intact and in order through a real
aiohttp client, a slow reader is waited for rather than buffered without bound, and a compressed
connection keeps aiohttp's own writer."""

from __future__ import annotations

import asyncio
from collections import deque

import aiohttp
from aiohttp import web

from sandbox.server.ws_frames import FrameBatcher, frame_header

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 200_000]  # every length encoding (7-bit, 16-bit, 64-bit)


async def _serve(handler) -> tuple[web.AppRunner, str]:  # type: ignore[no-untyped-def]
    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"ws://127.0.0.1:{port}/"


def test_header_lengths_follow_rfc6455() -> None:
    assert frame_header(125) == b"\x81\x7d"
    assert frame_header(126) == b"\x81\x7e\x00\x7e"
    assert frame_header(65536) == b"\x81\x7f" + (65536).to_bytes(8, "big")


def test_batched_frames_arrive_intact_in_order_and_the_writer_waits_for_a_slow_reader() -> None:
    payloads = [(f'{{"i":{i},"pad":"' + "x" * n + '"}').encode() for i, n in enumerate(SIZES * 40)]
    seen: dict[str, object] = {}

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        batcher = FrameBatcher.for_response(ws)
        seen["batcher"] = batcher
        q = deque(payloads)
        while q:
            await batcher.write(q)  # type: ignore[union-attr]
            seen["max_buffer"] = max(seen.get("max_buffer", 0), request.transport.get_write_buffer_size())  # type: ignore
        await ws.close()
        return ws

    async def main() -> list[str]:
        runner, url = await _serve(handler)
        got: list[str] = []
        try:
            async with aiohttp.ClientSession() as s, s.ws_connect(url, compress=0, max_msg_size=0) as ws:
                async for msg in ws:
                    assert msg.type == aiohttp.WSMsgType.TEXT
                    got.append(msg.data)
                    if len(got) % 50 == 0:
                        await asyncio.sleep(0.01)  # a slow reader, so the server's buffer fills
        finally:
            await runner.cleanup()
        return got

    got = asyncio.run(main())
    assert seen["batcher"] is not None
    assert got == [p.decode() for p in payloads]
    # Flow control: the server never queued more than the transport's high-water mark plus one batch.
    assert seen["max_buffer"] < 4 * (1 << 20)


def test_compressed_connection_keeps_aiohttps_writer() -> None:
    seen: dict[str, object] = {}

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        seen["batcher"] = FrameBatcher.for_response(ws)
        await ws.send_str("hello")
        await ws.close()
        return ws

    async def main() -> str:
        runner, url = await _serve(handler)
        try:
            async with aiohttp.ClientSession() as s, s.ws_connect(url, compress=15) as ws:
                return (await ws.receive()).data
        finally:
            await runner.cleanup()

    assert asyncio.run(main()) == "hello"
    assert seen["batcher"] is None
