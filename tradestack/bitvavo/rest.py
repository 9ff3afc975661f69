"""A small asyncio REST client for Bitvavo: public endpoints (book, candles, markets) and, through
``bitvavo.private.BitvavoPrivate``, signed private ones. Every request, any method, signed or not,
goes through ``BitvavoRest.request``: one budget, one ban handling, one metrics callback.

Rate limits (reference §7): 1000 weight points per minute per IP when unauthenticated (per API key
when signed), shared by every process on the host and by WS. Two guards:

- ``RateBudget``: our own sliding-minute budget (``points_per_min``, a share of the 1000 so
  several processes fit), checked before every request; one per process, public and private alike;
- the exchange's headers: ``bitvavo-ratelimit-remaining`` below ``reserve`` waits until
  ``bitvavo-ratelimit-resetat``; a 429/105 ban waits until the time in its message, then retries
  (for any method: a banned request was refused before it ran);
- with ``shared`` (``tradestack.ratelimit.SharedRateBudget``): the budget of the key (signed) or the
  IP (public) that every process on the host spends together, in Redis, fed by the same headers and
  bans; requests made under ``ratelimit.protective()`` may spend the reserve kept for protective
  orders.

GETs are idempotent: 5xx and timeouts retry with capped backoff. POST/PUT/DELETE are not retried on
a timeout, connection error or 5xx: the outcome is unknown, and ``RestUnavailable`` says so.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import urlencode

import aiohttp
import orjson
from yarl import URL

from tradestack.backoff import Backoff
from tradestack.bitvavo.auth import Credentials
from tradestack.clock import SYSTEM_CLOCK, Clock
from tradestack.errors import TradestackError, TransientError
from tradestack.logs import get_logger
from tradestack.ratelimit import PRIORITY, Priority, SharedRateBudget, ip_scope, key_scope

log = get_logger(__name__)

_BAN_AT = re.compile(r" at (\d+)\.")
IDEMPOTENT = frozenset({"GET"})
UNKNOWN_OUTCOME = "the outcome is unknown: look the order up by clientOrderId before retrying"


class RestError(TradestackError):
    """The exchange refused a request (4xx: fixing the request is the only cure)."""

    def __init__(self, status: int, error_code: int | None, message: str) -> None:
        super().__init__(f"HTTP {status} errorCode {error_code}: {message}")
        self.status = status
        self.error_code = error_code
        self.message = message


class RestUnavailable(RestError, TransientError):
    """No usable answer: a network error, a timeout or a 5xx, after the client's own retries. For an
    order the outcome is *unknown* (look it up by clientOrderId before any retry); a handler that
    lets it through has its message retried later (errors.py)."""


class OrderNotFound(RestError):
    """errorCode 240: no such order (or it is no longer there to update/cancel)."""


class InsufficientBalance(RestError):
    """errorCode 216: not enough available balance for the order."""


class DuplicateClientOrderId(RestError):
    """errorCode 220: an open order of this market already carries the clientOrderId."""


class AuthError(RestError):
    """errorCode 300..320 (HTTP 403): bad key, signature, timestamp/window, or missing permission."""


_BY_CODE: dict[int, type[RestError]] = {240: OrderNotFound, 216: InsufficientBalance, 220: DuplicateClientOrderId}


def rest_error(status: int, error_code: int | None, message: str) -> RestError:
    if status <= 0 or status >= 500:
        return RestUnavailable(status, error_code, message)
    cls = _BY_CODE.get(error_code) if error_code is not None else None
    if cls is None:
        cls = AuthError if error_code is not None and 300 <= error_code <= 320 else RestError
    return cls(status, error_code, message)


class RateBudget:
    """Client-side limits: a sliding one-minute window plus the exchange's own headers (pure)."""

    def __init__(self, points_per_min: int = 300, reserve: int = 100) -> None:
        self.points_per_min = points_per_min
        self.reserve = reserve
        self._spent: deque[tuple[float, int]] = deque()  # (monotonic s, weight)
        self._used = 0
        self.remaining: int | None = None  # last seen bitvavo-ratelimit-remaining
        self.reset_at_ms: int | None = None
        self.banned_until_ms: int = 0

    def delay(self, weight: int, now_s: float, now_ms: int, reserve: int | None = None) -> float:
        """Seconds to wait before spending ``weight`` now (0 = go); ``reserve`` overrides the points
        kept back from the exchange's remaining (0 for protective orders)."""
        if self.banned_until_ms > now_ms:
            return (self.banned_until_ms - now_ms) / 1000 + 0.05
        keep = self.reserve if reserve is None else reserve
        if self.remaining is not None and self.remaining - weight < keep and self.reset_at_ms:
            if self.reset_at_ms > now_ms:
                return (self.reset_at_ms - now_ms) / 1000 + 0.05
            self.remaining = None  # the window has reset
        while self._spent and self._spent[0][0] <= now_s - 60.0:
            self._used -= self._spent.popleft()[1]
        if self._used + weight > self.points_per_min and self._spent:
            return self._spent[0][0] + 60.0 - now_s + 0.001
        return 0.0

    def spend(self, weight: int, now_s: float) -> None:
        self._spent.append((now_s, weight))
        self._used += weight

    def observe(self, headers: Any) -> None:
        remaining = headers.get("bitvavo-ratelimit-remaining")
        reset_at = headers.get("bitvavo-ratelimit-resetat")
        if remaining is not None and str(remaining).lstrip("-").isdigit():
            self.remaining = int(remaining)
        if reset_at is not None and str(reset_at).isdigit():
            self.reset_at_ms = int(reset_at)

    def banned(self, message: str, now_ms: int) -> None:
        m = _BAN_AT.search(message or "")
        self.banned_until_ms = int(m.group(1)) if m else now_ms + 60_000


Sleep = Callable[[float], Awaitable[Any]]


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class BitvavoRest:
    # Weight of each endpoint (reference §4/§7, with the 2026-05-19 changes); also the metrics label.
    WEIGHTS = {
        "book": 1, "candles": 1, "markets": 1, "time": 1,
        "order_get": 1, "order_post": 1, "order_put": 1, "order_delete": 1,
        "orders": 5, "orders_open": 5, "orders_open_all": 100, "trades": 5, "balance": 5, "fees": 1,
    }

    def __init__(self, base_url: str, session: aiohttp.ClientSession | None = None, *,
                 points_per_min: int = 300, reserve: int = 100, timeout_s: float = 10.0, max_attempts: int = 5,
                 clock: Clock = SYSTEM_CLOCK, sleep: Sleep = asyncio.sleep,
                 on_request: Callable[[str, str], None] | None = None,
                 shared: SharedRateBudget | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.shared = shared
        self.ip_scope = ip_scope(URL(self.base_url).host or "unknown")
        self._session = session
        self._own_session = session is None
        self.budget = RateBudget(points_per_min, reserve)
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_attempts = max_attempts
        self.clock = clock
        self.sleep = sleep
        self.on_request = on_request  # (endpoint, outcome) for metrics
        self._lock = asyncio.Lock()  # one request at a time keeps the budget exact and simple

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def get(self, endpoint: str, path: str, params: dict[str, Any] | None = None) -> Any:
        return await self.request("GET", endpoint, path, params)

    async def request(self, method: str, endpoint: str, path: str, params: Mapping[str, Any] | None = None,
                      body: Mapping[str, Any] | None = None, *, credentials: Credentials | None = None) -> Any:
        """One API call: ``path`` is after the base URL (``/order``), ``params`` the query (None values
        dropped), ``body`` the JSON body (POST/PUT). Signed when ``credentials`` are given: the query
        and the compact JSON body are signed exactly as sent, with a timestamp taken after any budget
        wait. Returns the parsed JSON of a 200; raises ``RestError`` (a subclass by errorCode) or
        ``RestUnavailable``. Only GETs are retried on a timeout, connection error or 5xx."""
        method = method.upper()
        weight = self.WEIGHTS.get(endpoint, 1)
        query = urlencode([(k, _query_value(v)) for k, v in (params or {}).items() if v is not None])
        path_qs = f"{path}?{query}" if query else path
        url = URL(self.base_url + path_qs, encoded=True)  # the bytes we signed are the bytes sent
        body_text = json.dumps(body, separators=(",", ":")) if body is not None else ""
        idempotent = method in IDEMPOTENT
        scope = key_scope(credentials.key) if credentials is not None else self.ip_scope
        backoff = Backoff(0.2, 10.0)
        attempt = 0
        while True:
            attempt += 1
            async with self._lock:
                keep = 0 if PRIORITY.get() == "protective" else None
                while True:
                    wait = self.budget.delay(weight, self.clock.monotonic(), self.clock.now_ms(), keep)
                    if wait <= 0 and self.shared is not None:
                        wait = await self.shared.acquire(scope, weight) or 0.0  # None: Redis away, ours only
                    if wait <= 0:
                        break
                    log.info("rest_budget_wait", endpoint=endpoint, wait_s=round(wait, 3))
                    await self.sleep(wait)
                self.budget.spend(weight, self.clock.monotonic())
                headers = {"Content-Type": "application/json"} if body is not None else {}
                if credentials is not None:
                    headers.update(credentials.headers(self.clock.now_ms(), method, path_qs, body_text))
                try:
                    async with self._sess().request(method, url, data=body_text.encode() if body is not None else None,
                                                    headers=headers, timeout=self.timeout) as resp:
                        raw = await resp.read()
                        self.budget.observe(resp.headers)
                        status = resp.status
                        resp_headers = resp.headers
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    if not idempotent:
                        self._count(endpoint, "unknown")
                        log.error("rest_outcome_unknown", endpoint=endpoint, method=method, error=error)
                        raise RestUnavailable(0, None, f"{method} {path}: no answer ({error}); {UNKNOWN_OUTCOME}") from None
                    self._count(endpoint, "error")
                    if attempt >= self.max_attempts:
                        raise RestUnavailable(0, None, error) from None
                    log.warning("rest_request_failed", endpoint=endpoint, attempt=attempt, error=error)
                    status, raw = -1, b""
            if status == -1:
                await self.sleep(backoff.next_delay())
                continue
            if self.shared is not None:
                await self.shared.observe(scope, resp_headers)
            try:
                data = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                data = None
            if status == 200 and not (isinstance(data, dict) and "errorCode" in data):
                self._count(endpoint, "ok")
                return data
            code = data.get("errorCode") if isinstance(data, dict) else None
            message = str(data.get("error", "")) if isinstance(data, dict) else raw[:200].decode("utf-8", "replace")
            if status == 429 or code == 105:
                # Refused before it ran, whatever the method: wait out the ban, then send it again.
                self.budget.banned(message, self.clock.now_ms())
                if self.shared is not None:
                    await self.shared.banned(scope, self.budget.banned_until_ms)
                self._count(endpoint, "banned")
                log.error("rest_rate_limited", endpoint=endpoint, error=message,
                          banned_until=self.budget.banned_until_ms)
                continue  # the budget waits until the ban expires
            if status >= 500 and not idempotent:
                self._count(endpoint, "unknown")
                log.error("rest_outcome_unknown", endpoint=endpoint, method=method, status=status, error_code=code,
                          error=message)
                raise RestUnavailable(status, code, f"{message}; {UNKNOWN_OUTCOME}")
            if status >= 500 and attempt < self.max_attempts:
                self._count(endpoint, "retry")
                log.warning("rest_server_error", endpoint=endpoint, status=status, error_code=code, error=message)
                await self.sleep(backoff.next_delay())
                continue
            self._count(endpoint, "error")
            raise rest_error(status, code, message)

    async def wait_for_budget(self, weight: int = 1, *, credentials: Credentials | None = None,
                              priority: Priority | None = None, max_wait_s: float | None = None) -> float | None:
        """Wait, without spending and without holding the request lock, until a request of
        ``weight`` at ``priority`` would be granted; the seconds waited, or None (without waiting on)
        as soon as a wait for the *budget* would pass ``max_wait_s``. The executor asks here before it
        starts an entry, so a short budget delays or refuses entries and never holds up protective
        orders. A 105 ban is waited out whatever its length: it stops every request of the key, the
        protective ones too, so refusing the entry would gain nothing (reference §7)."""
        waited = 0.0
        scope = key_scope(credentials.key) if credentials is not None else self.ip_scope
        priority = priority or PRIORITY.get()
        while True:
            wait = self.budget.delay(weight, self.clock.monotonic(), self.clock.now_ms(),
                                     0 if priority == "protective" else None)
            banned = self.budget.banned_until_ms > self.clock.now_ms()
            if wait <= 0 and self.shared is not None:
                wait = await self.shared.acquire(scope, weight, priority, spend=False) or 0.0
                banned = banned or self.shared.last_why == "banned"
            if wait <= 0:
                return waited
            if max_wait_s is not None and waited + wait > max_wait_s and not banned:
                return None
            await self.sleep(wait)
            waited += wait

    def _count(self, endpoint: str, outcome: str) -> None:
        if self.on_request is not None:
            self.on_request(endpoint, outcome)

    async def book(self, market: str, depth: int | None = None) -> Any:
        return await self.get("book", f"/{market}/book", {"depth": depth} if depth else None)

    async def candles(self, market: str, interval: str, *, start: int | None = None, end: int | None = None,
                      limit: int | None = None) -> Any:
        params: dict[str, Any] = {"interval": interval}
        if start is not None:
            params["start"] = start
        if end is not None:
            params["end"] = end
        if limit is not None:
            params["limit"] = limit
        return await self.get("candles", f"/{market}/candles", params)

    async def markets(self) -> Any:
        return await self.get("markets", "/markets")
