"""Bitvavo-shaped errors raised by the server layer (auth, rate limits, routing, faults).

The engine raises its own ``ExchangeError`` with the same three fields; both render the same.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, error_code: int, error: str, http_status: int) -> None:
        super().__init__(f"{error_code} {error}")
        self.error_code = error_code
        self.error = error
        self.http_status = http_status

    def body(self) -> dict[str, Any]:
        return {"errorCode": self.error_code, "error": self.error}


def error_fields(exc: BaseException) -> tuple[int, str, int]:
    """(errorCode, error, http status) of an ApiError or the engine's ExchangeError."""
    err: Any = exc  # either class: the same three attributes
    return int(err.error_code), str(err.error), int(err.http_status)


def auth_required() -> ApiError:
    return ApiError(300, "Authentication is required for this endpoint.", 403)


def invalid_endpoint() -> ApiError:
    return ApiError(110, "Invalid endpoint. Please check url and HTTP method.", 404)


def invalid_json() -> ApiError:
    return ApiError(102, "Invalid JSON.", 400)


# Texts of the 5xx family a fault can inject (reference §8).
SERVER_ERRORS: dict[int, tuple[str, int]] = {
    101: ("Unknown server error. Operation may or may not have succeeded.", 500),
    107: ("The matching engine is overloaded. Please wait 500ms and resubmit your order.", 503),
    108: ("The matching engine could not process your request in time. Please increase your access window or retry.", 503),
    109: ("The matching engine did not respond in time. Operation may or may not have succeeded.", 503),
    111: ("The matching engine is temporarily unavailable. Please try again later.", 503),
    # Bitvavo does not publish its WS requests-per-second limit, so the sandbox does not invent one;
    # a client's handling of 112 is tested by injecting it.
    112: ("Too many requests per second on this websocket. Please slow down.", 429),
}


def server_error(code: int, http_status: int | None = None) -> ApiError:
    text, status = SERVER_ERRORS.get(code, SERVER_ERRORS[101])
    return ApiError(code, text, http_status or status)
