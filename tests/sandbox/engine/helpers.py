"""Helpers for engine tests: an injected clock and small exchanges (no wall clock, no I/O)."""

from __future__ import annotations

from decimal import Decimal

from sandbox.engine import AccountSpec, Exchange, SandboxConfig
from sandbox.engine.accounts import FEE_ACCOUNT, LP_ACCOUNT

T0 = 1_700_000_000_000
ALICE, BOB = "alice-key", "bob-key"


class Clock:
    def __init__(self, t: int = T0) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t

    def advance(self, ms: int) -> None:
        self.t += ms


def accounts(**balances: dict[str, str]) -> dict[str, AccountSpec]:
    return {key: AccountSpec(secret=f"{key}-secret", balances={a: Decimal(v) for a, v in bal.items()})
            for key, bal in balances.items()}


RICH = {"EUR": "1000000", "BTC": "10", "ETH": "100"}


def quiet_exchange(clock: Clock | None = None, **kw) -> Exchange:
    """No simulated liquidity: the book holds only what tests put there."""
    cfg = SandboxConfig(markets=["BTC-EUR", "ETH-EUR"], history_hours=0, simulate=False,
                        accounts=kw.pop("accounts", None) or {
                            ALICE: AccountSpec("a-secret", {k: Decimal(v) for k, v in RICH.items()}),
                            BOB: AccountSpec("b-secret", {k: Decimal(v) for k, v in RICH.items()})},
                        **kw)
    return Exchange(cfg, clock or Clock())


def live_exchange(clock: Clock | None = None, **kw) -> Exchange:
    kw.setdefault("markets", ["BTC-EUR", "ETH-EUR", "XRP-EUR"])
    kw.setdefault("history_hours", 0.5)
    kw.setdefault("accounts", {ALICE: AccountSpec("a-secret", {k: Decimal(v) for k, v in RICH.items()})})
    return Exchange(SandboxConfig(**kw), clock or Clock())


def order(ex: Exchange, key: str, market: str, side: str, order_type: str = "limit", **fields) -> dict:
    body = {"market": market, "side": side, "orderType": order_type, "operatorId": 1}
    body.update({k: v for k, v in fields.items()})
    return ex.create_order(key, body)


def totals(ex: Exchange) -> dict[str, Decimal]:
    """Every asset summed over users, liquidity providers, fees and withdrawals."""
    out: dict[str, Decimal] = {}
    for acct in ex.accounts.values():
        for asset, b in acct.balances.items():
            out[asset] = out.get(asset, Decimal(0)) + b.available + b.in_order
    for amounts in ex.ledger.amounts.values():
        for asset, v in amounts.items():
            out[asset] = out.get(asset, Decimal(0)) + v
    return {a: v for a, v in out.items() if v != 0}


def check_invariants(ex: Exchange) -> None:
    """Balances non-negative, inOrder == sum of open orders' holds, filled <= amount, book uncrossed."""
    for key, acct in ex.accounts.items():
        held: dict[str, Decimal] = {}
        for (api_key, _m), opened in ex.open_orders.items():
            if api_key != key:
                continue
            for o in opened.values():
                held[o.on_hold_currency] = held.get(o.on_hold_currency, Decimal(0)) + o.on_hold
        for asset, b in acct.balances.items():
            assert b.available >= 0, (key, asset, b)
            assert b.in_order >= 0, (key, asset, b)
            assert b.in_order == held.get(asset, Decimal(0)), (key, asset, b, held.get(asset))
    for o in ex.order_index.values():
        if o.amount is not None:
            assert o.filled_amount <= o.amount
            assert o.amount_remaining >= 0
            if o.is_open:
                assert o.filled_amount + o.amount_remaining == o.amount
        assert sum((f.amount for f in o.fills), Decimal(0)) == o.filled_amount
        if not o.is_open:
            assert o.on_hold == 0
    for ms in ex.mstates.values():
        bid, ask = ms.book.best_bid(), ms.book.best_ask()
        if bid is not None and ask is not None and ms.spec.status == "trading":
            assert bid < ask, (ms.market, bid, ask)
        for side in (ms.book.bids, ms.book.asks):
            for level in side.levels.values():
                assert level.total == sum((r.remaining for r in level.orders.values()), Decimal(0))
                assert all(r.remaining > 0 for r in level.orders.values())


__all__ = ["ALICE", "BOB", "FEE_ACCOUNT", "LP_ACCOUNT", "T0"]
