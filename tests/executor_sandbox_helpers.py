"""Helpers for the executor's acceptance tests (tests/test_executor_acceptance.py): a sandbox exchange in
a thread of the test process with the executor's account and a "whale" account that moves the market,
the executor as a process whose output goes to files, hand-made intents, and a gate on the account
socket that keeps it down as long as a test wants.

Everything waits by polling with a bounded deadline (``wait_until``); nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import orjson
import redis

from sandbox.engine.config import AccountSpec, SandboxConfig
from sandbox.server.runner import Sandbox, SandboxThread
from sandbox.server.settings import SandboxSettings
from tests.conftest import ROOT, wait_until
from tests.test_executor_process import now_ms
from tests.test_trading_core_process import messages
from tradestack import streams
from tradestack.embedded_redis import free_port
from tradestack.messages import EntryIntent, ExitIntent, Mode, OrderExecuted, Trace, TradingEvent, encode, new_id

T = TypeVar("T")
EXECUTOR = ["-m", "services.trader_executor"]
EXEC_KEY = hashlib.sha256(b"acceptance-executor-key").hexdigest()
EXEC_SECRET = hashlib.sha256(b"acceptance-executor-secret").hexdigest() * 2
WHALE_KEY = hashlib.sha256(b"acceptance-whale-key").hexdigest()
WHALE_SECRET = hashlib.sha256(b"acceptance-whale-secret").hexdigest() * 2
OPERATOR_ID = 7
WHALE_OPERATOR_ID = 99
MARKETS = ("BTC-EUR", "ETH-EUR")
START_EUR = Decimal("10000")
# The order types that change an account (what "nothing sent" counts), as the sandbox labels them.
MUTATING = ("POST /v2/order", "PUT /v2/order", "DELETE /v2/order", "DELETE /v2/orders")


# -- the exchange ------------------------------------------------------------------------------------


class Bench:
    """The sandbox exchange (issue 12's real order path) with two accounts: the executor's (EUR only)
    and a whale's, whose market orders move the book so that our stops trigger or our limit orders
    fill exactly when a test says so. Every engine access runs on the sandbox's loop (``call``), so
    a read is one consistent snapshot and a whale's order plus its consequences are atomic.

    The market is made calm and deep (``volatility`` 0.1, 100 quote levels a side): a stop 20 bp
    under the bid is then out of reach of the random walk and of the simulated flow for minutes,
    and within reach of the whale (the ladder is ~50 bp deep on BTC-EUR, ~40 bp on ETH-EUR)."""

    def __init__(self, thread: SandboxThread, sb: Sandbox) -> None:
        self.thread = thread
        self.sb = sb

    @classmethod
    def start(cls) -> Bench:
        config = SandboxConfig(
            markets=list(MARKETS), history_hours=0.05, volatility=0.1, book_levels=100,
            accounts={EXEC_KEY: AccountSpec(secret=EXEC_SECRET, balances={"EUR": START_EUR}),
                      WHALE_KEY: AccountSpec(secret=WHALE_SECRET, balances={
                          "EUR": Decimal("100000000"), "BTC": Decimal("10000"), "ETH": Decimal("1000000")})})
        thread = SandboxThread(config, SandboxSettings(markets=",".join(MARKETS), history_hours=0.05))
        return cls(thread, thread.start())

    def stop(self) -> None:
        self.thread.stop()

    def call(self, fn: Callable[[], T]) -> T:
        return self.thread.call(fn)

    @property
    def exchange(self) -> Any:
        return self.sb.exchange

    def faults(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self.call(lambda: self.sb.faults.apply(spec))

    def injected(self, kind: str) -> int:
        return int(self.call(lambda: self.sb.faults.injected[kind]))

    # -- reads ---------------------------------------------------------------------------------

    def book(self, market: str, depth: int = 1000) -> dict[str, Any]:
        return self.call(lambda: self.exchange.book(market, {"depth": str(depth)}))

    def best_bid(self, market: str) -> Decimal:
        return Decimal(self.book(market, 1)["bids"][0][0])

    def best_ask(self, market: str) -> Decimal:
        return Decimal(self.book(market, 1)["asks"][0][0])

    def tick(self, market: str) -> Decimal:
        return Decimal(self.call(lambda: self.exchange.mstates[market].spec.tick_str))

    def orders(self, market: str | None = None) -> list[dict[str, Any]]:
        """Every order of the executor's account (all statuses), oldest first."""
        out: list[dict[str, Any]] = []
        for m in [market] if market else MARKETS:
            out += reversed(self.call(lambda m=m: self.exchange.orders(EXEC_KEY, {"market": m, "limit": "1000"})))
        return out

    def order(self, client_order_id: str) -> list[dict[str, Any]]:
        return [o for o in self.orders() if o.get("clientOrderId") == client_order_id]

    def open_orders(self) -> list[dict[str, Any]]:
        return self.call(lambda: self.exchange.orders_open(EXEC_KEY, {}))

    def stops(self, market: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        return [o for o in self.orders(market) if o["orderType"] == "stopLoss"
                and (status is None or o["status"] == status)]

    def trades(self, market: str) -> list[dict[str, Any]]:
        return self.call(lambda: self.exchange.trades(EXEC_KEY, {"market": market, "limit": "1000"}))

    def balance(self, symbol: str) -> Decimal:
        rows = self.call(lambda: self.exchange.balance(EXEC_KEY, {"symbol": symbol}))
        return sum((Decimal(r["available"]) + Decimal(r["inOrder"]) for r in rows), Decimal(0))

    def requests(self, *endpoints: str) -> int:
        """REST requests and WS actions the sandbox answered, any status, for these endpoints."""
        total = 0.0
        for metric in self.sb.metrics.registry.collect():
            for sample in metric.samples:
                if sample.name == "sandbox_requests_total" and sample.labels.get("endpoint") in endpoints:
                    total += sample.value
        return int(total)

    def placements(self, order_type: str, outcome: str) -> int:
        """Order placements the sandbox counted (``outcome``: a status such as ``filled``, or ``error_<code>``)."""
        total = 0.0
        for metric in self.sb.metrics.registry.collect():
            for sample in metric.samples:
                if (sample.name == "sandbox_orders_total" and sample.labels.get("type") == order_type
                        and sample.labels.get("outcome") == outcome):
                    total += sample.value
        return int(total)

    # -- acts ----------------------------------------------------------------------------------

    def place_as_executor(self, body: dict[str, Any]) -> dict[str, Any]:
        """An order on the executor's account that the executor did not make (a person's)."""
        return self.call(lambda: self.exchange.create_order(EXEC_KEY, {"operatorId": 1, **body}))

    def cancel_as_executor(self, market: str, client_order_id: str) -> dict[str, Any]:
        """A person cancels one of the executor's orders (from the app, say)."""
        return self.call(lambda: self.exchange.cancel_order(EXEC_KEY, {
            "market": market, "clientOrderId": client_order_id, "operatorId": "1"}))

    def whale_sell_through(self, market: str, price: Decimal) -> dict[str, Any]:
        """The whale sells at market every bid above ``price``: afterwards the best bid is at or under
        it, so a resting sell stop triggered at ``price`` or higher fires (in the same engine call, as
        the engine checks the triggers after every order)."""

        def act() -> dict[str, Any]:
            book = self.exchange.book(market, {"depth": "1000"})
            amount = sum((Decimal(s) for p, s in book["bids"] if Decimal(p) > price), Decimal(0))
            assert amount > 0, f"no bid above {price} in {market}"
            assert Decimal(book["bids"][-1][0]) <= price, f"the {market} book is not {price} deep"
            order: dict[str, Any] = self.exchange.create_order(WHALE_KEY, {
                "market": market, "side": "sell", "orderType": "market", "amount": str(amount),
                "operatorId": WHALE_OPERATOR_ID})
            return order

        return self.call(act)

    def whale_sell(self, market: str, amount: Decimal) -> dict[str, Any]:
        return self.call(lambda: self.exchange.create_order(WHALE_KEY, {
            "market": market, "side": "sell", "orderType": "market", "amount": str(amount),
            "operatorId": WHALE_OPERATOR_ID}))


def below(price: Decimal, bp: int, tick: Decimal) -> Decimal:
    """``price`` less ``bp`` basis points, down to the tick."""
    return (price * (1 - Decimal(bp) / 10_000) / tick).to_integral_value(ROUND_DOWN) * tick


def fills_of(bench: Bench, market: str, order_id: str) -> list[dict[str, Any]]:
    return [t for t in bench.trades(market) if t["orderId"] == order_id]


# -- the executor process ----------------------------------------------------------------------------


def executor_env(redis_url: str, bench: Bench | None, mode: Mode = "sandbox", **extra: str) -> dict[str, str]:
    env = {"REDIS_URL": redis_url, "METRICS_PORT": str(free_port()), "LEASE_TTL_MS": "1000",
           "LOG_LEVEL": "INFO", "EXECUTOR_POLL_SECS": "0.2", "EXECUTOR_COMMIT_SECS": "0.02"}
    if bench is not None:
        env.update(BITVAVO_REST_URL=bench.sb.rest_url, BITVAVO_WS_URL=bench.sb.ws_url)
    if mode == "sandbox":
        assert bench is not None
        env.update(DRY_RUN="false", BITVAVO_API_KEY=EXEC_KEY, BITVAVO_API_SECRET=EXEC_SECRET,
                   BITVAVO_OPERATOR_ID=str(OPERATOR_ID))
    else:
        env.update(DRY_RUN="true", PAPER_EUR=str(START_EUR))
    env.update(extra)
    return env


@dataclass
class Proc:
    """A service process whose stdout/stderr go to files (a pipe nobody reads would block its logs)."""

    name: str
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    env: dict[str, str]
    _files: list[Any] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def metrics_port(self) -> int:
        return int(self.env["METRICS_PORT"])

    def kill(self) -> None:
        """SIGKILL: nothing is flushed, nothing is committed."""
        self.proc.kill()
        self.proc.wait(10)
        self._close()

    def stop(self) -> int:
        """SIGTERM (a clean stop) and the exit code; SIGKILL past 15 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._close()
        return self.proc.returncode

    def _close(self) -> None:
        for f in self._files:
            f.close()
        self._files.clear()

    def logs(self, event: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.out.read_bytes().splitlines():
            if line.startswith(b"{"):
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if event is None or row.get("event") == event:
                    out.append(row)
        return out

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")[-4000:]

    def _metrics_text(self) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as resp:
                return str(resp.read().decode())
        except OSError:
            return None

    def metric(self, name: str) -> float | None:
        """One unlabelled sample of its /metrics, or None while it does not answer."""
        for line in (self._metrics_text() or "").splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{}"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def metric_total(self, name: str) -> float:
        """The sum of every sample of ``name``, whatever its labels (0 when there is none)."""
        return sum(float(line.rsplit(" ", 1)[1]) for line in (self._metrics_text() or "").splitlines()
                   if line.startswith((name + " ", name + "{")))


def spawn_to_files(args: list[str], env: dict[str, str], tmp: Path, name: str) -> Proc:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "METRICS_", "DRY_RUN", "BITVAVO_",
                                                                        "EXECUTOR_", "PAPER_", "LEASE_"))}
    full_env.update(env)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    n = len(list(tmp.glob(f"{name}-*.out")))
    out, err = tmp / f"{name}-{n}.out", tmp / f"{name}-{n}.err"
    fo, fe = open(out, "wb"), open(err, "wb")
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=full_env, stdout=fo, stderr=fe,
                            stdin=subprocess.DEVNULL)
    return Proc(name, proc, out, err, env, [fo, fe])


def start_executor(tmp: Path, env: dict[str, str], name: str = "executor") -> Proc:
    return spawn_to_files(EXECUTOR, env, tmp, name)


def heartbeat(client: redis.Redis, service: str = "trader_executor") -> dict[str, Any]:
    raw = client.get(streams.heartbeat(service))
    return orjson.loads(raw) if raw else {}


def wait_ready(client: redis.Redis, proc: Proc, timeout_s: float = 30.0) -> float:
    """Until this very process (its pid) holds the lease and says running; the monotonic time then."""
    import time

    def ready() -> bool:
        if proc.proc.poll() is not None:
            raise AssertionError(f"{proc.name} exited with {proc.proc.returncode}: {proc.stderr()}")
        hb = heartbeat(client)
        return hb.get("pid") == proc.pid and hb.get("state") == "running" and hb.get("role") == "active"

    wait_until(ready, timeout_s=timeout_s, what=f"{proc.name} running and active")
    return time.monotonic()


# -- intents and reports -----------------------------------------------------------------------------


def entry(client: redis.Redis, market: str, amount: str | Decimal, stop: Decimal, *, mode: Mode = "sandbox",
          order_type: str = "market", price: Decimal | None = None, ref: Decimal | None = None,
          intent_id: str | None = None) -> EntryIntent:
    ts = now_ms(client)
    iid = intent_id or new_id()
    return EntryIntent(
        id=iid, ts=ts, src="acceptance", trace=Trace(id=f"trace-{iid}", ts=ts), decision_id=f"dec-{iid}",
        signal_id=None, market=market, side="buy", order_type=order_type,  # type: ignore[arg-type]
        amount=Decimal(amount), price=price, ref_price=ref if ref is not None else price, stop_price=stop,
        take_profit_price=None, trailing_distance=None, time_stop_secs=None, strategy="acceptance",
        strategy_params={}, checks=[], sizing=None, mode=mode)


def exit_intent_for(client: redis.Redis, position: EntryIntent, reason: str = "take_profit",
          intent_id: str | None = None) -> ExitIntent:
    ts = now_ms(client)
    iid = intent_id or new_id()
    return ExitIntent(id=iid, ts=ts, src="acceptance", trace=Trace(id=f"trace-{iid}", ts=ts),
                      position_id=position.id, market=position.market, side="sell", order_type="market",
                      amount=position.amount, price=None, reason=reason,  # type: ignore[arg-type]
                      trigger_price=None, level=None, opened_ts=position.ts, mode=position.mode)


def push(client: redis.Redis, *intents: EntryIntent | ExitIntent) -> None:
    for intent in intents:
        client.xadd(streams.ORDERS_SHADOW, encode(intent))


def reports(client: redis.Redis, position_id: str | None = None, purpose: str | None = None,
            status: str | None = None) -> list[OrderExecuted]:
    return [m for m in messages(client, streams.ORDERS_EXECUTED) if isinstance(m, OrderExecuted)
            and (position_id is None or m.position_id == position_id) and (purpose is None or m.purpose == purpose)
            and (status is None or m.status == status)]


def events(client: redis.Redis, kind: str | None = None) -> list[TradingEvent]:
    return [m for m in messages(client, streams.TRADING_EVENTS) if isinstance(m, TradingEvent)
            and (kind is None or m.kind == kind)]


def latest(client: redis.Redis, client_order_id: str) -> OrderExecuted | None:
    rows = [r for r in reports(client) if r.client_order_id == client_order_id]
    return rows[-1] if rows else None


# -- the account socket's gate -----------------------------------------------------------------------


class WsGate:
    """A TCP relay between the executor and the sandbox's WS port. Open, it forwards bytes both ways;
    closed, it accepts new connections only to close them at once (and may cut the relayed ones), so
    the executor's account socket stays down for exactly as long as the test keeps the gate closed:
    the sandbox's ``ws_drop`` drops a socket, but the client reconnects within a second."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.open = True
        self.accepted = 0
        self.refused = 0
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._main, name="ws-gate", daemon=True)

    def __enter__(self) -> WsGate:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("ws gate did not start")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v2/"

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            for w in list(self._writers):
                w.close()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            self.refused += 1
            writer.close()
            return
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))

    def close(self, cut: bool = True) -> None:
        """Refuse new connections and (``cut``) cut the relayed ones; returns once done."""
        asyncio.run_coroutine_threadsafe(self._async_set(False, cut), self._loop).result(10)

    def reopen(self) -> None:
        asyncio.run_coroutine_threadsafe(self._async_set(True, False), self._loop).result(10)

    async def _async_set(self, open_: bool, cut: bool) -> None:
        self.open = open_
        if cut:
            for w in list(self._writers):
                w.close()


def iter_lines(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_bytes().splitlines():
        if line.startswith(b"{"):
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
