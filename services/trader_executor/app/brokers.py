"""The executor's two brokers behind one async interface, so one driver runs paper, sandbox and live.

Both raise the same exceptions (tradestack/bitvavo/rest.py): ``RestError`` for a definite rejection
(with Bitvavo's ``error_code``), ``OrderNotFound`` when the order is not there, ``RestUnavailable``
when the outcome is unknown (the driver looks the order up by clientOrderId before anything else).

- ``PaperBrokerAdapter``: the pure ``PaperBroker`` (paper.py) fed by ``bitvavo:book``; before a market
  order bigger than the book it holds it fetches the depth from the public REST book (one call, weight
  1), and a book older than ``max_book_age_ms`` is dropped so the order is refused (431) rather than
  filled at a stale price.
- ``RealBroker``: Bitvavo's private REST (``BitvavoPrivate``); sandbox and live share it. Only its first
  listing of the open orders covers every market (weight 100); later ones cover the markets of our
  orders (weight 5 each), so polling while the account socket is down stays within the rate limit.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol

from services.trader_executor.app.paper import PaperBroker, PaperOrderError
from tradestack.bitvavo.orders import OrderRequest, OrderState
from tradestack.bitvavo.private import BitvavoPrivate
from tradestack.bitvavo.rest import BitvavoRest, OrderNotFound, RestError, RestUnavailable, rest_error
from tradestack.clock import Clock
from tradestack.logs import get_logger

log = get_logger(__name__)


class Broker(Protocol):
    async def place(self, req: OrderRequest) -> OrderState: ...

    async def get(self, market: str, client_order_id: str) -> OrderState | None: ...

    async def cancel(self, market: str, client_order_id: str) -> OrderState | None:
        """Cancel, then the order's final state; None when the exchange has no such order."""
        ...

    async def amend(self, market: str, client_order_id: str, *, amount: Decimal | None,
                    trigger_price: Decimal | None) -> OrderState: ...

    async def open_orders(self) -> list[OrderState]: ...

    async def balances(self) -> dict[str, tuple[Decimal, Decimal]]: ...


def _as_rest_error(exc: PaperOrderError) -> RestError:
    return rest_error(exc.http_status, exc.error_code, exc.message)


class PaperBrokerAdapter:
    def __init__(self, paper: PaperBroker, clock: Clock, rest: BitvavoRest | None = None,
                 max_book_age_ms: int = 10_000, depth: int = 50) -> None:
        self.paper = paper
        self.clock = clock
        self.rest = rest
        self.max_book_age_ms = max_book_age_ms
        self.depth = depth
        self.changed = False  # set by every call that may change the paper state (the service persists it)

    async def _fresh_book(self, req: OrderRequest) -> None:
        now = self.clock.now_ms()
        ts = self.paper.book_ts(req.market)
        if ts is not None and self.max_book_age_ms and now - ts > self.max_book_age_ms:
            self.paper.drop_book(req.market)
            ts = None
        if req.order_type != "market" or self.rest is None:
            return
        # A market order walks the depth: fetch it (the stream carries only the top).
        try:
            raw = await self.rest.book(req.market, depth=self.depth)
            bids = [(Decimal(p), Decimal(s)) for p, s in raw.get("bids", [])]
            asks = [(Decimal(p), Decimal(s)) for p, s in raw.get("asks", [])]
        except (RestError, OSError, TimeoutError, ValueError, TypeError, AttributeError) as exc:
            log.warning("paper_depth_unavailable", market=req.market, error=f"{type(exc).__name__}: {exc}",
                        fallback="the top of book from the stream" if ts is not None else "none: refused")
            return
        if bids or asks:
            self.paper.set_book(req.market, bids, asks, now)

    async def place(self, req: OrderRequest) -> OrderState:
        await self._fresh_book(req)
        self.changed = True
        try:
            return self.paper.place(req, self.clock.now_ms())
        except PaperOrderError as exc:
            raise _as_rest_error(exc) from None

    async def get(self, market: str, client_order_id: str) -> OrderState | None:
        return self.paper.get(market, client_order_id=client_order_id)

    async def cancel(self, market: str, client_order_id: str) -> OrderState | None:
        self.changed = True
        try:
            return self.paper.cancel(market, client_order_id=client_order_id, now_ms=self.clock.now_ms())
        except PaperOrderError as exc:
            if exc.error_code == 240:
                return self.paper.get(market, client_order_id=client_order_id)
            raise _as_rest_error(exc) from None

    async def amend(self, market: str, client_order_id: str, *, amount: Decimal | None,
                    trigger_price: Decimal | None) -> OrderState:
        self.changed = True
        try:
            return self.paper.update(market, client_order_id=client_order_id, amount=amount,
                                     trigger_price=trigger_price, now_ms=self.clock.now_ms())
        except PaperOrderError as exc:
            raise _as_rest_error(exc) from None

    async def open_orders(self) -> list[OrderState]:
        return self.paper.open_orders()

    async def balances(self) -> dict[str, tuple[Decimal, Decimal]]:
        return self.paper.balances()


class RealBroker:
    """Bitvavo's private REST. ``open_orders()``: the first call lists the open orders of every market
    (GET /ordersOpen, weight 100): the start-up reconciliation needs every order on the account, the
    orphans included. Later calls (the polls, which refresh our own orders; an unknown order is of no
    use to them) list only the markets this broker has sent, looked up, canceled or amended an order
    in, or listed an order of in the first call (weight 5 each). At the 2026 weights a full listing on
    every poll costs 100 points: every EXECUTOR_POLL_SECS (5 s) that is 1200 points a minute, more than
    Bitvavo's whole budget of 1000, and with the account socket down the polls starved the stops and
    exits of theirs (an order of ours missing from a narrowed listing is looked up by the manager
    anyway, weight 1)."""

    def __init__(self, private: BitvavoPrivate) -> None:
        self.private = private
        self.markets: set[str] = set()  # where our orders may rest (what later listings cover)
        self.listed_all = False

    async def place(self, req: OrderRequest) -> OrderState:
        self.markets.add(req.market)
        return await self.private.place_order(req)

    async def get(self, market: str, client_order_id: str) -> OrderState | None:
        self.markets.add(market)
        return await self.private.get_order(market, client_order_id=client_order_id)

    async def cancel(self, market: str, client_order_id: str) -> OrderState | None:
        # The cancel's answer has no fills: read the order's final state (it may have filled meanwhile).
        self.markets.add(market)
        await self.private.cancel_order(market, client_order_id=client_order_id)
        return await self.private.get_order(market, client_order_id=client_order_id)

    async def amend(self, market: str, client_order_id: str, *, amount: Decimal | None,
                    trigger_price: Decimal | None) -> OrderState:
        self.markets.add(market)
        return await self.private.update_order(market, client_order_id=client_order_id, amount=amount,
                                               trigger_price=trigger_price)

    async def open_orders(self) -> list[OrderState]:
        if not self.listed_all:
            orders = await self.private.open_orders()
            self.listed_all = True
            self.markets.update(o.market for o in orders)
            return orders
        out: list[OrderState] = []
        for market in sorted(self.markets):
            out += await self.private.open_orders(market)
        return out

    async def balances(self) -> dict[str, tuple[Decimal, Decimal]]:
        return await self.private.balance()


__all__ = ["Broker", "OrderNotFound", "PaperBrokerAdapter", "RealBroker", "RestUnavailable"]
