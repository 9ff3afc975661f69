"""``python -m sandbox`` as a subprocess: URL lines, serving, clean SIGTERM, bad config."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


_readers: dict[int, "queue.Queue[str | None]"] = {}


def _readline(proc: subprocess.Popen, deadline: float) -> str:
    """The next stdout line, or fail at the deadline. A reader thread feeds a queue: select() on a
    buffered pipe misses lines already read into Python's buffer."""
    lines = _readers.get(proc.pid)
    if lines is None:
        lines = _readers[proc.pid] = queue.Queue()

        def pump() -> None:
            for line in iter(proc.stdout.readline, ""):
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
    try:
        line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
    except queue.Empty:
        raise AssertionError("no output before the deadline") from None
    if line is None:
        raise AssertionError(f"sandbox exited early: rc={proc.wait()} stderr={proc.stderr.read()}")
    return line.rstrip("\n")


def test_cli_prints_urls_serves_and_exits_on_sigterm(tmp_path: Path) -> None:
    env = dict(os.environ, SANDBOX_EUR="2500")
    state = tmp_path / "state.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--port", "0", "--markets", "BTC-EUR,ETH-EUR", "--history-hours", "0.5",
         "--state", str(state)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        rest = _readline(proc, deadline)
        ws = _readline(proc, deadline)
        assert rest.startswith("REST http://127.0.0.1:") and rest.endswith("/v2")
        assert ws.startswith("WS ws://127.0.0.1:") and ws.endswith("/v2/")
        url = rest.split(" ", 1)[1]
        with urllib.request.urlopen(url + "/time", timeout=10) as r:
            assert r.status == 200
            assert isinstance(json.load(r)["time"], int)
            assert int(r.headers["bitvavo-ratelimit-remaining"]) == 999
        log_line = json.loads(_readline(proc, deadline))
        assert "event" in log_line  # then JSON logs
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 5
        assert state.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_bad_values_exit_2_with_one_line() -> None:
    for args, env in (
        (["--port", "99999"], {}),
        (["--faults", "{not json"], {}),
        (["--faults", '{"errors": [{"code": 216}]}'], {}),
        ([], {"SANDBOX_SEED": "many"}),
        (["--api-key", "short"], {}),
        (["--bogus"], {}),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "sandbox", *args], cwd=ROOT, env=dict(os.environ, **env),
            capture_output=True, text=True, timeout=30,
        )
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sandbox: error:"), (args, proc.stderr)
