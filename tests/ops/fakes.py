"""A healthy stack without processes: heartbeats, leases, stream entries, and fake /metrics servers
on loopback whose ``*_kill_switch`` follows trading:kill (or never turns 1)."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import orjson
import redis

from tests.conftest import ROOT
from tradestack import streams
from tradestack.config import load_settings
from tradestack.ops.preflight import Preflight
from tradestack.ops.processes import NAMES, settings_class


class FakeMetrics:
    """/metrics answering ``<prefix>_kill_switch <value()>``."""

    def __init__(self, prefix: str, value: Callable[[], int]) -> None:
        body = lambda: f"# TYPE {prefix}_kill_switch gauge\n{prefix}_kill_switch {value()}.0\n".encode()  # noqa: E731

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server hook
                payload = body()
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def follows_key(client: redis.Redis) -> Callable[[], int]:
    return lambda: 1 if client.get(streams.KILL) == b"1" else 0


def beat(client: redis.Redis, name: str, port: int | None, state: str = "running", mode: str = "paper") -> None:
    client.set(streams.heartbeat(name), orjson.dumps({
        "service": name, "consumer": f"{socket.gethostname()}:4242", "state": state, "role": "active",
        "lease_token": None, "mode": mode, "dry_run": mode == "paper", "ts": int(time.time() * 1000),
        "metrics_port": port, "pid": 4242, "host": socket.gethostname()}), ex=15)


def decision(accepted: bool = True, mode: str = "paper", reasons: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "decision", "data": orjson.dumps({
        "id": "d1", "ts": 1, "src": "trading_core", "trace": {"id": "t", "ts": 1}, "v": 2, "market": "BTC-EUR",
        "side": "buy", "strategy": "momentum", "accepted": accepted, "reasons": reasons or [],
        "intent_id": "i1" if accepted else None, "mode": mode, **extra})}


def fill_stack(client: redis.Redis) -> None:
    """Everything a healthy stack leaves in Redis but heartbeats."""
    for stream in (streams.TICKER24H, streams.BOOK, streams.ORDERBOOK_UPDATE, streams.candles("1m")):
        client.xadd(stream, {"type": "x", "data": "{}"})
    client.xadd(streams.SIGNALS_BASELINE, {"type": "signal", "data": orjson.dumps(
        {"market": "BTC-EUR", "side": "buy", "strategy": "momentum"})})
    client.xadd(streams.ORDERS_SIGNALS, decision())
    client.set("lease:trader_executor", "1:host:1", px=60_000)
    client.set("lease:trader_pnl_orchestrator", "1:host:2", px=60_000)
    client.hset(streams.PNL, mapping={"equity": "1000", "drawdown_pct": "0"})


class HealthyStack:
    """Heartbeats of every process pointing at fake /metrics servers that follow trading:kill."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.servers: dict[str, FakeMetrics] = {}
        fill_stack(client)
        for name in NAMES:
            self.servers[name] = FakeMetrics(f"fake_{name}", follows_key(client))
            beat(client, name, self.servers[name].port)

    def close(self) -> None:
        for server in self.servers.values():
            server.close()


def secrets_file(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "secrets.env"
    path.write_text("BITVAVO_API_KEY=\n")
    path.chmod(mode)
    return path


def context(client: redis.Redis, tmp_path: Path, **options: Any) -> Preflight:
    """A preflight on ``client`` with settings pointing into ``tmp_path`` (secrets file 600, Parquet
    directory, go-live record), short waits, and every process's settings."""
    overrides = {"secrets_file": str(options.pop("secrets", None) or secrets_file(tmp_path)),
                 "parquet_dir": str(tmp_path), "golive_record": str(tmp_path / "golive" / "golive.json"),
                 **options.pop("overrides", {})}
    loaded = {name: load_settings(settings_class(name), **overrides) for name in NAMES}
    defaults: dict[str, Any] = dict(root=ROOT, moment_s=0.05, kill_give_up_s=0.3, min_free_gb=0.0)
    defaults.update(options)
    return Preflight(client=client, settings=loaded["trader_executor"], service_settings=loaded, **defaults)
