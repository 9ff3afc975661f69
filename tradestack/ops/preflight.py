"""``tradestack preflight``: the go-live checklist, one function per check.

Each check takes the ``Preflight`` context and returns its ``Result`` rows: pass, warn (worth a look,
does not block), info (what live would still need while not aiming at live), or fail (blocks
go-live), each failure with its fix. Every row belongs to a row of the operators' go/no-go table
(``ROWS``). The preflight aims at the mode the settings say (``DRY_RUN``, ``BITVAVO_REST_URL``):
aiming at live, the live gates block; otherwise they are shown as information.

The settings are read from this process's environment and ``.env``, as each service reads them:
run the preflight with the services' environment (under systemd, their ``EnvironmentFile``s).

Checks, in order (``CHECKS``):

- ``compile``: the runbook's compile check (``python -m compileall`` of the service packages).
- ``config``: every process's settings load; the trading core's guard chain builds.
- ``redis``, ``redis_memory``, ``redis_eviction``, ``redis_aof``: reachable; ``used_memory`` under
  70% of ``maxmemory`` (of the machine's RAM when unset); ``maxmemory-policy noeviction``;
  ``appendonly yes``. From ``INFO`` (the ``operator`` ACL user may run it; CONFIG it may not).
- ``service:<name>``: every process of the stack: a fresh heartbeat in a good state, and its
  ``/metrics`` answering on the heartbeat's port.
- ``executor_pnl``: the executor holds its lease, the PnL orchestrator holds its lease and has
  written ``trading:pnl``.
- ``ingest``: the market-data streams grow (last entry id moved between two readings taken a moment
  apart, or the last entry younger than ``INGEST_MAX_AGE_S``).
- ``signals``: a recent entry in the signal stream (else the signal engine's metrics show it reads
  candles: a warning, strategies can be quiet).
- ``dry_run``: decisions in ``orders:signals`` made in paper mode.
- ``dlq``: dead letters: a non-empty DLQ warns, one growing during the preflight blocks.
- ``parquet_dir``: ``PARQUET_DIR`` writable, with free space.
- ``secrets_file``: ``SECRETS_FILE`` mode 600, owned by the user running the preflight.
- ``dashboards``: the Grafana dashboards in ``deploy/grafana/dashboards`` are valid JSON.
- ``live_gates``: the executor's own gates (``resolve_mode``), evaluated as if aiming at live.
- ``approval``: the go-live record (``tradestack golive``).
- ``kill_switch``: sets ``trading:kill=1`` and watches every running service's ``*_kill_switch``
  metric turn 1 within 100 ms, then restores the previous value and reason.
- ``live_switch``: ``DRY_RUN=false`` with the kill switch off (aiming at live).
"""

from __future__ import annotations

import getpass
import http.client
import importlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import orjson
import redis

from tradestack import streams
from tradestack.config import BITVAVO_REST_URL
from tradestack.errors import ConfigError
from tradestack.ops.processes import CANDLE_STREAMS, KNOWN_STREAMS, NAMES, UNITS, command, settings_class
from tradestack.ops.status import entry_ms, message_data, text
from tradestack.service import _redacted

Status = Literal["pass", "warn", "info", "fail"]

# The operators' go/no-go table, in its order.
INFRA = "infrastructure"
INGEST = "ingest up to date"
SIGNALS = "signals"
DRY_RUN = "dry run validated"
KILL = "kill switch tested"
EXEC_PNL = "executor and PnL running"
DASHBOARDS = "dashboards"
APPROVAL = "team approval"
LIVE = "DRY_RUN=false, switch off"
ROWS = [INFRA, INGEST, SIGNALS, DRY_RUN, KILL, EXEC_PNL, DASHBOARDS, APPROVAL, LIVE]

COMPILE_DIRS = ["services/trading_core/trading_core", "services/trader_signal_engine/app",
                "services/trader_executor/app", "services/trader_pnl_orchestrator/app",
                "services/trader_universe_selector/app"]
MEMORY_LIMIT = 0.70  # of maxmemory, or of the RAM when maxmemory is unset
INGEST_MAX_AGE_S = 60.0  # a market-data stream whose last entry is older, and that did not grow, is stale
SIGNAL_MAX_AGE_S = 86_400.0  # "recent" signal
DECISION_SAMPLE = 200  # newest and oldest decisions looked at for the dry-run check
KILL_LIMIT_MS = 100.0  # DESIGN §3: setting the switch takes effect within 100 ms
KILL_METRIC = re.compile(rb"^([A-Za-z_:][A-Za-z0-9_:]*)_kill_switch ([0-9.eE+-]+)\s*$", re.M)
RUNNING_STATES = ("running", "degraded", "starting", "stopping")


@dataclass(frozen=True)
class Result:
    name: str  # stable id: "redis_memory", "service:trader_executor"
    row: str  # the go/no-go row it belongs to (ROWS)
    status: Status
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Reading:
    """A stream's length and last entry id at one moment."""

    length: int
    last_id: str | None


def scrape(host: str, port: int, timeout_s: float) -> bytes:
    """GET http://host:port/metrics (no proxy: http.client ignores http_proxy)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise OSError(f"HTTP {response.status}")
        return body
    finally:
        conn.close()


def find_root() -> Path:
    """The source tree: the working directory when it holds the services (a checkout), else where
    the installed packages are."""
    import services

    candidates = [Path.cwd(), Path(services.__file__).resolve().parent.parent]
    for candidate in candidates:
        if (candidate / COMPILE_DIRS[0]).is_dir():
            return candidate
    return candidates[-1]


@dataclass
class Preflight:
    """What the checks share: Redis, settings, where the code is, the limits. ``settings`` is the
    executor's settings (every common setting plus the live gates'); ``service_settings`` each
    process's, None where they failed to load (``config_errors``)."""

    client: redis.Redis
    settings: Any
    service_settings: dict[str, Any] = field(default_factory=dict)
    config_errors: dict[str, str] = field(default_factory=dict)
    root: Path = field(default_factory=find_root)
    redis_url: str = ""  # the URL the client was made from (shown; the settings' when empty)
    expect_record: bool = False  # golive: the go-live record is about to be written, not a gate yet
    moment_s: float = 1.0  # the least time between the two readings of ingest streams and DLQs
    kill_limit_ms: float = KILL_LIMIT_MS
    kill_give_up_s: float = 1.0  # how long to keep watching a service that has not shown the switch yet
    min_free_gb: float = 5.0
    scrape_timeout_s: float = 2.0
    scraper: Callable[[str, int, float], bytes] = scrape
    clock: Callable[[], float] = time.time
    _redis_ok: bool | None = None
    _redis_error: str = ""
    _beats: dict[str, dict[str, Any] | None] | None = None
    _metrics: dict[str, bytes | str] = field(default_factory=dict)  # name → body, or the error
    _baseline: dict[str, Reading] | None = None
    _baseline_at: float = 0.0

    @property
    def aim(self) -> str:
        """The mode the settings make: paper, sandbox or live."""
        return str(self.settings.mode)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def redis_ok(self) -> bool:
        if self._redis_ok is None:
            try:
                self._redis_ok = bool(self.client.ping())
            except (redis.RedisError, OSError) as exc:
                self._redis_ok, self._redis_error = False, f"{type(exc).__name__}: {exc}"
        return self._redis_ok

    def heartbeats(self) -> dict[str, dict[str, Any] | None]:
        if self._beats is None:
            self._beats = {}
            for name in NAMES:
                raw = self.client.get(streams.heartbeat(name))
                try:
                    self._beats[name] = orjson.loads(raw) if raw is not None else None
                except orjson.JSONDecodeError:
                    self._beats[name] = {"state": "unreadable"}
        return self._beats

    def metrics_host(self, beat: dict[str, Any]) -> str | None:
        """Where this host reaches a service's /metrics; None when it runs on another host."""
        host = beat.get("host")
        if host and host != socket.gethostname():
            return None
        addr = str(self.settings.metrics_addr)
        return "127.0.0.1" if addr in ("0.0.0.0", "", "::") else addr

    def metrics(self, name: str) -> bytes | str:
        """A service's /metrics body (cached), or why it could not be read."""
        if name not in self._metrics:
            beat = self.heartbeats().get(name) or {}
            port, host = beat.get("metrics_port"), self.metrics_host(beat)
            if not port:
                self._metrics[name] = "its heartbeat names no metrics port"
            elif host is None:
                self._metrics[name] = f"it runs on {beat.get('host')}: not scraped from here"
            else:
                try:
                    self._metrics[name] = self.scraper(host, int(port), self.scrape_timeout_s)
                except (OSError, http.client.HTTPException) as exc:
                    self._metrics[name] = f"/metrics on {host}:{port} does not answer ({type(exc).__name__}: {exc})"
        return self._metrics[name]

    def setting(self, service: str, name: str, default: Any) -> Any:
        s = self.service_settings.get(service)
        return getattr(s, name, default) if s is not None else default

    # -- the two readings of streams --------------------------------------------------------

    def watched_streams(self) -> list[str]:
        return [streams.TICKER24H, streams.BOOK, streams.ORDERBOOK_UPDATE, *CANDLE_STREAMS,
                *[streams.dlq(s) for s in KNOWN_STREAMS]]

    def read_streams(self) -> dict[str, Reading]:
        pipe = self.client.pipeline(transaction=False)
        names = self.watched_streams()
        for name in names:
            pipe.xlen(name)
            pipe.xrevrange(name, count=1)
        replies = pipe.execute()
        out = {}
        for i, name in enumerate(names):
            last = replies[2 * i + 1]
            out[name] = Reading(int(replies[2 * i]), text(last[0][0]) if last else None)
        return out

    def take_baseline(self) -> None:
        if self.redis_ok():
            self._baseline, self._baseline_at = self.read_streams(), time.monotonic()

    def second_reading(self) -> tuple[dict[str, Reading], dict[str, Reading], float]:
        """(first, second, seconds between): the second at least ``moment_s`` after the first."""
        if self._baseline is None:
            self.take_baseline()
        assert self._baseline is not None
        wait = self.moment_s - (time.monotonic() - self._baseline_at)
        if wait > 0:
            time.sleep(wait)  # the moment between two readings of growing streams
        second = self.read_streams()
        return self._baseline, second, time.monotonic() - self._baseline_at


# -- checks -----------------------------------------------------------------------------------


def _unreachable(name: str, row: str, ctx: Preflight) -> list[Result]:
    return [Result(name, row, "fail", "not checked: Redis is unreachable (see the redis row)")]


def check_compile(ctx: Preflight) -> list[Result]:
    dirs = [d for d in COMPILE_DIRS if (ctx.root / d).is_dir()]
    missing = sorted(set(COMPILE_DIRS) - set(dirs))
    if missing:
        return [Result("compile", INFRA, "fail", f"missing under {ctx.root}: {', '.join(missing)}",
                       "run the preflight from the checkout (the directory holding services/)")]
    with tempfile.TemporaryDirectory(prefix="tradestack-compile-") as cache:
        # Bytecode goes to a scratch directory: the check needs no write access to the code.
        env = dict(os.environ, PYTHONPYCACHEPREFIX=cache)
        proc = subprocess.run([sys.executable, "-m", "compileall", "-q", *dirs], cwd=ctx.root, env=env,
                              capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
        shown = " | ".join(lines[:4]) or f"exit code {proc.returncode}"
        return [Result("compile", INFRA, "fail", f"python -m compileall failed: {shown}",
                       "fix the file it names (see `python -m compileall " + " ".join(COMPILE_DIRS) + "`)")]
    return [Result("compile", INFRA, "pass", f"{len(dirs)} service packages compile")]


def check_config(ctx: Preflight) -> list[Result]:
    if ctx.config_errors:
        shown = "; ".join(f"{name}: {err}" for name, err in sorted(ctx.config_errors.items()))
        return [Result("config", INFRA, "fail", shown, "correct the named variable in .env or the environment")]
    core = ctx.service_settings.get("trading_core")
    if core is not None:
        try:
            importlib.import_module("services.trading_core.trading_core.service").build_config(core)
        except ConfigError as exc:
            return [Result("config", INFRA, "fail", f"trading_core: {exc}", "correct CORE_GUARDS / the exit settings")]
    return [Result("config", INFRA, "pass", f"settings of {len(ctx.service_settings)} processes load")]


def check_redis(ctx: Preflight) -> list[Result]:
    url = _redacted(ctx.redis_url or ctx.settings.redis_url)
    if not ctx.redis_ok():
        return [Result("redis", INFRA, "fail", f"cannot reach Redis at {url}: {ctx._redis_error}",
                       "start Redis (systemctl start redis-server) or set REDIS_URL")]
    info = ctx.client.info("server")
    return [Result("redis", INFRA, "pass", f"Redis {info.get('redis_version', '?')} at {url} answers")]


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f} GB"


def check_redis_memory(ctx: Preflight) -> list[Result]:
    if not ctx.redis_ok():
        return _unreachable("redis_memory", INFRA, ctx)
    mem = ctx.client.info("memory")
    used, limit = int(mem.get("used_memory", 0)), int(mem.get("maxmemory", 0))
    ram = int(mem.get("total_system_memory", 0))
    if limit:
        ratio = used / limit
        detail = f"used {_gb(used)} of maxmemory {_gb(limit)} ({ratio:.0%})"
        fix = ("raise maxmemory (deploy/redis/redis.conf, CONFIG SET maxmemory) or lower STREAM_MAXLEN / "
               "DEDUPE_TTL_S; the limit is 70%")
    elif ram:
        ratio = used / ram
        detail = f"used {_gb(used)} of {_gb(ram)} RAM ({ratio:.0%}); maxmemory is not set"
        fix = "free memory on the host, or lower STREAM_MAXLEN / DEDUPE_TTL_S; set maxmemory (deploy/redis/redis.conf)"
    else:
        return [Result("redis_memory", INFRA, "warn", f"used {_gb(used)}; neither maxmemory nor the RAM is known",
                       "set maxmemory (deploy/redis/redis.conf)")]
    if ratio >= MEMORY_LIMIT:
        return [Result("redis_memory", INFRA, "fail", detail, fix)]
    if not limit:
        return [Result("redis_memory", INFRA, "warn", detail,
                       "set maxmemory (deploy/redis/redis.conf: maxmemory 2gb) so Redis refuses writes before the "
                       "OOM killer stops it")]
    return [Result("redis_memory", INFRA, "pass", detail)]


def check_redis_eviction(ctx: Preflight) -> list[Result]:
    if not ctx.redis_ok():
        return _unreachable("redis_eviction", INFRA, ctx)
    policy = str(ctx.client.info("memory").get("maxmemory_policy", "?"))
    if policy != "noeviction":
        return [Result("redis_eviction", INFRA, "fail",
                       f"maxmemory-policy is {policy}: Redis may silently drop stream entries, dedupe keys, the kill switch",
                       "redis-cli CONFIG SET maxmemory-policy noeviction, and `maxmemory-policy noeviction` in "
                       "redis.conf (deploy/redis/redis.conf)")]
    return [Result("redis_eviction", INFRA, "pass", "maxmemory-policy noeviction")]


def check_redis_aof(ctx: Preflight) -> list[Result]:
    if not ctx.redis_ok():
        return _unreachable("redis_aof", INFRA, ctx)
    persistence = ctx.client.info("persistence")
    if int(persistence.get("aof_enabled", 0)) != 1:
        return [Result("redis_aof", INFRA, "fail", "appendonly is off: a Redis restart loses every acked entry "
                       "since the last snapshot",
                       "redis-cli CONFIG SET appendonly yes, and `appendonly yes` + `appendfsync everysec` in "
                       "redis.conf (deploy/redis/redis.conf)")]
    status = persistence.get("aof_last_write_status", "ok")
    if status != "ok":
        return [Result("redis_aof", INFRA, "fail", f"AOF on, but its last write failed ({status})",
                       "check Redis's disk and log (journalctl -u redis-server)")]
    return [Result("redis_aof", INFRA, "pass", "appendonly yes")]


def service_row(name: str) -> str:
    if name.startswith("ingest_"):
        return INGEST
    if name in ("trader_universe_selector", "trader_signal_engine"):
        return SIGNALS
    if name == "trading_core":
        return DRY_RUN
    return EXEC_PNL


def check_service(ctx: Preflight, name: str) -> Result:
    row, key = service_row(name), f"service:{name}"
    start = f"start it: systemctl start {UNITS[name]} (or `{command(name)}`, or `tradestack up`)"
    logs = f"see its log: journalctl -u {UNITS[name]}"
    beat = ctx.heartbeats().get(name)
    if beat is None:
        return Result(key, row, "fail", f"down: no heartbeat ({streams.heartbeat(name)})", start)
    state = beat.get("state")
    age_s = (ctx.now_ms() - int(beat.get("ts", 0))) / 1000
    if state in ("stopped", "faulted", "unreadable"):
        return Result(key, row, "fail", f"{state} ({age_s:.1f} s ago)", f"{logs}; then {start}")
    if state != "running":
        why = {"degraded": "it cannot reach Redis or the exchange", "starting": "still starting",
               "stopping": "stopping"}.get(str(state), str(state))
        return Result(key, row, "fail", f"{state}: {why}", logs)
    if age_s > float(ctx.settings.heartbeat_ttl_s):
        return Result(key, row, "fail", f"heartbeat {age_s:.0f} s old (hung, or clocks differ)", logs)
    body = ctx.metrics(name)
    where = f"{beat.get('host', '?')}:{beat.get('pid', '?')}"
    if isinstance(body, str):
        if body.startswith("it runs on"):
            return Result(key, row, "warn", f"running ({where}); {body}", "run the preflight on that host too")
        return Result(key, row, "fail", f"running ({where}), but {body}",
                      "check METRICS_ADDR / METRICS_PORT of the process, and that nothing else holds the port")
    role = "" if beat.get("role", "active") == "active" else f", {beat.get('role')}"
    return Result(key, row, "pass", f"running{role}, beat {age_s:.1f} s ago, {beat.get('mode')}, "
                  f"/metrics :{beat.get('metrics_port')} ({where})")


def check_services(ctx: Preflight) -> list[Result]:
    if not ctx.redis_ok():
        return _unreachable("services", INFRA, ctx)
    return [check_service(ctx, name) for name in NAMES]


def check_executor_pnl(ctx: Preflight) -> list[Result]:
    if not ctx.redis_ok():
        return _unreachable("executor_pnl", EXEC_PNL, ctx)
    problems, parts = [], []
    for name in ("trader_executor", "trader_pnl_orchestrator"):
        holder = ctx.client.get(f"lease:{name}")
        if holder is None:
            problems.append(f"nobody holds lease:{name}")
        else:
            parts.append(f"{name} active ({text(holder).partition(':')[2]})")
    pnl = {text(k): text(v) for k, v in ctx.client.hgetall(streams.PNL).items()}
    if "equity" not in pnl:
        problems.append("trading:pnl has no equity (the PnL orchestrator has not written its totals)")
    else:
        parts.append(f"equity {pnl['equity']} EUR, drawdown {pnl.get('drawdown_pct', '?')}%")
    if problems:
        return [Result("executor_pnl", EXEC_PNL, "fail", "; ".join(problems),
                       "start the executor and the PnL orchestrator (systemctl start tradestack-executor "
                       "tradestack-pnl-orchestrator); a standby takes the lease within LEASE_TTL_MS")]
    return [Result("executor_pnl", EXEC_PNL, "pass", "; ".join(parts))]


def _age(ctx: Preflight, reading: Reading) -> float | None:
    return None if reading.last_id is None else (ctx.now_ms() - entry_ms(reading.last_id)) / 1000


def check_ingest(ctx: Preflight) -> list[Result]:
    if not ctx.redis_ok():
        return _unreachable("ingest", INGEST, ctx)
    first, second, seconds = ctx.second_reading()

    def fresh(name: str) -> tuple[bool, str]:
        a, b = first[name], second[name]
        age = _age(ctx, b)
        if b.last_id is None:
            return False, f"{name} empty"
        grew = b.last_id != a.last_id
        added = f"+{b.length - a.length}" if b.length >= a.length else "trimmed"
        desc = f"{name} {added} in {seconds:.1f} s, last {age:.1f} s ago" if grew else f"{name} last {age:.0f} s ago"
        return grew or (age is not None and age <= INGEST_MAX_AGE_S), desc

    parts, stale = [], []
    for name in (streams.TICKER24H, streams.BOOK, streams.ORDERBOOK_UPDATE):
        ok, desc = fresh(name)
        parts.append(desc)
        if not ok:
            stale.append(name)
    candles = [(name, *fresh(name)) for name in CANDLE_STREAMS if second[name].last_id is not None]
    if any(ok for _, ok, _ in candles):
        parts.extend(desc for _, ok, desc in candles if ok)
    else:
        stale.append("bitvavo:candles:*")
        parts.append(" ".join(desc for _, _, desc in candles) or "no candle stream")
    if stale:
        return [Result("ingest", INGEST, "fail", f"stale or empty: {', '.join(stale)} ({'; '.join(parts)})",
                       "check the ingest processes and the exchange connection (journalctl -u "
                       "'tradestack-ingest@*'); INGEST_MARKETS must name trading markets")]
    return [Result("ingest", INGEST, "pass", "; ".join(parts))]


def _metric_sum(body: bytes, metric: str, **labels: str) -> float:
    total = 0.0
    for line in body.decode(errors="replace").splitlines():
        if not line.startswith(metric + "{") and not line.startswith(metric + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()) or not labels:
            try:
                total += float(line.rsplit(" ", 1)[1])
            except ValueError:
                continue
    return total


def check_signals(ctx: Preflight) -> list[Result]:
    if not ctx.redis_ok():
        return _unreachable("signals", SIGNALS, ctx)
    stream = str(ctx.setting("trader_signal_engine", "signal_stream", streams.SIGNALS_BASELINE))
    newest = ctx.client.xrevrange(stream, count=1)
    total = ctx.client.xlen(stream)
    if newest:
        age = (ctx.now_ms() - entry_ms(newest[0][0])) / 1000
        if age <= SIGNAL_MAX_AGE_S:
            data = message_data(newest[0][1]) or {}
            return [Result("signals", SIGNALS, "pass", f"{total} in {stream}; newest {age:.0f} s ago "
                           f"({data.get('market')} {data.get('side')} {data.get('strategy')})")]
    body = ctx.metrics("trader_signal_engine")
    candles = _metric_sum(body, "trader_signal_engine_messages_total", outcome="ok") if isinstance(body, bytes) else 0
    last = f"newest {(ctx.now_ms() - entry_ms(newest[0][0])) / 3600000:.0f} h ago" if newest else "none yet"
    if candles > 0:
        return [Result("signals", SIGNALS, "warn", f"no signal in the last {SIGNAL_MAX_AGE_S / 3600:.0f} h in "
                       f"{stream} ({last}), but the signal engine handled {candles:.0f} messages: strategies quiet",
                       "fine if the market is quiet; else check SIGNAL_INTERVALS and the gates "
                       "(SIGNAL_MAX_SPREAD_BPS, SIGNAL_MIN_VOL, SIGNAL_MAX_VOL)")]
    return [Result("signals", SIGNALS, "fail", f"no recent signal in {stream} ({last}) and the signal engine "
                   "handles nothing", "start the signal engine and the candle ingest; SIGNAL_INTERVALS must be among "
                   "CANDLE_INTERVALS (journalctl -u tradestack-signal-engine)")]


def check_dry_run(ctx: Preflight) -> list[Result]:
    if not ctx.redis_ok():
        return _unreachable("dry_run", DRY_RUN, ctx)
    total = ctx.client.xlen(streams.ORDERS_SIGNALS)
    fix = ("run the stack in paper mode (DRY_RUN=true) until the trading core decides on signals: "
           "`tradestack up --for 30m`, or `python -m services.trading_core --once` over pending signals")
    if not total:
        return [Result("dry_run", DRY_RUN, "fail", "no decision in orders:signals yet", fix)]
    newest: list[Any] = ctx.client.xrevrange(streams.ORDERS_SIGNALS, count=DECISION_SAMPLE) or []
    oldest: list[Any] = ctx.client.xrange(streams.ORDERS_SIGNALS, count=DECISION_SAMPLE) or []
    sample = {text(i): f for i, f in [*newest, *oldest]}
    decisions = [d for d in (message_data(f) for f in sample.values()) if d is not None]
    paper = [d for d in decisions if d.get("mode") == "paper"]
    if not paper:
        return [Result("dry_run", DRY_RUN, "fail", f"{total} decisions, none of those looked at in paper mode", fix)]
    accepted = sum(1 for d in paper if d.get("accepted"))
    reports = ctx.client.xlen(streams.ORDERS_EXECUTED)
    return [Result("dry_run", DRY_RUN, "pass", f"{total} decisions ({accepted} of {len(paper)} paper ones looked at "
                   f"accepted); {ctx.client.xlen(streams.ORDERS_SHADOW)} intents, {reports} execution reports")]


def check_dlq(ctx: Preflight) -> list[Result]:
    if not ctx.redis_ok():
        return _unreachable("dlq", INFRA, ctx)
    first, second, seconds = ctx.second_reading()
    dlqs = [streams.dlq(s) for s in KNOWN_STREAMS]
    grown = [f"{n} {first[n].length} → {second[n].length}" for n in dlqs if second[n].last_id != first[n].last_id]
    held = [f"{n} {second[n].length}" for n in dlqs if second[n].length]
    if grown:
        return [Result("dlq", INFRA, "fail", f"dead letters growing during the preflight: {', '.join(grown)}",
                       "a service is dead-lettering messages now: redis-cli XREVRANGE <stream>:dlq + - COUNT 5 shows "
                       "the error; fix its cause before going live")]
    if held:
        return [Result("dlq", INFRA, "warn", f"dead letters (not growing in {seconds:.1f} s): {', '.join(held)}",
                       "look at them: redis-cli XREVRANGE <stream>:dlq + - COUNT 5 (each holds the error)")]
    return [Result("dlq", INFRA, "pass", "no dead letters")]


def check_parquet_dir(ctx: Preflight) -> list[Result]:
    path = Path(ctx.settings.parquet_dir).expanduser()
    if not path.is_dir():
        return [Result("parquet_dir", INFRA, "fail", f"PARQUET_DIR {path} does not exist",
                       f"mkdir -p {path} (owned by the service user), or set PARQUET_DIR")]
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".preflight-", delete=True) as probe:
            probe.write(b"ok")
            probe.flush()
    except OSError as exc:
        return [Result("parquet_dir", INFRA, "fail", f"PARQUET_DIR {path} is not writable by {getpass.getuser()}: "
                       f"{exc.strerror or exc}", f"chown the directory to the service user (chown -R trader {path}) "
                       "and run the preflight as that user")]
    free = shutil.disk_usage(path).free
    if free < ctx.min_free_gb * 2**30:
        return [Result("parquet_dir", INFRA, "fail", f"PARQUET_DIR {path}: only {_gb(free)} free "
                       f"(at least {ctx.min_free_gb:g} GB wanted)", "free disk space, or set PARQUET_RETENTION_DAYS")]
    return [Result("parquet_dir", INFRA, "pass", f"PARQUET_DIR {path} writable, {_gb(free)} free")]


def check_secrets_file(ctx: Preflight) -> list[Result]:
    path = Path(getattr(ctx.settings, "secrets_file", ".env")).expanduser()
    try:
        st = path.stat()
    except OSError:
        status: Status = "fail" if ctx.aim == "live" else "warn"
        return [Result("secrets_file", INFRA, status, f"no secrets file at {path} (SECRETS_FILE)",
                       f"put BITVAVO_API_KEY and BITVAVO_API_SECRET in {path}, then chmod 600 {path}")]
    mode = stat.S_IMODE(st.st_mode)
    me = getpass.getuser()
    if mode & 0o077:
        return [Result("secrets_file", INFRA, "fail", f"{path} is mode {mode:o}: readable or writable by others",
                       f"chmod 600 {path}")]
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return [Result("secrets_file", INFRA, "fail", f"{path} is owned by uid {st.st_uid}, not by {me}",
                       f"chown {me} {path} (the user the executor runs as), or run the preflight as its owner")]
    return [Result("secrets_file", INFRA, "pass", f"{path} mode {mode:o}, owned by {me}")]


def check_dashboards(ctx: Preflight) -> list[Result]:
    folder = ctx.root / "deploy" / "grafana" / "dashboards"
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        return [Result("dashboards", DASHBOARDS, "fail", f"no dashboard JSON in {folder}",
                       "restore deploy/grafana/dashboards/ from git")]
    bad, titles = [], []
    for f in files:
        try:
            board = json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            bad.append(f"{f.name}: {exc}")
            continue
        if not isinstance(board, dict) or not isinstance(board.get("panels"), list) or not board.get("title"):
            bad.append(f"{f.name}: not a dashboard (no title or panels)")
        else:
            titles.append(f"{f.name} ({board['title']}, {len(board['panels'])} panels)")
    if bad:
        return [Result("dashboards", DASHBOARDS, "fail", "; ".join(bad),
                       "repair the file (git diff deploy/grafana/dashboards), then copy it to Grafana (deploy/README.md)")]
    return [Result("dashboards", DASHBOARDS, "pass", ", ".join(titles))]


def live_gates_missing(ctx: Preflight) -> list[str]:
    """What the executor's gates (``resolve_mode``) would refuse for live, with these settings; with
    ``expect_record`` the go-live record counts as present (golive is about to write it)."""
    from services.trader_executor.app.gates import resolve_mode

    update: dict[str, Any] = {"dry_run": False, "bitvavo_rest_url": BITVAVO_REST_URL}
    scratch = None
    if ctx.expect_record:
        scratch = tempfile.NamedTemporaryFile(prefix="golive-", suffix=".json", delete=False)
        scratch.write(orjson.dumps({"approved_by": ["a", "b"], "preflight_passed": True, "created_ms": ctx.now_ms()}))
        scratch.close()
        update["golive_record"] = scratch.name
    try:
        resolve_mode(ctx.settings.model_copy(update=update), ctx.now_ms())
        return []
    except ConfigError as exc:
        message = str(exc)
        return message.split("missing gates: ", 1)[1].split("; ") if "missing gates: " in message else [message]
    finally:
        if scratch is not None:
            os.unlink(scratch.name)


def check_live_gates(ctx: Preflight) -> list[Result]:
    missing = live_gates_missing(ctx)
    if not missing:
        record = "" if ctx.expect_record else ", go-live record"
        return [Result("live_gates", LIVE, "pass", "every live gate holds (ENABLE_LIVE_TRADING, LIVE_ALLOWED_MARKETS, "
                       f"API key and secret, BITVAVO_OPERATOR_ID, SECRETS_FILE, live limits{record})")]
    detail = f"missing for live: {'; '.join(missing)}"
    fix = "set them in .env (see .env.example, docs/executor.md)"
    if ctx.aim == "live":
        return [Result("live_gates", LIVE, "fail", detail, fix)]
    return [Result("live_gates", LIVE, "info", f"aiming at {ctx.aim}; {detail}", fix)]


def check_approval(ctx: Preflight) -> list[Result]:
    path = Path(getattr(ctx.settings, "golive_record", "./data/golive/golive.json"))
    if ctx.expect_record:
        return [Result("approval", APPROVAL, "info", f"tradestack golive writes {path} once this preflight passes")]
    try:
        record = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return [Result("approval", APPROVAL, "info", f"no go-live record at {path}",
                       "tradestack golive --approved-by NAME --approved-by NAME --risks TEXT")]
    age_h = (ctx.now_ms() - int(record.get("created_ms", 0))) / 3_600_000
    limit = float(getattr(ctx.settings, "golive_max_age_hours", 24.0))
    who = ", ".join(map(str, record.get("approved_by", [])))
    if age_h > limit:
        return [Result("approval", APPROVAL, "fail" if ctx.aim == "live" else "info",
                       f"go-live record by {who} is {age_h:.1f} h old (GOLIVE_MAX_AGE_HOURS={limit:g})",
                       "tradestack golive again (two approvers)")]
    return [Result("approval", APPROVAL, "pass", f"approved by {who}, {age_h:.1f} h ago ({path})")]


def _kill_value(body: bytes) -> tuple[str, float] | None:
    match = KILL_METRIC.search(body)
    return (match.group(1).decode(), float(match.group(2))) if match else None


def check_kill_switch(ctx: Preflight) -> list[Result]:
    """Set trading:kill=1 and time every running service's *_kill_switch metric turning 1; restore."""
    if not ctx.redis_ok():
        return _unreachable("kill_switch", KILL, ctx)
    fix_service = "the service does not poll trading:kill: see its log; KILL_POLL_MS must be <= 100"
    previous: bytes | None = ctx.client.get(streams.KILL)  # type: ignore[assignment]  # bytes: no decode_responses
    previous_reason: bytes | None = ctx.client.get(streams.KILL_REASON)  # type: ignore[assignment]
    if previous == b"1":
        return [Result("kill_switch", KILL, "fail", "the kill switch is already on: its effect cannot be timed",
                       "when it is safe to allow entries: tradestack kill off --reason '...'; then run the preflight "
                       "again")]
    targets: dict[str, str] = {}  # name → metric prefix
    problems: list[str] = []
    beats = ctx.heartbeats()
    for name, beat in beats.items():
        if beat is None or beat.get("state") not in RUNNING_STATES or ctx.metrics_host(beat) is None:
            continue
        if not beat.get("metrics_port"):
            problems.append(f"{name}: no metrics port")
            continue
        try:
            body = ctx.scraper(str(ctx.metrics_host(beat)), int(beat["metrics_port"]), ctx.scrape_timeout_s)
        except (OSError, http.client.HTTPException) as exc:
            problems.append(f"{name}: /metrics does not answer ({exc})")
            continue
        found = _kill_value(body)
        if found is None:
            problems.append(f"{name}: its /metrics has no *_kill_switch")
            continue
        if found[1] != 0:
            problems.append(f"{name}: shows the switch on while trading:kill is off (can it read Redis?)")
            continue
        targets[name] = found[0]
    if not targets and not problems:
        return [Result("kill_switch", KILL, "fail", "no running service to test the kill switch on",
                       "start the stack, then run the preflight again")]
    marker = orjson.dumps({"on": True, "reason": "preflight: kill switch test (restored at once)",
                           "by": f"{getpass.getuser()}@{socket.gethostname()}", "ts": ctx.now_ms(),
                           "test": os.urandom(8).hex()})
    seen: dict[str, float | None] = {}
    restored = ""
    start = time.monotonic()
    try:
        pipe = ctx.client.pipeline(transaction=True)
        pipe.set(streams.KILL, "1")
        pipe.set(streams.KILL_REASON, marker)
        pipe.execute()
        with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
            futures = {name: pool.submit(_watch_kill, ctx, beats[name] or {}, start) for name in targets}
            seen = {name: f.result() for name, f in futures.items()}
    finally:
        restored = restore_kill(ctx.client, marker, previous, previous_reason)
    slow = {n: ms for n, ms in seen.items() if ms is None or ms > ctx.kill_limit_ms}
    for name, ms in sorted(slow.items()):
        problems.append(f"{name}: " + (f"not seen within {ctx.kill_give_up_s:g} s" if ms is None
                                       else f"seen after {ms:.0f} ms (limit {ctx.kill_limit_ms:.0f})"))
    timing = ", ".join(f"{n} {ms:.0f} ms" for n, ms in sorted(seen.items()) if ms is not None)
    note = f"; {restored}" if restored else ""
    if problems:
        return [Result("kill_switch", KILL, "fail", "; ".join(problems) + (f" (seen: {timing})" if timing else "") + note,
                       fix_service)]
    worst = max(ms for ms in seen.values() if ms is not None)
    return [Result("kill_switch", KILL, "pass", f"{len(seen)} services showed it within {worst:.0f} ms "
                   f"({timing}); restored{note}")]


def _watch_kill(ctx: Preflight, beat: dict[str, Any], start: float) -> float | None:
    """Milliseconds from setting the switch until the end of the first scrape showing it on (an
    upper bound), or None when not seen within ``kill_give_up_s``."""
    host, port = str(ctx.metrics_host(beat)), int(beat["metrics_port"])
    while time.monotonic() - start < ctx.kill_give_up_s:
        try:
            body = ctx.scraper(host, port, ctx.scrape_timeout_s)
        except (OSError, http.client.HTTPException):
            body = b""
        found = _kill_value(body)
        if found is not None and found[1] == 1:
            return (time.monotonic() - start) * 1000
        time.sleep(0.005)  # the polling period: a scrape every 5 ms at most
    return None


def restore_kill(client: redis.Redis, marker: bytes, previous: bytes | None, previous_reason: bytes | None) -> str:
    """Put trading:kill and its reason back as they were, unless someone else set the switch during
    the test (then the reason is no longer ours, and their switch stays). Returns a note, '' when
    restored as it was."""

    def apply(pipe: Any) -> None:
        for key, value in ((streams.KILL, previous), (streams.KILL_REASON, previous_reason)):
            if value is None:
                pipe.delete(key)
            else:
                pipe.set(key, value)

    try:
        with client.pipeline(transaction=True) as pipe:
            pipe.watch(streams.KILL, streams.KILL_REASON)  # no change may slip in between the check and the write
            if pipe.get(streams.KILL_REASON) != marker:
                return "left on: someone else set the kill switch during the test"
            pipe.multi()
            apply(pipe)
            pipe.execute()
        return ""
    except redis.WatchError:
        return "left on: trading:kill changed during the test"
    except redis.exceptions.NoPermissionError:
        pass  # the operator ACL user has no WATCH: check, then write in one MULTI
    if client.get(streams.KILL_REASON) != marker:
        return "left on: someone else set the kill switch during the test"
    pipe = client.pipeline(transaction=True)
    apply(pipe)
    pipe.execute()
    return ""


def check_live_switch(ctx: Preflight) -> list[Result]:
    if not ctx.redis_ok():
        return _unreachable("live_switch", LIVE, ctx)
    kill_on = ctx.client.get(streams.KILL) == b"1"
    if ctx.aim != "live":
        detail = (f"aiming at {ctx.aim} (DRY_RUN={str(ctx.settings.dry_run).lower()}); going live ends with "
                  "DRY_RUN=false, every live gate, the executor restarted, and the kill switch off")
        if kill_on:
            return [Result("live_switch", LIVE, "warn", detail + "; the kill switch is ON now",
                           "tradestack kill off --reason '...' when entries may run")]
        return [Result("live_switch", LIVE, "info", detail)]
    if kill_on:
        return [Result("live_switch", LIVE, "fail", "DRY_RUN=false, but the kill switch is on",
                       "tradestack kill off --reason 'go live'")]
    executor = ctx.heartbeats().get("trader_executor") or {}
    if executor.get("mode") != "live" and not ctx.expect_record:
        return [Result("live_switch", LIVE, "fail", f"DRY_RUN=false here, but the running executor trades in "
                       f"{executor.get('mode', 'no mode (not running)')}",
                       "restart it with these settings: systemctl restart tradestack-executor")]
    return [Result("live_switch", LIVE, "pass", "DRY_RUN=false, kill switch off")]


Check = Callable[[Preflight], list[Result]]

# In this order: the two stream readings (ingest, DLQ) come last, a moment after the first.
CHECKS: list[tuple[str, Check]] = [
    ("compile", check_compile),
    ("config", check_config),
    ("redis", check_redis),
    ("redis_memory", check_redis_memory),
    ("redis_eviction", check_redis_eviction),
    ("redis_aof", check_redis_aof),
    ("services", check_services),
    ("executor_pnl", check_executor_pnl),
    ("signals", check_signals),
    ("dry_run", check_dry_run),
    ("parquet_dir", check_parquet_dir),
    ("secrets_file", check_secrets_file),
    ("dashboards", check_dashboards),
    ("live_gates", check_live_gates),
    ("approval", check_approval),
    ("kill_switch", check_kill_switch),
    ("live_switch", check_live_switch),
    ("ingest", check_ingest),
    ("dlq", check_dlq),
]


@dataclass
class Report:
    aim: str
    ts_ms: int
    results: list[Result]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[Result]:
        return [r for r in self.results if r.status == "fail"]

    def rows(self) -> dict[str, Status]:
        """Each go/no-go row's verdict: its worst result."""
        order: list[Status] = ["pass", "info", "warn", "fail"]
        verdict: dict[str, Status] = {}
        for r in self.results:
            current = verdict.get(r.row, "pass")
            verdict[r.row] = max(current, r.status, key=order.index)
        return {row: verdict[row] for row in ROWS if row in verdict}

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "aim": self.aim, "ts_ms": self.ts_ms, "rows": self.rows(),
                "failures": [r.name for r in self.failures], "checks": [r.to_json() for r in self.results]}


def run_preflight(ctx: Preflight, only: list[str] | None = None) -> Report:
    """Run the checks (``only``: their names in ``CHECKS``) in order; a Redis error inside a check
    fails that check, never the whole preflight."""
    ctx.take_baseline()
    results: list[Result] = []
    for name, check in CHECKS:
        if only is not None and name not in only:
            continue
        try:
            results.extend(check(ctx))
        except (redis.RedisError, OSError) as exc:
            results.append(Result(name, INFRA, "fail", f"the check failed: {type(exc).__name__}: {exc}",
                                  "see the error; Redis permissions (ACL) or connectivity"))
    return Report(aim=ctx.aim, ts_ms=ctx.now_ms(), results=results)


def load_context(client: redis.Redis, **options: Any) -> Preflight:
    """The context with every process's settings from the environment and ``.env``. ``options``:
    fields of ``Preflight`` (e.g. ``expect_record``) and ``overrides``: settings values to use over
    the environment's (tests)."""
    from tradestack.config import CommonSettings, load_settings

    overrides = options.pop("overrides", {})
    loaded: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name in NAMES:
        try:
            loaded[name] = load_settings(settings_class(name), **overrides)
        except ConfigError as exc:
            errors[name] = str(exc)
    settings = loaded.get("trader_executor") or load_settings(CommonSettings)
    return Preflight(client=client, settings=settings, service_settings=loaded, config_errors=errors, **options)


# -- output ---------------------------------------------------------------------------------------

MARKS = {"pass": "ok", "warn": "WARN", "info": "info", "fail": "FAIL"}


def format_report(report: Report) -> str:
    width = max((len(r.name) for r in report.results), default=10)
    lines = [f"tradestack preflight: aiming at {report.aim}"]
    for row in ROWS:
        results = [r for r in report.results if r.row == row]
        if not results:
            continue
        lines.append(f"\n{row}")
        for r in results:
            lines.append(f"  {MARKS[r.status]:<4}  {r.name:<{width}}  {r.detail}")
            if r.fix and r.status != "pass":
                lines.append(f"  {'':<4}  {'':<{width}}  fix: {r.fix}")
    lines.append("\ngo/no-go: " + ", ".join(f"{row} {MARKS[v]}" for row, v in report.rows().items()))
    if report.passed:
        warnings = sum(1 for r in report.results if r.status == "warn")
        lines.append(f"preflight passed ({warnings} warning{'s' if warnings != 1 else ''})")
    else:
        lines.append(f"preflight FAILED: {len(report.failures)} check(s) block go-live: "
                     + ", ".join(r.name for r in report.failures))
    return "\n".join(lines)


__all__ = ["CHECKS", "ROWS", "Preflight", "Report", "Result", "format_report", "load_context", "run_preflight"]
