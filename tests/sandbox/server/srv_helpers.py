"""Helpers for the sandbox server tests: configs, signed requests, an in-process server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any, TypeVar

import aiohttp

from sandbox.engine.config import AccountSpec, SandboxConfig
from sandbox.server import Sandbox, SandboxSettings, run_sandbox
from sandbox.server.auth import sign
from tradestack.clock import FakeClock

T = TypeVar("T")

KEY = "k" * 64
SECRET = "s" * 64
KEY2 = "q" * 64
SECRET2 = "r" * 64
MARKETS = ["BTC-EUR", "ETH-EUR"]


def make_config(**kw: Any) -> SandboxConfig:
    base: dict[str, Any] = dict(
        markets=list(MARKETS),
        seed=7,
        history_hours=0.5,
        accounts={
            KEY: AccountSpec(secret=SECRET, balances={"EUR": Decimal("10000")}),
            KEY2: AccountSpec(secret=SECRET2, balances={"EUR": Decimal("10000"), "BTC": Decimal("1")}),
        },
    )
    base.update(kw)
    return SandboxConfig(**base)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Tests are sync; each async scenario runs in its own loop (no pytest-asyncio needed)."""
    return asyncio.run(coro)


def signed(
    method: str, path_qs: str, body: Any = None, *, key: str = KEY, secret: str = SECRET, ts: int, window: Any = None
) -> dict[str, str]:
    body_str = json.dumps(body, separators=(",", ":")) if body else ""
    h = {
        "Bitvavo-Access-Key": key,
        "Bitvavo-Access-Signature": sign(secret, ts, method, path_qs, body_str),
        "Bitvavo-Access-Timestamp": str(ts),
    }
    if window is not None:
        h["Bitvavo-Access-Window"] = str(window)
    return h


class Client:
    """A thin signed REST client over aiohttp for one sandbox."""

    def __init__(self, sb: Sandbox, http: aiohttp.ClientSession, clock: FakeClock | None) -> None:
        self.sb, self.http, self.clock = sb, http, clock

    def now(self) -> int:
        return self.clock.now_ms() if self.clock else __import__("time").time_ns() // 1_000_000

    async def call(
        self, method: str, path_qs: str, body: Any = None, *, auth: bool = True, key: str = KEY, secret: str = SECRET,
        raw: bytes | None = None, headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, Any]:
        h = dict(headers or {})
        if auth:
            h.update(signed(method, "/v2" + path_qs, body, key=key, secret=secret, ts=self.now()))
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            h.setdefault("Content-Type", "application/json")
        async with self.http.request(method, self.sb.rest_url + path_qs, data=data, headers=h) as r:
            return r.status, await r.json(content_type=None), r.headers


@asynccontextmanager
async def sandbox(
    clock: FakeClock | None = None, config: SandboxConfig | None = None, **settings: Any
) -> AsyncIterator[tuple[Sandbox, Client]]:
    kw: dict[str, Any] = {}
    if clock is not None:
        kw["clock"] = clock
    if "sleep" in settings:
        kw["sleep"] = settings.pop("sleep")
    async with run_sandbox(config or make_config(), SandboxSettings(**settings), **kw) as sb:
        async with aiohttp.ClientSession() as http:
            yield sb, Client(sb, http, clock)
