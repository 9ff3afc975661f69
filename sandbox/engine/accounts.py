"""Accounts: balances split into available / inOrder, and the fee schedule."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from . import errors as E
from .numbers import ZERO, fmt

# Pseudo-accounts that make asset conservation checkable: everything users pay or receive
# comes from / goes to one of these.
LP_ACCOUNT = "__liquidity__"  # simulated market makers and aggressive flow
FEE_ACCOUNT = "__fees__"  # fees charged to users


@dataclass
class Balance:
    available: Decimal = ZERO
    in_order: Decimal = ZERO


@dataclass
class Account:
    api_key: str
    secret: str
    taker_fee: Decimal
    maker_fee: Decimal
    balances: dict[str, Balance] = field(default_factory=dict)
    volume_30d: Decimal = ZERO

    def bal(self, asset: str) -> Balance:
        b = self.balances.get(asset)
        if b is None:
            b = Balance()
            self.balances[asset] = b
        return b

    def available(self, asset: str) -> Decimal:
        b = self.balances.get(asset)
        return b.available if b is not None else ZERO

    def reserve(self, asset: str, amount: Decimal) -> None:
        b = self.bal(asset)
        if amount > b.available:
            raise E.insufficient_balance()
        b.available -= amount
        b.in_order += amount

    def release(self, asset: str, amount: Decimal) -> None:
        if amount <= 0:
            return
        b = self.bal(asset)
        b.in_order -= amount
        b.available += amount

    def total(self, asset: str) -> Decimal:
        b = self.balances.get(asset)
        return b.available + b.in_order if b is not None else ZERO

    def balance_json(self, symbol: str | None) -> list[dict]:
        out = []
        for asset in sorted(self.balances):
            b = self.balances[asset]
            if symbol is not None:
                if asset != symbol:
                    continue
            elif b.available == 0 and b.in_order == 0:
                continue
            out.append({"symbol": asset, "available": fmt(b.available), "inOrder": fmt(b.in_order)})
        return out


class Ledger:
    """Unbounded balances of the pseudo-accounts (may go negative: they are the outside world)."""

    def __init__(self) -> None:
        self.amounts: dict[str, dict[str, Decimal]] = {LP_ACCOUNT: {}, FEE_ACCOUNT: {}}

    def add(self, who: str, asset: str, amount: Decimal) -> None:
        book = self.amounts[who]
        book[asset] = book.get(asset, ZERO) + amount

    def get(self, who: str, asset: str) -> Decimal:
        return self.amounts[who].get(asset, ZERO)
