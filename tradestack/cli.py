"""The ``tradestack`` command: ``up``, ``status``, ``kill on|off``, ``preflight``, ``golive``.

``up`` runs the whole stack in the foreground: with no Redis configured (REDIS_URL) and none on
127.0.0.1:6379 it starts an embedded one; with no exchange key configured it starts the sandbox
exchange and points every process at it. Children's output is prefixed with their name (coloured on
a terminal). Children that die are restarted with backoff; Ctrl-C, SIGTERM or the end of ``--for
DURATION`` stops them all (SIGTERM, then SIGKILL after 6 s); a bounded run ends with a summary of
what the stack did (tradestack/ops/summary.py). ``up`` writes ``<data-dir>/stack.json`` so the other
commands find its Redis without being told.

``preflight`` is the go-live checklist (tradestack/ops/preflight.py); ``golive`` runs it and, with
two approvers, writes the go-live record the executor's live gate needs (tradestack/ops/golive.py).
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
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
from tradestack.ops.logprefix import LogPrefixer
from tradestack.ops.processes import PROCESSES, STREAMS_SHOWN
from tradestack.ops.status import collect_status, format_status, watch

__all__ = ["PROCESSES", "STREAMS_SHOWN", "collect_status", "main", "parse_duration", "set_kill"]


def say(text: str) -> None:
    """Human lines go to stderr; stdout carries the children's JSON logs."""
    print(f"tradestack: {text}", file=sys.stderr, flush=True)


def stack_file(data_dir: Path) -> Path:
    return data_dir / "stack.json"


def recorded(data_dir: Path, key: str) -> str | None:
    """What a running `up` recorded in stack.json."""
    path = stack_file(data_dir)
    if path.exists():
        value = orjson.loads(path.read_bytes()).get(key)
        if value:
            return str(value)
    return None


def resolve_redis_url(settings: CommonSettings, data_dir: Path) -> str:
    """REDIS_URL when configured; else the URL a running `up` recorded; else the default."""
    if "redis_url" in settings.model_fields_set:
        return settings.redis_url
    return recorded(data_dir, "redis_url") or DEFAULT_REDIS_URL


def check_options(args: argparse.Namespace, settings: CommonSettings, url: str) -> dict[str, Any]:
    """Preflight options from the command line; the PARQUET_DIR a running `up` gave its processes
    when none is configured."""
    options: dict[str, Any] = {"redis_url": url, "moment_s": args.moment, "min_free_gb": args.min_free_gb}
    parquet = recorded(Path(args.data_dir), "parquet_dir")
    if parquet and "parquet_dir" not in settings.model_fields_set:
        options["overrides"] = {"parquet_dir": parquet}
    return options


DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(value: str) -> float:
    """``90s``, ``5m``, ``1.5h``, ``500ms`` or plain seconds → seconds."""
    match = DURATION.match(value)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration: {value!r} (e.g. 90s, 5m, 1h)")
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]


# -- up ---------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    backoff: Backoff = field(default_factory=lambda: Backoff(1.0, 30.0))
    restart_at: float = 0.0
    restarts: int = 0
    how: str = "not started"  # how it ended, for the summary


class Stack:
    def __init__(self, args: argparse.Namespace, settings: CommonSettings) -> None:
        self.args = args
        self.settings = settings
        self.data_dir = Path(args.data_dir).resolve()
        self.redis: EmbeddedRedis | None = None
        self.sandbox: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}
        self.children = [Child(n, a) for n, a in PROCESSES if not args.only or n in args.only]
        self.logs = LogPrefixer([c.name for c in self.children] + ["sandbox"])
        self.stopping = False
        self.duration_s: float | None = getattr(args, "run_for", None)

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
        # The sandbox keeps logging on its stdout: forward it, prefixed.
        self.logs.attach("sandbox", self.sandbox.stdout)
        return {"BITVAVO_REST_URL": urls["REST"], "BITVAVO_WS_URL": urls["WS"],
                "BITVAVO_API_KEY": key, "BITVAVO_API_SECRET": secret, "BITVAVO_OPERATOR_ID": "1"}

    def spawn(self, child: Child) -> None:
        child.proc = subprocess.Popen([sys.executable, *child.args], env=self.child_env(child.name),
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert child.proc.stdout is not None and child.proc.stderr is not None
        self.logs.attach(child.name, child.proc.stdout, sys.stdout)
        self.logs.attach(child.name, child.proc.stderr, sys.stderr)

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
        started_ms = int(time.time() * 1000)
        stack_file(self.data_dir).write_bytes(orjson.dumps({
            "redis_url": redis_url, "pid": os.getpid(), "sandbox": exchange_env.get("BITVAVO_REST_URL"),
            "parquet_dir": self.env["PARQUET_DIR"], "started_ms": started_ms}))
        before = self.counts(redis_url) if self.duration_s is not None else {}
        for child in self.children:
            self.spawn(child)
        mode = {"sandbox": "sandbox", "paper": "paper"}.get(self.args.mode or "", self.settings.mode)
        bounded = f" for {self.duration_s:g} s" if self.duration_s is not None else ""
        say(f"started {len(self.children)} processes in {mode} mode{bounded}; "
            f"`tradestack status` shows them, Ctrl-C stops them, `tradestack kill on --reason ...` blocks entries")

        def on_signal(signum: int, _frame: Any) -> None:
            self.stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        clean = True
        try:
            self.supervise()
        finally:
            clean = self.stop_children()
            if self.duration_s is not None:
                self.summarise(redis_url, started_ms, before)
            self.stop_infrastructure()
        return 0 if clean else 1

    def supervise(self) -> None:
        deadline = time.monotonic() + self.duration_s if self.duration_s is not None else None
        while not self.stopping:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                say(f"--for {self.duration_s:g} s is over")
                return
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

    def stop_children(self) -> bool:
        """SIGTERM every child, SIGKILL what is still there after 6 s; False when one had to be killed."""
        say("stopping")
        clean = True
        live = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for child in live:
            assert child.proc is not None
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 6
        for child in self.children:
            if child.proc is None:
                child.how = "was not running"
                continue
            try:
                code = child.proc.wait(max(0.1, deadline - time.monotonic()))
                child.how = f"exit {code}" + (" (stopped before it was ready)" if code == -signal.SIGTERM else "")
            except subprocess.TimeoutExpired:
                say(f"{child.name} (pid {child.proc.pid}) did not stop within 6 s; killing it")
                child.proc.kill()
                child.proc.wait()
                child.how, clean = "killed after 6 s", False
            if child.restarts:
                child.how += f", {child.restarts} restarts"
        if self.sandbox is not None and self.sandbox.poll() is None:
            self.sandbox.send_signal(signal.SIGTERM)
            try:
                self.sandbox.wait(6)
            except subprocess.TimeoutExpired:
                self.sandbox.kill()
        self.logs.join()
        return clean

    def stop_infrastructure(self) -> None:
        if self.redis is not None:
            self.redis.stop()
        stack_file(self.data_dir).unlink(missing_ok=True)
        say("stopped")

    def counts(self, redis_url: str) -> dict[str, dict[str, int | None]]:
        from tradestack.ops.summary import stream_counts

        client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        try:
            return stream_counts(client)
        except (redis.RedisError, OSError):
            return {}
        finally:
            client.close()

    def summarise(self, redis_url: str, started_ms: int, before: dict[str, dict[str, int | None]]) -> None:
        from tradestack.ops.summary import collect_summary, format_summary

        client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        try:
            summary = collect_summary(client, started_ms, int(time.time() * 1000), before,
                                      maxlen_overrides=self.settings.stream_maxlen)
        except (redis.RedisError, OSError) as exc:
            say(f"no summary: cannot read Redis ({type(exc).__name__}: {exc})")
            return
        finally:
            client.close()
        print(format_summary(summary, [(c.name, c.how) for c in self.children]), file=sys.stderr, flush=True)


# -- status -----------------------------------------------------------------------------


def print_status(status: dict[str, Any], mode: str) -> None:
    print(format_status(status, mode))


def status_command(client: redis.Redis, args: argparse.Namespace, mode: str) -> int:
    def frame() -> str:
        try:
            status = collect_status(client, int(time.time() * 1000))
        except (redis.RedisError, OSError) as exc:
            return f"cannot read Redis: {type(exc).__name__}: {exc}"
        if args.json:
            return orjson.dumps(status, option=0 if args.watch is not None else orjson.OPT_INDENT_2).decode()
        return format_status(status, mode)

    if args.watch is None:
        print(frame())
        return 0
    return watch(frame, args.watch, clear=not args.json and sys.stdout.isatty())


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


# -- preflight and golive -----------------------------------------------------------------


def preflight_command(client: redis.Redis, options: dict[str, Any], args: argparse.Namespace) -> int:
    from tradestack.ops.preflight import format_report, load_context, run_preflight

    ctx = load_context(client, **options)
    report = run_preflight(ctx)
    if args.json:
        print(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_report(report))
    return 0 if report.passed else 1


def golive_command(client: redis.Redis, options: dict[str, Any], args: argparse.Namespace) -> int:
    from tradestack.ops.golive import Refused, distinct_approvers, golive
    from tradestack.ops.preflight import format_report, load_context

    try:
        distinct_approvers(args.approved_by)  # before anything else: a refused request tests nothing
    except Refused as exc:
        say(f"golive refused: {exc}")
        return 1
    ctx = load_context(client, **options)
    try:
        report, paths = golive(ctx, args.approved_by, args.risks)
    except Refused as exc:
        if exc.report is not None:
            print(format_report(exc.report))
        say(f"golive refused: {exc}")
        return 1
    print(format_report(report))
    say(f"go-live record written: {paths[2]} (and {paths[3].name}; dated copy {paths[0].name}); approved by "
        f"{', '.join(distinct_approvers(args.approved_by))}. The executor accepts it for GOLIVE_MAX_AGE_HOURS="
        f"{ctx.settings.golive_max_age_hours:g} h: set DRY_RUN=false and the live settings, restart the executor, "
        f"then run `tradestack preflight` again")
    return 0


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
    up.add_argument("--for", dest="run_for", type=parse_duration, default=None, metavar="DURATION",
                    help="stop after DURATION (90s, 5m, 1h) and print a summary of the run")
    st = sub.add_parser("status", help="services alive, streams, lag, DLQs, leases, kill switch, mode, positions, PnL")
    st.add_argument("--json", action="store_true")
    st.add_argument("--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS",
                    help="refresh every SECONDS (default 2) in place; Ctrl-C exits")
    kill = sub.add_parser("kill", help="set or clear the kill switch (trading:kill)")
    kill.add_argument("state", choices=["on", "off"])
    kill.add_argument("--reason", required=True, help="who/why, recorded in trading:kill:reason")
    checks = argparse.ArgumentParser(add_help=False)
    checks.add_argument("--moment", type=float, default=1.0, metavar="SECONDS",
                        help="least time between the two readings of growing streams and DLQs (default 1)")
    checks.add_argument("--min-free-gb", type=float, default=5.0, help="free space PARQUET_DIR needs (default 5)")
    pf = sub.add_parser("preflight", parents=[checks],
                        help="the go-live checklist; exit code 1 when anything blocks go-live")
    pf.add_argument("--json", action="store_true")
    gl = sub.add_parser("golive", parents=[checks],
                        help="preflight, then the dated go-live record signed by two approvers")
    gl.add_argument("--approved-by", action="append", default=[], metavar="NAME", required=True,
                    help="an approver; give it twice, for two different people")
    gl.add_argument("--risks", default="", metavar="TEXT", help="the risks accepted, in the record")
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
    if args.command == "golive":
        return golive_command(client, check_options(args, settings, url), args)
    if args.command == "preflight":  # an unreachable Redis is one of its failing rows
        return preflight_command(client, check_options(args, settings, url), args)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        say(f"cannot reach Redis at {url}: {exc}")
        return 1
    if args.command == "status":
        return status_command(client, args, settings.mode)
    now_ms = int(time.time() * 1000)
    set_kill(client, args.state == "on", args.reason, now_ms)
    say(f"kill switch {'ON' if args.state == 'on' else 'off'}: "
        f"{'new entries are blocked' if args.state == 'on' else 'entries allowed'} ({args.reason})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
