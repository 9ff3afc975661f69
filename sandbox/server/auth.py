"""Bitvavo HMAC-SHA256 authentication, for REST headers and the WS ``authenticate`` action.

signature = hex(HMAC_SHA256(secret, timestamp + METHOD + "/v2" + path_with_raw_query + body))
where ``body`` is the compact JSON of the received body (the SDK signs compact JSON but sends it
with spaces), and nothing for an empty body or a ``{}`` body (the SDK sends ``{}`` on GET/DELETE).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from typing import Any

from sandbox.server.errors import ApiError, auth_required, invalid_json

API_KEY_LENGTH = 64  # Bitvavo keys are 64 characters; anything else is 301 before any lookup
DEFAULT_WINDOW_MS = 10_000
MIN_WINDOW_MS = 100
MAX_WINDOW_MS = 60_000
# A client clock slightly ahead of ours is tolerated (real-server tolerance is unknown).
FUTURE_SKEW_MS = 1_000

SecretLookup = Callable[[str], str | None]


def sign(secret: str, timestamp: int | str, method: str, path_qs: str, body: str = "") -> str:
    msg = f"{timestamp}{method.upper()}{path_qs}{body}"
    return hmac.new(secret.encode(), msg.encode(), hashlib.sha256).hexdigest()


def canonical_body(raw: bytes) -> tuple[str, Any]:
    """(string to sign, parsed body) for a raw request body; '' / None when empty or ``{}``."""
    text = raw.decode("utf-8", errors="strict").strip() if raw else ""
    if not text:
        return "", None
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise invalid_json() from exc
    if parsed == {}:
        return "", None
    return json.dumps(parsed, separators=(",", ":")), parsed


def _int_field(value: Any, code: int, text: str) -> int:
    if isinstance(value, bool):
        raise ApiError(code, text, 403)
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError as exc:
        raise ApiError(code, text, 403) from exc


def verify(
    *,
    key: str,
    signature: str | None,
    timestamp: Any,
    window: Any,
    method: str,
    path_qs: str,
    body: str,
    secret_for: SecretLookup,
    now_ms: int,
) -> str:
    """Check one signed request; returns the API key or raises ApiError 300..309 (HTTP 403)."""
    if not key or signature is None or timestamp in (None, ""):
        raise auth_required()
    if len(key) != API_KEY_LENGTH:
        raise ApiError(301, "API Key must be of length 64.", 403)
    secret = secret_for(key)
    if secret is None:
        raise ApiError(305, "No active API key found.", 403)
    ts = _int_field(timestamp, 302, "Timestamp must be provided in milliseconds.")
    if window in (None, ""):
        win = DEFAULT_WINDOW_MS
    else:
        win = _int_field(window, 303, "Window must be between 100 and 60000 ms.")
    if not MIN_WINDOW_MS <= win <= MAX_WINDOW_MS:
        raise ApiError(303, "Window must be between 100 and 60000 ms.", 403)
    if now_ms - ts > win or ts - now_ms > FUTURE_SKEW_MS:
        raise ApiError(304, "Request was not received within acceptable window (default 10s) of timestamp.", 403)
    if len(signature) != 64:
        raise ApiError(
            308, "The signature length is invalid (HMAC-SHA256 should return a 64 length hexadecimal string).", 403
        )
    expected = sign(secret, ts if isinstance(timestamp, int) else str(timestamp).strip(), method, path_qs, body)
    if not hmac.compare_digest(expected, signature.lower()):
        raise ApiError(309, "The signature is invalid.", 403)
    return key


def verify_headers(
    headers: Mapping[str, str],
    *,
    method: str,
    path_qs: str,
    body: str,
    secret_for: SecretLookup,
    now_ms: int,
) -> str | None:
    """API key of a signed REST request, None if unsigned; raises ApiError when signed badly."""
    key = headers.get("Bitvavo-Access-Key")
    if key is None:
        return None
    return verify(
        key=key,
        signature=headers.get("Bitvavo-Access-Signature"),
        timestamp=headers.get("Bitvavo-Access-Timestamp"),
        window=headers.get("Bitvavo-Access-Window"),
        method=method,
        path_qs=path_qs,
        body=body,
        secret_for=secret_for,
        now_ms=now_ms,
    )


def verify_ws(msg: Mapping[str, Any], *, secret_for: SecretLookup, now_ms: int) -> str:
    """API key of a WS ``authenticate`` message (signed over timestamp + 'GET/v2/websocket')."""
    return verify(
        key=str(msg.get("key") or ""),
        signature=None if msg.get("signature") is None else str(msg.get("signature")),
        timestamp=msg.get("timestamp"),
        window=msg.get("window"),
        method="GET",
        path_qs="/v2/websocket",
        body="",
        secret_for=secret_for,
        now_ms=now_ms,
    )
