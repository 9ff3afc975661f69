"""The ``tradestack`` command: ``up``, ``status``, ``kill on|off``.

``up`` runs the whole stack in the foreground: with no Redis configured (REDIS_URL) and none on
127.0.0.1:6379 it starts an embedded one; with no exchange key configured it starts the sandbox
exchange and points every process at it. Children that die are restarted with backoff; Ctrl-C or
SIGTERM stops them all (SIGTERM, then SIGKILL after 6 s). ``up`` writes ``<data-dir>/stack.json``
so ``status`` and ``kill`` find its Redis without being told.
"""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import orjson
import redis

from tradestack import streams
from tradestack.backoff import Backoff
from tradestack.config import DEFAULT_REDIS_URL, CommonSettings, load_settings_or_exit
from tradestack.embedded_redis import EmbeddedRedis, is_reachable
from tradestack.messages import Trace, TradingEvent, encode, new_id

# Every process of DESIGN §1, in start order (producers first).
PROCESSES: list[tuple[str, list[str]]] = [
    ("ingest_ticker24h", ["-m", "ingest.ticker24h"]),
    ("ingest_orderbook", ["-m", "ingest.orderbook"]),
    ("ingest_candles", ["-m", "ingest.candles"]),
    ("trader_universe_selector", ["-m", "services.trader_universe_selector"]),
    ("trader_signal_engine", ["-m", "services.trader_signal_engine"]),
    ("trading_core", ["-m", "services.trading_core"]),
    ("trader_executor", ["-m", "services.trader_executor"]),
    ("trader_pnl_orchestrator", ["-m", "services.trader_pnl_orchestrator"]),
]
STREAMS_SHOWN = [streams.TICKER24H, streams.BOOK, streams.ORDERBOOK_UPDATE, streams.candles("1m"),
                 streams.SIGNALS_BASELINE, streams.ORDERS_SIGNALS, streams.ORDERS_SHADOW, streams.ORDERS_EXECUTED,
                 streams.TRADING_EVENTS, streams.PNL_SNAPSHOTS]


def say(text: str) -> None:
    """Human lines go to stderr; stdout carries the children's JSON logs."""
    print(f"tradestack: {text}", file=sys.stderr, flush=True)


def stack_file(data_dir: Path) -> Path:
    return data_dir / "stack.json"


def resolve_redis_url(settings: CommonSettings, data_dir: Path) -> str:
    """REDIS_URL when configured; else the URL a running `up` recorded; else the default."""
    if "redis_url" in settings.model_fields_set:
        return settings.redis_url
    path = stack_file(data_dir)
    if path.exists():
        recorded = orjson.loads(path.read_bytes()).get("redis_url")
        if recorded:
            return str(recorded)
    return DEFAULT_REDIS_URL


# -- up ---------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    backoff: Backoff = field(default_factory=lambda: Backoff(1.0, 30.0))
    restart_at: float = 0.0
    restarts: int = 0


class Stack:
    def __init__(self, args: argparse.Namespace, settings: CommonSettings) -> None:
        self.args = args
        self.settings = settings
        self.data_dir = Path(args.data_dir).resolve()
        self.redis: EmbeddedRedis | None = None
        self.sandbox: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}
        self.children = [Child(n, a) for n, a in PROCESSES if not args.only or n in args.only]
        self.stopping = False

    def start_redis(self) -> str:
        if "redis_url" in self.settings.model_fields_set:
            reachable = is_reachable(self.settings.redis_url)
            say(f"using the configured REDIS_URL ({'reachable' if reachable else 'NOT reachable yet: services will retry'})")
            return self.settings.redis_url
        if is_reachable(DEFAULT_REDIS_URL) and not self.args.embedded_redis:
            say(f"using the Redis at {DEFAULT_REDIS_URL}")
            return DEFAULT_REDIS_URL
        self.redis = EmbeddedRedis(self.data_dir / "redis").start()
        say(f"started an embedded Redis at {self.redis.url} (AOF in {self.data_dir / 'redis'})")
        return self.redis.url

    def start_sandbox(self) -> dict[str, str]:
        if self.settings.bitvavo_api_key is not None or self.args.no_sandbox:
            return {}
        key = secrets.token_hex(32)
        secret = secrets.token_hex(32)
        (self.data_dir / "sandbox").mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, SANDBOX_API_KEY=key, SANDBOX_API_SECRET=secret)
        self.sandbox = subprocess.Popen(
            [sys.executable, "-m", "sandbox", "--port", str(self.args.sandbox_port),
             "--state", str(self.data_dir / "sandbox" / "state.json")],
            env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        urls: dict[str, str] = {}
        assert self.sandbox.stdout is not None
        while len(urls) < 2:
            line = self.sandbox.stdout.readline().decode().strip()
            if not line:
                raise SystemExit(f"tradestack: the sandbox exchange did not start (exit code {self.sandbox.poll()})")
            kind, _, url = line.partition(" ")
            if kind in ("REST", "WS"):
                urls[kind] = url
        say(f"started the sandbox exchange: REST {urls['REST']}  WS {urls['WS']}")
        # The sandbox keeps logging on its stdout: hand the pipe to a thread that forwards it.
        _forward(self.sandbox.stdout)
        return {"BITVAVO_REST_URL": urls["REST"], "BITVAVO_WS_URL": urls["WS"],
                "BITVAVO_API_KEY": key, "BITVAVO_API_SECRET": secret, "BITVAVO_OPERATOR_ID": "1"}

    def spawn(self, child: Child) -> None:
        child.proc = subprocess.Popen([sys.executable, *child.args], env=self.child_env(child.name),
                                      stdin=subprocess.DEVNULL)

    def child_env(self, name: str) -> dict[str, str]:
        """The stack follows the universe: tickers of every market feed the selector, books and
        candles follow what it selected (unless INGEST_MARKETS is set)."""
        env = dict(self.env)
        if "INGEST_MARKETS" not in os.environ:
            if name == "ingest_ticker24h":
                env["INGEST_MARKETS"] = "all"
            elif name in ("ingest_orderbook", "ingest_candles"):
                env["INGEST_MARKETS"] = "universe"
        return env

    def run(self) -> int:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        redis_url = self.start_redis()
        exchange_env = self.start_sandbox()
        self.env = dict(os.environ, REDIS_URL=redis_url, PARQUET_DIR=str(self.data_dir / "parquet"),
                        **exchange_env)
        if self.args.mode == "sandbox":  # the real order path, on the sandbox's key
            self.env["DRY_RUN"] = "false"
        elif self.args.mode == "paper":
            self.env["DRY_RUN"] = "true"
        stack_file(self.data_dir).write_bytes(orjson.dumps({
            "redis_url": redis_url, "pid": os.getpid(), "sandbox": exchange_env.get("BITVAVO_REST_URL"),
            "started_ms": int(time.time() * 1000)}))
        for child in self.children:
            self.spawn(child)
        mode = {"sandbox": "sandbox", "paper": "paper"}.get(self.args.mode or "", self.settings.mode)
        say(f"started {len(self.children)} processes in {mode} mode; "
            f"`tradestack status` shows them, Ctrl-C stops them, `tradestack kill on --reason ...` blocks entries")

        def on_signal(signum: int, _frame: Any) -> None:
            self.stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        try:
            self.supervise()
        finally:
            self.shutdown()
        return 0

    def supervise(self) -> None:
        while not self.stopping:
            now = time.monotonic()
            for child in self.children:
                if child.proc is not None and child.proc.poll() is not None:
                    delay = child.backoff.next_delay()
                    say(f"{child.name} exited with code {child.proc.returncode}; restarting in {delay:.1f} s")
                    child.proc = None
                    child.restart_at = now + delay
                    child.restarts += 1
                elif child.proc is None and now >= child.restart_at:
                    self.spawn(child)
            if self.sandbox is not None and self.sandbox.poll() is not None:
                say(f"the sandbox exchange exited (code {self.sandbox.returncode}); stopping the stack")
                return
            time.sleep(0.2)  # supervision tick

    def shutdown(self) -> None:
        say("stopping")
        live = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 6
        for proc in live:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"pid {proc.pid} did not stop within 6 s; killing it")
                proc.kill()
        if self.sandbox is not None and self.sandbox.poll() is None:
            self.sandbox.send_signal(signal.SIGTERM)
            try:
                self.sandbox.wait(6)
            except subprocess.TimeoutExpired:
                self.sandbox.kill()
        if self.redis is not None:
            self.redis.stop()
        stack_file(self.data_dir).unlink(missing_ok=True)
        say("stopped")


def _forward(pipe: Any) -> None:
    import threading

    def pump() -> None:
        for line in iter(pipe.readline, b""):
            sys.stdout.buffer.write(line)
            sys.stdout.flush()

    threading.Thread(target=pump, name="sandbox-log", daemon=True).start()


# -- status -----------------------------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def collect_status(client: redis.Redis, now_ms: int) -> dict[str, Any]:
    services = {}
    for name, _ in PROCESSES:
        raw = client.get(streams.heartbeat(name))
        if raw is None:
            services[name] = {"alive": False}
            continue
        beat = orjson.loads(raw)
        services[name] = {"alive": beat.get("state") not in ("stopped", "faulted"), "state": beat.get("state"),
                          "age_s": round((now_ms - beat.get("ts", now_ms)) / 1000, 1), "mode": beat.get("mode"),
                          "consumer": beat.get("consumer"), "metrics_port": beat.get("metrics_port")}
    stream_info = {}
    for name in STREAMS_SHOWN:
        length = client.xlen(name)
        groups = []
        if length or client.exists(name):
            for g in client.xinfo_groups(name):
                groups.append({"group": g["name"].decode(), "pending": g["pending"], "lag": g.get("lag")})
        dlq_len = client.xlen(streams.dlq(name))
        stream_info[name] = {"length": length, "groups": groups, "dlq": dlq_len}
    kill = client.get(streams.KILL) == b"1"
    reason = client.get(streams.KILL_REASON)
    pnl = {_text(k): _text(v) for k, v in client.hgetall(streams.PNL).items()}
    positions = {_text(k): orjson.loads(v) for k, v in client.hgetall(streams.POSITIONS).items()}
    return {"services": services, "streams": stream_info, "kill_switch": kill,
            "kill_reason": orjson.loads(reason) if reason else None, "pnl": pnl, "positions": positions}


def print_status(status: dict[str, Any], mode: str) -> None:
    kill = "ON" if status["kill_switch"] else "off"
    reason = status["kill_reason"]
    why = f" ({reason.get('reason')} by {reason.get('by')})" if reason and status["kill_switch"] else ""
    # The mode the running stack trades in (the executor's, else any live service's), not this shell's.
    alive = {n: v for n, v in status["services"].items() if v.get("alive")}
    running = alive.get("trader_executor", next(iter(alive.values()), None))
    shown = running["mode"] if running else f"{mode} (nothing running)"
    print(f"mode: {shown}   kill switch: {kill}{why}")
    print("\nservices")
    for name, s in status["services"].items():
        if not s["alive"]:
            print(f"  {name:<26} {'down' if 'state' not in s else s['state']}")
        else:
            print(f"  {name:<26} {s['state']:<9} beat {s['age_s']:>5} s ago  mode {s['mode']:<7} "
                  f"metrics :{s['metrics_port']}  {s['consumer']}")
    print("\nstreams")
    for name, s in status["streams"].items():
        groups = ", ".join(f"{g['group']} pending {g['pending']} lag {g['lag'] if g['lag'] is not None else '?'}"
                           for g in s["groups"]) or "no consumer group"
        dlq = f"  DLQ {s['dlq']}" if s["dlq"] else ""
        print(f"  {name:<26} {s['length']:>9}  {groups}{dlq}")
    if status.get("positions"):
        print("\npositions")
        for market, p in sorted(status["positions"].items()):
            print(f"  {market:<12} size {p.get('size'):<14} avg cost {p.get('avg_cost'):<14} mark {p.get('mark')}  "
                  f"unrealized {p.get('unrealized')}  realized {p.get('realized')}")
    if status["pnl"]:
        print("\npnl")
        for key, value in sorted(status["pnl"].items()):
            print(f"  {key:<26} {value}")


# -- kill -------------------------------------------------------------------------------


def set_kill(client: redis.Redis, on: bool, reason: str, now_ms: int) -> None:
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    record = orjson.dumps({"on": on, "reason": reason, "by": who, "ts": now_ms})
    event = TradingEvent(id=new_id(), ts=now_ms, src="cli", trace=Trace(id="cli", ts=now_ms), kind="kill_switch",
                         severity="critical" if on else "warning",
                         message=f"kill switch {'ON' if on else 'off'}: {reason}",
                         details={"by": who, "reason": reason, "on": str(on).lower()})
    pipe = client.pipeline(transaction=True)
    pipe.set(streams.KILL, "1" if on else "0")
    pipe.set(streams.KILL_REASON, record)
    fields: dict[Any, Any] = encode(event)  # xadd's parameter type is an invariant dict of its own key types
    pipe.xadd(streams.TRADING_EVENTS, fields)
    pipe.execute()


# -- entry point ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tradestack", description="Run and watch the tradestack processes.")
    parser.add_argument("--data-dir", default="./data", help="embedded Redis, sandbox state, Parquet (default ./data)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the whole stack in the foreground")
    up.add_argument("--no-sandbox", action="store_true", help="do not start the sandbox exchange")
    up.add_argument("--embedded-redis", action="store_true", help="start our own Redis even if one is on :6379")
    up.add_argument("--sandbox-port", type=int, default=0)
    up.add_argument("--only", type=lambda s: s.split(","), default=None, help="start only these processes")
    up.add_argument("--mode", choices=["paper", "sandbox"], default=None,
                    help="paper (the default, DRY_RUN): fills simulated; sandbox: real orders, stops and fills "
                         "through Bitvavo's API on the sandbox exchange this command starts (its own key)")
    st = sub.add_parser("status", help="services alive, streams, lag, kill switch, mode, PnL")
    st.add_argument("--json", action="store_true")
    kill = sub.add_parser("kill", help="set or clear the kill switch (trading:kill)")
    kill.add_argument("state", choices=["on", "off"])
    kill.add_argument("--reason", required=True, help="who/why, recorded in trading:kill:reason")
    args = parser.parse_args(argv)

    settings = load_settings_or_exit(CommonSettings)
    if args.command == "up":
        if args.only:
            unknown = set(args.only) - {n for n, _ in PROCESSES}
            if unknown:
                parser.error(f"--only: unknown process(es) {', '.join(sorted(unknown))}")
        if args.mode == "sandbox" and (args.no_sandbox or settings.bitvavo_api_key is not None):
            parser.error("--mode sandbox runs against the sandbox this command starts: drop --no-sandbox and "
                         "BITVAVO_API_KEY (a configured key means a real exchange)")
        return Stack(args, settings).run()

    url = resolve_redis_url(settings, Path(args.data_dir))
    client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        say(f"cannot reach Redis at {url}: {exc}")
        return 1
    now_ms = int(time.time() * 1000)
    if args.command == "status":
        status = collect_status(client, now_ms)
        if args.json:
            print(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode())
        else:
            print_status(status, settings.mode)
        return 0
    set_kill(client, args.state == "on", args.reason, now_ms)
    say(f"kill switch {'ON: new entries are blocked' if args.state == 'on' else 'off'} ({args.reason})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
