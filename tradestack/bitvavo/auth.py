"""Bitvavo API-key authentication (reference §2): REST headers and the WS ``authenticate`` frame.

    signature = hex(HMAC_SHA256(secret, timestamp + METHOD + "/v2" + pathWithQuery + body))

``pathWithQuery`` is the path after ``/v2`` with its query string exactly as sent; ``body`` is the
JSON body exactly as sent (POST/PUT), empty for GET/DELETE. The WS signs ``GET`` + ``/websocket``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

DEFAULT_WINDOW_MS = 10_000
MIN_WINDOW_MS = 100
MAX_WINDOW_MS = 60_000


def sign(secret: str, timestamp_ms: int, method: str, path_with_query: str, body: str) -> str:
    """Lower-case hex HMAC-SHA256 of ``timestamp + METHOD + "/v2" + path_with_query + body``."""
    msg = f"{timestamp_ms}{method.upper()}/v2{path_with_query}{body}"
    return hmac.new(secret.encode(), msg.encode(), hashlib.sha256).hexdigest()


def auth_headers(key: str, secret: str, ts: int, method: str, path_with_query: str, body: str,
                 window_ms: int = DEFAULT_WINDOW_MS) -> dict[str, str]:
    """The four ``Bitvavo-Access-*`` headers of one signed REST request."""
    return {
        "Bitvavo-Access-Key": key,
        "Bitvavo-Access-Timestamp": str(ts),
        "Bitvavo-Access-Signature": sign(secret, ts, method, path_with_query, body),
        "Bitvavo-Access-Window": str(window_ms),
    }


def ws_auth_frame(key: str, secret: str, ts: int, window_ms: int = DEFAULT_WINDOW_MS) -> dict[str, Any]:
    """The WS ``authenticate`` action (signed over ``timestamp + "GET/v2/websocket"``)."""
    return {"action": "authenticate", "key": key, "signature": sign(secret, ts, "GET", "/websocket", ""),
            "timestamp": ts, "window": window_ms}


@dataclass(frozen=True, slots=True)
class Credentials:
    """An API key and its secret (kept out of ``repr``), with the access window to sign with."""

    key: str
    secret: str = field(repr=False)
    window_ms: int = DEFAULT_WINDOW_MS

    def __post_init__(self) -> None:
        if not self.key or not self.secret:
            raise ValueError("an API key and secret are required")
        if not MIN_WINDOW_MS <= self.window_ms <= MAX_WINDOW_MS:
            raise ValueError(f"window_ms must be within {MIN_WINDOW_MS}..{MAX_WINDOW_MS}, got {self.window_ms}")

    def headers(self, ts: int, method: str, path_with_query: str, body: str) -> dict[str, str]:
        return auth_headers(self.key, self.secret, ts, method, path_with_query, body, self.window_ms)

    def ws_frame(self, ts: int) -> dict[str, Any]:
        return ws_auth_frame(self.key, self.secret, ts, self.window_ms)


__all__ = ["Credentials", "auth_headers", "sign", "ws_auth_frame"]
