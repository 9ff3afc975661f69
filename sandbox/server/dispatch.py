"""One path for every API call, REST or WS: rate limit, faults, engine call, metrics.

Auth is checked by the transport (headers vs. the socket's ``authenticate``); everything after
that is the same here, so both transports share budgets, faults and error shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandbox.engine.errors import ExchangeError
from sandbox.server.endpoints import Endpoint, Params
from sandbox.server.errors import ApiError, auth_required, server_error
from sandbox.server.faults import FaultInjector, LostResponseRule
from sandbox.server.metrics import Metrics
from sandbox.server.ratelimit import Budget, RateLimiter
from tradestack.logs import get_logger

log = get_logger(__name__)

API_ERRORS = (ApiError, ExchangeError)


@dataclass(slots=True)
class Outcome:
    """Result of one call: a JSON-able ``result`` or an ``error``; ``lost`` = answer must be lost."""

    result: Any = None
    error: ApiError | ExchangeError | None = None
    budget: Budget | None = None
    lost: LostResponseRule | None = None


def concrete_path(ep: Endpoint, market: str | None) -> str:
    return ep.name.replace("{market}", market or "") if market is not None else ep.name


class Dispatcher:
    def __init__(
        self,
        exchange: Any,
        limiter: RateLimiter,
        faults: FaultInjector,
        metrics: Metrics,
        after_call: Callable[[], None] | None = None,
    ) -> None:
        self.exchange = exchange
        self.limiter = limiter
        self.faults = faults
        self.metrics = metrics
        # Called after every successful engine call: lets the market loop publish order/fill
        # events right away instead of at its next tick.
        self._after_call = after_call

    async def execute(
        self,
        ep: Endpoint,
        *,
        api_key: str | None,
        ip: str,
        market: str | None,
        params: Params,
        is_ws: bool,
    ) -> Outcome:
        out = Outcome()
        ident, is_key = self.limiter.identity(api_key, ip)
        path = concrete_path(ep, market)
        try:
            if ep.private and not api_key:
                raise auth_required()
            out.budget = self.limiter.charge(ident, ep.weight(params), is_key)
            await self.faults.before(path, ep.method, is_ws=is_ws)
            out.result = ep.call(self.exchange, api_key, market, params)
        except API_ERRORS as exc:
            out.error = exc
        except Exception:  # noqa: BLE001 - an engine bug must answer 101, like the real "unknown error"
            log.exception("engine_call_failed", endpoint=ep.name, method=ep.method)
            out.error = server_error(101)
        if out.budget is None:
            out.budget = self.limiter.peek(ident)
        if ep.ws_action == "privateCreateOrder":
            self._count_order(params, out)
        if out.error is None:
            if self._after_call is not None:
                self._after_call()
            out.lost = await self.faults.lost_response(path, ep.method, is_ws=is_ws)
        status = out.error.http_status if out.error is not None else 200
        self.metrics.requests.labels(f"{ep.method} {ep.name}", str(status), "ws" if is_ws else "rest").inc()
        return out

    def _count_order(self, params: Params, out: Outcome) -> None:
        order_type = str(params.get("orderType", "unknown"))[:32]
        if out.error is not None:
            outcome = f"error_{out.error.error_code}"
        elif isinstance(out.result, dict):
            outcome = str(out.result.get("status", "accepted"))
        else:
            outcome = "accepted"
        self.metrics.orders.labels(order_type, outcome).inc()
