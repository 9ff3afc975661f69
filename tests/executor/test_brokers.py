"""RealBroker's open-orders listing: every market once (start-up reconciliation, orphans included), then
only the markets of our orders, so polling while the account socket is down stays within the rate limit
(GET /ordersOpen weighs 100 without a market, 5 with one)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any, cast

from services.trader_executor.app.brokers import RealBroker
from tradestack.bitvavo.orders import OrderRequest, OrderState
from tradestack.bitvavo.private import BitvavoPrivate


def state(market: str, coid: str | None = None) -> OrderState:
    return OrderState(order_id=f"oid-{market}-{coid}", market=market, side="sell", order_type="stopLoss",
                      status="awaitingTrigger", client_order_id=coid, amount=Decimal("0.01"),
                      amount_remaining=Decimal("0.01"), trigger_price=Decimal("50000"), created=1, updated=1)


class FakePrivate:
    def __init__(self, open_orders: list[OrderState]) -> None:
        self.orders = open_orders
        self.calls: list[tuple[str, Any]] = []

    async def open_orders(self, market: str | None = None) -> list[OrderState]:
        self.calls.append(("open_orders", market))
        return [o for o in self.orders if market is None or o.market == market]

    async def place_order(self, req: OrderRequest) -> OrderState:
        self.calls.append(("place", req.market))
        return state(req.market, req.client_order_id)

    async def get_order(self, market: str, *, client_order_id: str) -> OrderState | None:
        self.calls.append(("get", market))
        return None


def test_the_first_listing_covers_every_market_later_ones_only_ours() -> None:
    private = FakePrivate([state("BTC-EUR", "ours"), state("DOGE-EUR")])  # DOGE-EUR: a person's order
    broker = RealBroker(cast(BitvavoPrivate, private))

    async def scenario() -> None:
        assert len(await broker.open_orders()) == 2  # start: GET /ordersOpen (weight 100)
        await broker.get("ETH-EUR", "x")  # an order of ours looked up in a third market
        await broker.open_orders()  # a poll: one listing per market (weight 5 each)
        await broker.place(OrderRequest(market="SOL-EUR", side="buy", order_type="market", client_order_id="y",
                                        amount=Decimal("1")))
        assert [o.market for o in await broker.open_orders()] == ["BTC-EUR", "DOGE-EUR"]

    asyncio.run(scenario())
    listings = [m for kind, m in private.calls if kind == "open_orders"]
    assert listings == [None, "BTC-EUR", "DOGE-EUR", "ETH-EUR", "BTC-EUR", "DOGE-EUR", "ETH-EUR", "SOL-EUR"]


def test_a_failed_first_listing_is_made_again_in_full() -> None:
    class Failing(FakePrivate):
        async def open_orders(self, market: str | None = None) -> list[OrderState]:
            self.calls.append(("open_orders", market))
            if len(self.calls) == 1:
                raise OSError("down")
            return []

    private = Failing([])
    broker = RealBroker(cast(BitvavoPrivate, private))

    async def scenario() -> None:
        try:
            await broker.open_orders()
        except OSError:
            pass
        await broker.open_orders()

    asyncio.run(scenario())
    assert [m for _, m in private.calls] == [None, None]
