"""Fault injection: latency, 5xx answers, lost responses, bans, WS drops, nonce gaps, rejects, halts.

A fault spec is JSON (``--faults``, ``SANDBOX_FAULTS`` or ``POST /admin/faults``)::

    {"latency": {"ms": 50, "jitter_ms": 10, "path": "^/v2/order$"},
     "errors": [{"code": 107, "path": "^/v2/order$", "method": "POST", "next": 2}],
     "lost_responses": [{"path": "^/v2/order$", "method": "POST", "next": 1, "mode": "timeout"}],
     "ws_disconnect": {"every_secs": 30},
     # one-shot actions, applied when the spec is applied:
     "ban": [{"api_key": "..."}],  "ws_drop": "all" | "one" | 3,
     "nonce_gap": ["BTC-EUR"],  "reject_orders": {"n": 2, "error_code": 216},
     "market_status": {"BTC-EUR": "halted"},  "clear": true}

Rules match ``path`` (a regex, searched) against the REST path (``/v2/order``, ``/v2/BTC-EUR/book``);
WS actions are matched as their REST twin, so one rule covers both unless ``ws`` is false.
``next: N`` fires on the next N matching requests (deterministic); ``probability`` uses a
seeded RNG. "Lost response" rules let the request execute, then lose the answer: ``timeout``
replies 109 (HTTP 503 unless ``http_status`` says otherwise), ``drop`` closes the connection.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sandbox.server.errors import SERVER_ERRORS, ApiError, server_error
from tradestack.logs import get_logger

log = get_logger(__name__)


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = ".*"
    method: str | None = None
    next: int | None = Field(None, ge=0)
    probability: float | None = Field(None, ge=0, le=1)
    ws: bool = True

    @field_validator("path")
    @classmethod
    def _regex(cls, v: str) -> str:
        re.compile(v)
        return v

    @field_validator("method")
    @classmethod
    def _upper(cls, v: str | None) -> str | None:
        return v.upper() if v else v

    def matches(self, path: str, method: str, is_ws: bool) -> bool:
        if is_ws and not self.ws:
            return False
        if self.method and self.method != method:
            return False
        return re.search(self.path, path) is not None

    def exhausted(self) -> bool:
        return self.next is not None and self.next <= 0 and self.probability is None


class LatencyRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ms: float = Field(0, ge=0)
    jitter_ms: float = Field(0, ge=0)
    path: str = ".*"
    ws: bool = True


class ErrorRule(_Rule):
    code: int = 109
    http_status: int | None = None

    @field_validator("code")
    @classmethod
    def _known(cls, v: int) -> int:
        if v not in SERVER_ERRORS:
            raise ValueError(f"error code must be one of {sorted(SERVER_ERRORS)}")
        return v


class LostResponseRule(_Rule):
    mode: Literal["timeout", "drop"] = "timeout"
    code: int = 109
    http_status: int | None = None
    delay_ms: float = Field(0, ge=0)


class WsDisconnect(BaseModel):
    model_config = ConfigDict(extra="forbid")

    every_secs: float | None = Field(None, gt=0)
    mode: Literal["close", "abort"] = "close"


class BanAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: str | None = None
    ip: str | None = None
    secs: float | None = Field(None, gt=0)


class RejectAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(1, ge=0)
    error_code: int = 216
    order_type: str | None = None  # e.g. "stopLoss": only such orders are rejected (the exchange refusing stops)


class FaultSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int | None = None
    clear: bool = False
    latency: LatencyRule | None = None
    errors: list[ErrorRule] = []
    lost_responses: list[LostResponseRule] = []
    ws_disconnect: WsDisconnect | None = None
    ban: list[BanAction] = []
    ws_drop: Literal["all", "one"] | int | None = None
    nonce_gap: list[str] = []
    reject_orders: RejectAction | None = None
    market_status: dict[str, str] = {}


class FaultTargets(Protocol):
    """What one-shot actions act on (wired by the server)."""

    def ban(self, api_key: str | None, ip: str | None, secs: float | None) -> int: ...
    def drop_ws(self, which: str | int, mode: str) -> int: ...
    def skip_book_nonce(self, market: str) -> None: ...
    def reject_next_orders(self, n: int, error_code: int, order_type: str | None = None) -> None: ...
    def set_market_status(self, market: str, status: str) -> None: ...


Sleep = Callable[[float], Awaitable[Any]]


class FaultInjector:
    def __init__(
        self,
        seed: int = 1,
        *,
        sleep: Sleep = asyncio.sleep,
        on_inject: Callable[[str], None] | None = None,
    ) -> None:
        self._rng = random.Random(seed)
        self._sleep = sleep
        self._on_inject = on_inject
        self._targets: FaultTargets | None = None
        self.latency: LatencyRule | None = None
        self.errors: list[ErrorRule] = []
        self.lost_responses: list[LostResponseRule] = []
        self.ws_disconnect: WsDisconnect | None = None
        self.injected: Counter[str] = Counter()

    def bind(self, targets: FaultTargets) -> None:
        self._targets = targets

    # -- configuration -------------------------------------------------------------------

    def apply(self, spec: FaultSpec | dict[str, Any]) -> dict[str, Any]:
        """Store the rules of ``spec`` (appending to existing ones) and run its actions now."""
        if not isinstance(spec, FaultSpec):
            spec = FaultSpec.model_validate(spec)
        if spec.clear:
            self.latency, self.errors, self.lost_responses, self.ws_disconnect = None, [], [], None
        if spec.seed is not None:
            self._rng.seed(spec.seed)
        if spec.latency is not None:
            self.latency = spec.latency if (spec.latency.ms or spec.latency.jitter_ms) else None
        self.errors.extend(spec.errors)
        self.lost_responses.extend(spec.lost_responses)
        if spec.ws_disconnect is not None:
            self.ws_disconnect = spec.ws_disconnect if spec.ws_disconnect.every_secs else None
        actions = self._run_actions(spec)
        log.info("faults_applied", spec=spec.model_dump(exclude_defaults=True), actions=actions)
        return {"applied": actions, **self.snapshot()}

    def _run_actions(self, spec: FaultSpec) -> dict[str, Any]:
        done: dict[str, Any] = {}
        t = self._targets
        if t is None:
            if spec.ban or spec.ws_drop is not None or spec.nonce_gap or spec.reject_orders or spec.market_status:
                raise RuntimeError("fault actions need a running server")
            return done
        if spec.ban:
            done["ban"] = [t.ban(b.api_key, b.ip, b.secs) for b in spec.ban]
            self._count("ban", len(spec.ban))
        if spec.ws_drop is not None:
            done["ws_drop"] = t.drop_ws(spec.ws_drop, self.ws_disconnect.mode if self.ws_disconnect else "close")
            self._count("ws_drop", max(done["ws_drop"], 0))
        for market in spec.nonce_gap:
            t.skip_book_nonce(market)
            self._count("nonce_gap")
        if spec.nonce_gap:
            done["nonce_gap"] = spec.nonce_gap
        if spec.reject_orders is not None:
            t.reject_next_orders(spec.reject_orders.n, spec.reject_orders.error_code, spec.reject_orders.order_type)
            done["reject_orders"] = spec.reject_orders.n
            self._count("reject_orders")
        for market, status in spec.market_status.items():
            t.set_market_status(market, status)
            self._count("market_status")
        if spec.market_status:
            done["market_status"] = spec.market_status
        return done

    def snapshot(self) -> dict[str, Any]:
        return {
            "latency": self.latency.model_dump() if self.latency else None,
            "errors": [r.model_dump() for r in self.errors],
            "lost_responses": [r.model_dump() for r in self.lost_responses],
            "ws_disconnect": self.ws_disconnect.model_dump() if self.ws_disconnect else None,
            "injected": dict(self.injected),
        }

    # -- per request ---------------------------------------------------------------------

    def _count(self, kind: str, n: int = 1) -> None:
        self.injected[kind] += n
        if self._on_inject is not None:
            for _ in range(n):
                self._on_inject(kind)

    def _fires(self, rule: _Rule) -> bool:
        if rule.next is not None and rule.next > 0:
            rule.next -= 1
            return True
        if rule.probability is not None:
            return self._rng.random() < rule.probability
        return rule.next is None  # a rule with neither counter nor probability always fires

    def _first_firing(self, rules: list[Any], path: str, method: str, is_ws: bool) -> Any | None:
        for rule in rules:
            if rule.matches(path, method, is_ws) and self._fires(rule):
                rules[:] = [r for r in rules if not r.exhausted()]
                return rule
        return None

    async def before(self, path: str, method: str, *, is_ws: bool = False) -> None:
        """Latency, then maybe a 5xx instead of executing the request (raises ApiError)."""
        lat = self.latency
        if lat is not None and (not is_ws or lat.ws) and re.search(lat.path, path):
            delay = lat.ms + (self._rng.uniform(-lat.jitter_ms, lat.jitter_ms) if lat.jitter_ms else 0.0)
            self._count("latency")
            await self._sleep(max(delay, 0.0) / 1000.0)
        if self.errors:
            rule = self._first_firing(self.errors, path, method, is_ws)
            if rule is not None:
                self._count(f"error_{rule.code}")
                raise server_error(rule.code, rule.http_status)

    async def lost_response(self, path: str, method: str, *, is_ws: bool = False) -> LostResponseRule | None:
        """After a request executed: the rule whose answer must be lost, if any."""
        if not self.lost_responses:
            return None
        rule = self._first_firing(self.lost_responses, path, method, is_ws)
        if rule is None:
            return None
        self._count(f"lost_response_{rule.mode}")
        if rule.delay_ms:
            await self._sleep(rule.delay_ms / 1000.0)
        return rule

    @staticmethod
    def lost_error(rule: LostResponseRule) -> ApiError:
        return server_error(rule.code, rule.http_status)
