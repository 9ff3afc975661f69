"""`tradestack up` as the tests run it: bounded, on a fresh data directory, an embedded Redis and the
sandbox exchange the command starts (tests/test_stack_e2e.py, tests/test_executor_acceptance.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import orjson
import redis

from tests.conftest import ROOT, wait_until

# What an operator's shell may have set that would point the stack elsewhere.
FOREIGN_ENV = ("REDIS_", "METRICS_", "DRY_RUN", "INGEST_", "BITVAVO_", "SIGNAL_", "UNIVERSE_", "EXECUTOR_", "SANDBOX_")


@dataclass
class RunningStack:
    client: redis.Redis
    proc: subprocess.Popen[bytes]
    log: Path
    info: dict[str, Any]  # stack.json: redis_url, sandbox (its REST URL), pid, ...

    @property
    def sandbox_base(self) -> str:
        """The sandbox's base URL (its admin endpoints live at /admin/...)."""
        rest = str(self.info["sandbox"])
        return rest[: -len("/v2")] if rest.endswith("/v2") else rest


@contextmanager
def run_stack(tmp_path: Path, *up_args: str, env: dict[str, str] | None = None,
              start_timeout_s: float = 60.0) -> Iterator[RunningStack]:
    """``tradestack --data-dir <tmp> up --embedded-redis *up_args`` until the block ends (then SIGINT,
    SIGKILL past 30 s). Its output goes to ``tmp_path/stack.log``."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV)}
    full.update(PYTHONUNBUFFERED="1", LOG_LEVEL="WARNING")
    full.update(env or {})
    log_path = tmp_path / "stack.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "tradestack.cli", "--data-dir", str(tmp_path / "data"), "up",
                             "--embedded-redis", *up_args], cwd=ROOT, env=full, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    stack_json = tmp_path / "data" / "stack.json"
    client: redis.Redis | None = None
    try:
        wait_until(lambda: stack_json.exists() and proc.poll() is None, timeout_s=start_timeout_s,
                   what="the stack to start")
        info = orjson.loads(stack_json.read_bytes())
        client = redis.Redis.from_url(info["redis_url"])
        yield RunningStack(client, proc, log_path, info)
    finally:
        if client is not None:
            client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()
