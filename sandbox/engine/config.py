"""Engine configuration: a plain dataclass the server fills from CLI/env."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal


@dataclass
class AccountSpec:
    secret: str
    balances: dict[str, Decimal] = field(default_factory=dict)
    taker_fee: Decimal = Decimal("0.0025")
    maker_fee: Decimal = Decimal("0.0015")


def _default_accounts() -> dict[str, AccountSpec]:
    # One ready-to-use account so `python -m sandbox` works without configuration.
    return {
        "sandbox-key": AccountSpec(
            secret="sandbox-secret",
            balances={"EUR": Decimal("100000"), "BTC": Decimal("1"), "ETH": Decimal("10")},
        )
    }


@dataclass
class SandboxConfig:
    markets: list[str] | None = None  # None = default ~20 EUR markets; ["all"] = 400+ generated markets
    seed: int = 1
    history_hours: float = 24.0  # made-up history generated at start (trades + candles)
    accounts: dict[str, AccountSpec] = field(default_factory=_default_accounts)
    state_path: str | None = None  # persist orders/balances here (JSON), reload on start
    replay_dir: str | None = None  # drive mid prices from recorded Parquet instead of the random walk
    # Simulation knobs.
    simulate: bool = True  # False: no liquidity providers, flow or history (a quiet book for tests)
    book_levels: int = 25  # liquidity-provider levels per side
    activity: float = 1.0  # multiplies the aggressive trade rate of every market
    volatility: float = 1.0  # multiplies the random-walk volatility of every market
    # True: a book event per change, as Bitvavo sends them (every simulated quote, cancel or
    # aggressive order, and every API request, is one event); False: changes wait for
    # Exchange.flush_book_events(), which the server then calls on a timer.
    book_event_per_change: bool = True
    max_step_ms: int = 1_000  # a long gap is simulated in sub-steps of at most this
    max_catchup_ms: int = 600_000  # gaps longer than this jump (no trades) instead of simulating
    trade_retention_ms: int = 24 * 3_600_000 + 3_600_000  # public trades kept per market
    max_trades_per_market: int = 200_000
    max_candles_per_interval: int = 1_500
    max_closed_orders_per_account: int = 20_000  # terminal orders kept for GET /orders
