"""aiohttp routes: REST ``/v2/...`` (one catch-all through the endpoint table), WS, admin, metrics.

Every REST answer is JSON (errors and unknown paths included) and carries the rate-limit headers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from sandbox.server import auth
from sandbox.server.dispatch import API_ERRORS, Dispatcher
from sandbox.server.endpoints import resolve
from sandbox.server.errors import error_fields, invalid_endpoint, invalid_json
from sandbox.server.faults import FaultInjector
from sandbox.server.metrics import Metrics
from sandbox.server.ratelimit import Budget
from sandbox.server.ws import WsHandler
from tradestack.logs import get_logger

log = get_logger(__name__)

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(obj: Any, status: int = 200, budget: Budget | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(obj),
        status=status,
        content_type="application/json",
        headers=budget.headers() if budget is not None else None,
    )


def error_response(exc: BaseException, budget: Budget | None) -> web.Response:
    code, text, status = error_fields(exc)
    return json_response({"errorCode": code, "error": text}, status, budget)


class RestApi:
    def __init__(
        self,
        dispatcher: Dispatcher,
        exchange: Any,
        now_ms: Callable[[], int],
        metrics: Metrics,
    ) -> None:
        self.dispatcher = dispatcher
        self.exchange = exchange
        self.now_ms = now_ms
        self.metrics = metrics

    def _answer_error(self, request: web.Request, exc: BaseException, api_key: str | None = None) -> web.Response:
        limiter = self.dispatcher.limiter
        ident, _ = limiter.identity(api_key, request.remote or "?")
        code, _text, status = error_fields(exc)
        self.metrics.requests.labels("unmatched" if code == 110 else "auth", str(status), "rest").inc()
        return error_response(exc, limiter.peek(ident))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        method = request.method
        path = request.path
        resolved = resolve(method, path[3:]) if path.startswith("/v2/") else None
        if resolved is None:
            return self._answer_error(request, invalid_endpoint())
        ep, market = resolved
        raw = await request.read()
        try:
            body_str, body = auth.canonical_body(raw)
            api_key = auth.verify_headers(
                request.headers,
                method=method,
                path_qs=request.raw_path,
                body=body_str,
                secret_for=self.exchange.secret_for,
                now_ms=self.now_ms(),
            )
        except API_ERRORS as exc:
            return self._answer_error(request, exc)
        if method in ("POST", "PUT"):
            if body is None:
                body = {}
            if not isinstance(body, dict):
                return self._answer_error(request, invalid_json(), api_key)
            params: dict[str, Any] = {**request.query, **body}
        else:
            params = dict(request.query)
        out = await self.dispatcher.execute(
            ep, api_key=api_key, ip=request.remote or "?", market=market, params=params, is_ws=False
        )
        if out.lost is not None:
            if out.lost.mode == "drop":
                log.info("rest_response_lost", path=path, method=method, mode="drop")
                # The request was executed; the client only sees the connection die.
                if request.transport is not None:
                    request.transport.abort()
                raise ConnectionResetError("response dropped by fault injection")
            out.error = self.dispatcher.faults.lost_error(out.lost)
        if out.error is not None:
            return error_response(out.error, out.budget)
        return json_response(out.result, 200, out.budget)


class AdminApi:
    """Loopback-only, unauthenticated helpers for tests and operators."""

    def __init__(self, exchange: Any, faults: FaultInjector, health: Callable[[], dict[str, Any]]) -> None:
        self.exchange = exchange
        self.faults = faults
        self.health_info = health

    async def health(self, request: web.Request) -> web.Response:
        return json_response(self.health_info())

    async def get_faults(self, request: web.Request) -> web.Response:
        return json_response(self.faults.snapshot())

    async def post_faults(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            spec = orjson.loads(raw or b"{}")
            return json_response(self.faults.apply(spec))
        except orjson.JSONDecodeError:
            return json_response({"errorCode": 102, "error": "Invalid JSON."}, 400)
        except ValidationError as exc:
            return json_response({"errorCode": 205, "error": f"invalid fault spec: {exc.errors(include_url=False)}"}, 400)
        except API_ERRORS as exc:
            return error_response(exc, None)

    async def delete_faults(self, request: web.Request) -> web.Response:
        return json_response(self.faults.apply({"clear": True}))

    async def orders(self, request: web.Request) -> web.Response:
        return json_response(self.exchange.admin_orders(client_order_id=request.query.get("clientOrderId")))

    async def save_state(self, request: web.Request) -> web.Response:
        result = self.exchange.save_state()
        return json_response({"saved": True, "result": result})


@web.middleware
async def loopback_admin(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/admin/") and request.remote not in LOOPBACK:
        return json_response({"errorCode": 320, "error": "Admin endpoints are loopback only."}, 403)
    return await handler(request)


def build_app(rest: RestApi, ws: WsHandler, admin: AdminApi, metrics: Metrics) -> web.Application:
    app = web.Application(middlewares=[loopback_admin], client_max_size=4 * 1024 * 1024)

    async def ws_or_rest(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await ws(request)
        return await rest.handle(request)

    async def metrics_view(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": metrics.content_type})

    r = app.router
    for p in ("/", "/v2", "/v2/"):
        r.add_get(p, ws_or_rest)
    r.add_get("/metrics", metrics_view)
    r.add_get("/admin/health", admin.health)
    r.add_get("/admin/faults", admin.get_faults)
    r.add_post("/admin/faults", admin.post_faults)
    r.add_delete("/admin/faults", admin.delete_faults)
    r.add_get("/admin/orders", admin.orders)
    r.add_post("/admin/state/save", admin.save_state)
    r.add_route("*", "/{tail:.*}", rest.handle)
    return app
