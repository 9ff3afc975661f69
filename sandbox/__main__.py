"""``python -m sandbox``: the Bitvavo-compatible sandbox exchange on loopback.

Prints ``REST http://HOST:PORT/v2`` and ``WS ws://HOST:PORT/v2/`` (one line each, flushed), then
JSON logs. SIGTERM/SIGINT: close sockets, save state if configured, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any, NoReturn

import orjson
from pydantic import ValidationError

from sandbox.server.faults import FaultSpec
from sandbox.server.settings import SandboxSettings
from tradestack import gc_tuning
from tradestack.logs import configure_logging, get_logger

log = get_logger("sandbox")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one clear line, exit 2
        self.exit(2, f"sandbox: error: {message}\n")


def _parse(argv: list[str] | None) -> dict[str, Any]:
    p = _Parser(prog="python -m sandbox", description="Bitvavo-compatible sandbox exchange (loopback).")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port, 0 = a free port (default 0)")
    p.add_argument("--markets", help="BTC-EUR,ETH-EUR | all (default: the engine's default set)")
    p.add_argument("--seed", type=int)
    p.add_argument("--faults", help="fault spec as JSON text or @file")
    p.add_argument("--state", help="persist orders/balances to this JSON file")
    p.add_argument("--replay", help="drive prices from recorded Parquet in this directory")
    p.add_argument("--history-hours", type=float, dest="history_hours")
    p.add_argument("--api-key", dest="api_key")
    p.add_argument("--api-secret", dest="api_secret")
    p.add_argument("--eur", help="EUR balance of the account (default 10000)")
    p.add_argument("--activity", type=float, help="bench knob: multiply the simulated trade rate (default 1)")
    p.add_argument("--log-level", dest="log_level")
    args = vars(p.parse_args(argv))
    return {k: v for k, v in args.items() if v is not None}


def _fail(message: str) -> NoReturn:
    print(f"sandbox: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def load_settings(argv: list[str] | None) -> SandboxSettings:
    overrides = _parse(argv)
    try:
        settings = SandboxSettings(**overrides)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = ".".join(str(x) for x in first["loc"]) or "settings"
        _fail(f"invalid {loc}: {first['msg']}")
    try:
        text = settings.fault_text()
    except OSError as exc:
        _fail(f"cannot read faults file: {exc}")
    if text:
        try:
            FaultSpec.model_validate(orjson.loads(text))
        except orjson.JSONDecodeError as exc:
            _fail(f"faults is not valid JSON: {exc}")
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            _fail(f"invalid faults.{'.'.join(str(x) for x in first['loc'])}: {first['msg']}")
    if settings.replay is not None and not settings.replay.is_dir():
        _fail(f"replay directory {settings.replay} does not exist")
    if settings.state is not None and not settings.state.parent.exists():
        _fail(f"state directory {settings.state.parent} does not exist")
    return settings


async def serve(settings: SandboxSettings) -> None:
    from sandbox.server.runner import Sandbox, run_sandbox  # imports the engine: after settings are valid

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    def announce(sb: Sandbox) -> None:
        # Latency: the made-up history and the books (hundreds of thousands of objects) never need
        # collecting; the market loop keeps freezing what survives (tradestack.gc_tuning).
        gc_tuning.settle()
        # Other processes parse these two lines: keep their format, print them first, flush now.
        print(f"REST {sb.rest_url}", flush=True)
        print(f"WS {sb.ws_url}", flush=True)

    async with run_sandbox(None, settings, on_ready=announce) as sb:
        log.info("sandbox_account", api_key=sb.api_key, api_secret=sb.api_secret, eur=str(settings.eur))
        await stop.wait()
        log.info("sandbox_stopping")


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(argv)
    configure_logging(settings.log_level, service="sandbox")
    try:
        asyncio.run(serve(settings))
    except (ValueError, KeyError) as exc:  # engine rejected the configuration (e.g. unknown market)
        _fail(f"cannot start: {exc}")
    except OSError as exc:  # e.g. port in use
        _fail(f"cannot start: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
