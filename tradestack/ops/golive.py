"""``tradestack golive``: two approvers, a passing preflight, then the dated go-live record.

The record is what the executor's live gate reads (``GOLIVE_RECORD``, services/trader_executor/app/
gates.py): JSON with ``approved_by`` (at least two names, distinct once trimmed and lower-cased),
``preflight_passed`` and ``created_ms``. Beside it go the audit fields: who wrote it, the risks
accepted, the git commit, the preflight table, and the limits in force (live settings, the guard
chain, risk and exit settings, the loss breaker), and the same as Markdown (``golive.md``). A copy
of both, named by the UTC time (``golive-20260101T120000Z.json``), stays in the same directory:
a later golive replaces ``golive.json``, never the history.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Sequence

import orjson

from tradestack.ops.preflight import MARKS, Preflight, Report, run_preflight

LIVE_SETTINGS = ["dry_run", "enable_live_trading", "live_allowed_markets", "live_max_order_notional_eur",
                 "live_max_total_notional_eur", "bitvavo_rest_url", "bitvavo_ws_url", "bitvavo_operator_id",
                 "golive_max_age_hours", "kill_poll_ms"]
RISK_SETTINGS = ["core_equity_eur", "risk_mode", "risk_value", "core_taker_fee_rate", "core_entry_order_type",
                 "exit_mode", "exit_stop_loss_pct", "exit_take_profit_pct", "exit_stop_atr_mult",
                 "exit_take_profit_atr_mult", "exit_trailing", "exit_trailing_pct", "exit_trailing_atr_mult",
                 "exit_time_stop_secs", "signal_streams"]
PNL_SETTINGS = ["max_daily_loss_pct", "max_drawdown_pct", "paper_eur"]


class Refused(Exception):
    """golive does not write a record; the message is the one line saying why (``report``: the
    failing preflight, when it ran)."""

    def __init__(self, message: str, report: Report | None = None) -> None:
        super().__init__(message)
        self.report = report


def distinct_approvers(names: Sequence[str]) -> list[str]:
    """The approvers as given (trimmed), one per person: the executor's gate compares names trimmed
    and lower-cased, so this does too. Raises ``Refused`` with fewer than two."""
    seen: dict[str, str] = {}
    for name in names:
        trimmed = name.strip()
        if trimmed and trimmed.lower() not in seen:
            seen[trimmed.lower()] = trimmed
    if len(seen) < 2:
        given = ", ".join(repr(n.strip()) for n in names if n.strip()) or "none"
        raise Refused(f"two different approvers are required (--approved-by NAME twice); got {given}")
    return list(seen.values())


def git_commit(root: Path) -> dict[str, Any] | None:
    """``git rev-parse HEAD`` of the code in use, and whether the tree has local changes; None
    outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "get_secret_value"):
        return "***"
    return value


def _pick(settings: Any, names: Sequence[str]) -> dict[str, Any]:
    return {n: _plain(getattr(settings, n)) for n in names if settings is not None and hasattr(settings, n)}


def guard_chain(core: Any) -> list[dict[str, Any]]:
    """The trading core's guard chain as configured (``CORE_GUARDS``, or the default chain)."""
    from services.trading_core.trading_core.guards import DEFAULT_GUARDS

    raw = getattr(core, "core_guards", "") if core is not None else ""
    chain = json.loads(raw) if raw else DEFAULT_GUARDS
    return [dict(g) for g in chain]


def limits_in_force(ctx: Preflight) -> dict[str, Any]:
    executor = ctx.service_settings.get("trader_executor", ctx.settings)
    core = ctx.service_settings.get("trading_core")
    pnl = ctx.service_settings.get("trader_pnl_orchestrator")
    return {"mode": ctx.aim, "live": _pick(executor, LIVE_SETTINGS), "guards": guard_chain(core),
            "risk": _pick(core, RISK_SETTINGS), "pnl": _pick(pnl, PNL_SETTINGS)}


def build_record(ctx: Preflight, report: Report, approvers: list[str], risks: str, now_ms: int) -> dict[str, Any]:
    return {
        "approved_by": approvers, "preflight_passed": report.passed, "created_ms": now_ms,
        "created": datetime.fromtimestamp(now_ms / 1000, tz=timezone.utc).isoformat(timespec="seconds"),
        "written_by": f"{getpass.getuser()}@{socket.gethostname()}", "risks": risks,
        "git": git_commit(ctx.root), "limits": limits_in_force(ctx), "preflight": report.to_json(), "v": 1,
    }


def _env_value(value: Any) -> str:
    """A setting as it is written in .env."""
    if value is None:
        return "(empty)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value)) or "(empty)"
    return str(value)


def to_markdown(record: dict[str, Any]) -> str:
    git = record.get("git") or {}
    commit = f"{git.get('commit')}" + (" (with local changes)" if git.get("dirty") else "") if git else "unknown"
    limits = record["limits"]
    lines = [f"# Go-live record, {record['created']}", "",
             f"- approved by: {', '.join(record['approved_by'])}",
             f"- written by: {record['written_by']}",
             f"- git commit: {commit}",
             f"- mode the settings aim at: {limits['mode']}",
             f"- preflight passed: {'yes' if record['preflight_passed'] else 'no'}", "",
             "## Risks accepted", "", record["risks"] or "(none stated)", "",
             "## Limits in force", "", "| setting | value |", "|---|---|"]
    for group in ("live", "risk", "pnl"):
        for key, value in limits[group].items():
            lines.append(f"| `{key.upper()}` | {_env_value(value)} |")
    lines += ["", "## Guard chain (in order)", ""]
    for i, guard in enumerate(limits["guards"], 1):
        params = ", ".join(f"{k}={v}" for k, v in guard.items() if k != "method")
        lines.append(f"{i}. {guard.get('method')}" + (f" ({params})" if params else ""))
    lines += ["", "## Preflight", "", "| result | check | row | detail |", "|---|---|---|---|"]
    for check in record["preflight"]["checks"]:
        detail = str(check["detail"]).replace("|", "\\|")
        lines.append(f"| {MARKS[check['status']]} | {check['name']} | {check['row']} | {detail} |")
    return "\n".join(lines) + "\n"


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a reader sees the old record or the new one, never half of one


def write_record(record: dict[str, Any], path: Path) -> list[Path]:
    """``path`` (JSON), the Markdown beside it, and a copy of both named by the UTC time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromtimestamp(record["created_ms"] / 1000, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    data, markdown = orjson.dumps(record, option=orjson.OPT_INDENT_2), to_markdown(record).encode()
    dated = path.with_name(f"{path.stem}-{stamp}.json")
    written = [dated, dated.with_suffix(".md"), path, path.with_suffix(".md")]
    for target in written:
        _write(target, data if target.suffix == ".json" else markdown)
    return written


def golive(ctx: Preflight, approvers: Sequence[str], risks: str) -> tuple[Report, list[Path]]:
    """Approvers first (a refused request runs no preflight, so no kill-switch test), then the
    preflight with the record counted as about to exist, then the record. ``Refused`` says why not."""
    names = distinct_approvers(approvers)
    ctx.expect_record = True
    report = run_preflight(ctx)
    if not report.passed:
        raise Refused(f"preflight failed ({', '.join(r.name for r in report.failures)}): no go-live record written",
                      report)
    record = build_record(ctx, report, names, risks.strip(), ctx.now_ms())
    return report, write_record(record, Path(ctx.settings.golive_record))
