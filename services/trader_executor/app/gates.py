"""The executor's mode gates (DESIGN §3): which mode it may run in, or one line naming every gate
that is missing. Fail safe: anything short of every live condition refuses to start.

- **paper**: ``DRY_RUN=true`` (the default); needs nothing.
- **sandbox**: ``DRY_RUN=false`` with ``BITVAVO_REST_URL`` not Bitvavo's; needs an API key, secret and
  operator id (``tradestack up --mode sandbox`` passes the sandbox's).
- **live**: ``DRY_RUN=false`` with Bitvavo's URL; needs ``ENABLE_LIVE_TRADING=true``,
  ``LIVE_ALLOWED_MARKETS``, a 64-character key and a secret, ``BITVAVO_OPERATOR_ID``, Bitvavo's WS URL,
  the secrets file (``SECRETS_FILE``) readable by its owner only, ``LIVE_MAX_ORDER_NOTIONAL_EUR`` and
  ``LIVE_MAX_TOTAL_NOTIONAL_EUR``, and a go-live record (``GOLIVE_RECORD``) after a passing preflight,
  signed by two approvers, younger than ``GOLIVE_MAX_AGE_HOURS``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import orjson

from tradestack.config import BITVAVO_WS_URL
from tradestack.errors import ConfigError


def _missing_credentials(settings: Any) -> list[str]:
    missing = []
    key = settings.bitvavo_api_key.get_secret_value() if settings.bitvavo_api_key else ""
    secret = settings.bitvavo_api_secret.get_secret_value() if settings.bitvavo_api_secret else ""
    if not key:
        missing.append("BITVAVO_API_KEY is not set")
    elif len(key) != 64:
        missing.append(f"BITVAVO_API_KEY has {len(key)} characters, Bitvavo's have 64")
    if not secret:
        missing.append("BITVAVO_API_SECRET is not set")
    if settings.bitvavo_operator_id is None:
        missing.append("BITVAVO_OPERATOR_ID is not set (Bitvavo requires it on every order)")
    return missing


def _secrets_file_problem(path: Path) -> str | None:
    try:
        st = path.stat()
    except OSError:
        return f"the secrets file {path} does not exist (SECRETS_FILE)"
    if stat.S_IMODE(st.st_mode) & 0o077:
        return f"the secrets file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}; chmod 600)"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"the secrets file {path} is not owned by the service user"
    return None


def _golive_problem(path: Path, max_age_hours: float, now_ms: int) -> str | None:
    try:
        record = orjson.loads(path.read_bytes())
    except OSError:
        return f"no go-live record at {path} (tradestack golive, two approvers)"
    except orjson.JSONDecodeError:
        return f"the go-live record {path} is not valid JSON"
    approvers = {str(a).strip().lower() for a in record.get("approved_by", []) if str(a).strip()}
    if len(approvers) < 2:
        return f"the go-live record {path} has {len(approvers)} distinct approver(s); two are required"
    if not record.get("preflight_passed"):
        return f"the go-live record {path} was not written after a passing preflight"
    age_h = (now_ms - int(record.get("created_ms", 0))) / 3_600_000
    if age_h > max_age_hours:
        return f"the go-live record {path} is {age_h:.1f} h old (GOLIVE_MAX_AGE_HOURS={max_age_hours:g})"
    return None


def resolve_mode(settings: Any, now_ms: int) -> str:
    """``paper``, ``sandbox`` or ``live``; a ConfigError naming every missing gate otherwise."""
    if settings.dry_run:
        return "paper"
    mode = settings.mode
    if mode == "sandbox":
        missing = _missing_credentials(settings)
        if missing:
            raise ConfigError("sandbox mode (DRY_RUN=false, exchange at " + settings.bitvavo_rest_url + ") needs: "
                              + "; ".join(missing))
        return "sandbox"
    missing = []
    if not settings.enable_live_trading:
        missing.append("ENABLE_LIVE_TRADING is not true")
    if not settings.live_allowed_markets:
        missing.append("LIVE_ALLOWED_MARKETS is empty")
    missing.extend(_missing_credentials(settings))
    if settings.bitvavo_ws_url.rstrip("/") != BITVAVO_WS_URL.rstrip("/"):
        missing.append(f"BITVAVO_WS_URL ({settings.bitvavo_ws_url}) is not Bitvavo's while the REST URL is")
    problem = _secrets_file_problem(Path(settings.secrets_file))
    if problem:
        missing.append(problem)
    if settings.live_max_order_notional_eur is None or settings.live_max_total_notional_eur is None:
        missing.append("LIVE_MAX_ORDER_NOTIONAL_EUR and LIVE_MAX_TOTAL_NOTIONAL_EUR must both be set")
    problem = _golive_problem(Path(settings.golive_record), settings.golive_max_age_hours, now_ms)
    if problem:
        missing.append(problem)
    if missing:
        raise ConfigError("live trading refused (DRY_RUN=false with Bitvavo's URL); missing gates: "
                          + "; ".join(missing))
    return "live"


__all__ = ["resolve_mode"]
