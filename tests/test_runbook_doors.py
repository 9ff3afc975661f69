"""The runbook's commands work as written: `python /srv/trading/trading_core.py [--once]`,
`ingest.py`, `ingest_orderbook.py`, `ingest_candles.py` from the install root, and
`export $(grep -v "^#" .env | xargs -d "\\n")` keeps every value of `.env.example` intact."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from types import ModuleType

import pytest
import redis

from tests.conftest import ROOT, spawn

DOORS = {
    "trading_core.py": "services.trading_core.trading_core.service",
    "ingest.py": "ingest.ticker24h",
    "ingest_orderbook.py": "ingest.orderbook",
    "ingest_candles.py": "ingest.candles",
}
RUNBOOK_EXPORT = 'export $(grep -v "^#" .env | xargs -d "\\n")'


def load_door(file: str) -> ModuleType:
    """The door as a module under a name of its own (``ingest.py`` shares its name with the package)."""
    spec = importlib.util.spec_from_file_location(f"runbook_door_{file[:-3]}", ROOT / file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("file", sorted(DOORS))
def test_each_door_is_the_real_main(file: str) -> None:
    door = load_door(file)
    assert door.main is importlib.import_module(DOORS[file]).main
    # A door, not a second implementation: its only function is the one it imports.
    assert [name for name, value in vars(door).items() if callable(value) and getattr(value, "__module__", "")
            == door.__name__] == []


def test_the_ingest_package_still_wins_over_the_ingest_door() -> None:
    import ingest

    assert ingest.__file__ is not None and ingest.__file__.endswith(os.path.join("ingest", "__init__.py"))


def test_trading_core_door_once_processes_pending_and_exits(redis_url: str) -> None:
    from tests.core import MARKETS_JSON
    from tests.core import signal as make_signal
    from tradestack import streams
    from tradestack.messages import encode

    client = redis.Redis.from_url(redis_url)
    client.set(streams.MARKETS, json.dumps({"fetched_ms": 1, "markets": MARKETS_JSON}))
    client.xadd(streams.SIGNALS_BASELINE, encode(make_signal(1, "BTC-EUR", "60000")))
    # Verbatim: `python /srv/trading/trading_core.py --once`, from the install root.
    proc = spawn([str(ROOT / "trading_core.py"), "--once"],
                 {"REDIS_URL": redis_url, "BITVAVO_REST_URL": "http://127.0.0.1:1/v2"})
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert client.xlen(streams.ORDERS_SIGNALS) == 1
    assert client.xpending(streams.SIGNALS_BASELINE, "trading_core")["pending"] == 0
    client.close()


def test_trading_core_door_runs_from_any_directory(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = subprocess.run([sys.executable, str(ROOT / "trading_core.py"), "--help"], cwd=tmp_path,
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert b"--once" in result.stdout


# -- .env through the runbook's `export $(grep -v "^#" .env | xargs -d "\n")` ----------------------


def runbook_words(text: str) -> list[str]:
    """What the shell line makes of a .env: `grep -v "^#"` drops comment lines, `xargs -d "\\n"` makes
    each remaining line one argument of `echo` (quotes and backslashes literal), and the unquoted
    `$(...)` splits that output on whitespace again, so an empty line vanishes and a value with a
    space becomes two words."""
    kept = [line for line in text.split("\n") if not line.startswith("#")]
    return " ".join(kept).split()


def test_env_example_lines_survive_the_runbook_export() -> None:
    text = (ROOT / ".env.example").read_text()
    lines = [line for line in text.split("\n") if line and not line.startswith("#")]
    assert "\r" not in text and "\t" not in text
    assert runbook_words(text) == lines, "a value with whitespace would be split into several words"
    for line in lines:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*=\S*", line), f"{line!r}: not NAME=value without spaces"
        name, value = line.split("=", 1)
        # Quotes stay literal through `xargs -d` (the export would keep them, while a .env read by the
        # settings strips them); `$` and backslashes would differ between the two readers as well.
        assert not value.startswith(("'", '"')), f"{name}: a quoted value keeps its quotes through the export"
        assert "'" not in value and "\\" not in value and "$" not in value and "`" not in value, name
        if value.startswith(("[", "{")):
            parsed = json.loads(value)
            assert json.dumps(parsed, separators=(",", ":"), ensure_ascii=False) == value, f"{name}: JSON not compact"


@pytest.mark.skipif(shutil.which("bash") is None or subprocess.run(["xargs", "-d", "\\n", "--version"],
                    capture_output=True).returncode != 0, reason="needs bash and GNU xargs")
def test_env_example_through_the_real_shell_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The runbook's line itself, run in the install root (its files are what a glob in a value could
    match), on a copy of .env.example: every variable arrives with its value byte for byte."""
    lines = [line for line in (ROOT / ".env.example").read_text().split("\n") if line and not line.startswith("#")]
    expected = dict(line.split("=", 1) for line in lines)
    env_file = tmp_path / ".env"
    shutil.copy(ROOT / ".env.example", env_file)
    dump = '"$PY" -c "import json, os; print(json.dumps(dict(os.environ)))"'
    script = f'{RUNBOOK_EXPORT.replace(" .env ", f" {env_file} ")} && {dump}'
    result = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, timeout=60,
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PY": sys.executable})
    assert result.returncode == 0 and result.stderr == b"", result.stderr.decode()
    got = json.loads(result.stdout)
    assert {name: got.get(name) for name in expected} == expected
