"""Every message that travels between processes, typed and versioned, in one module.

On the wire one stream entry is one message: field ``type`` names its schema (e.g.
``intent.entry``) and field ``data`` holds the message as compact JSON (pydantic-core's encoder). Prices and amounts
are decimal strings exactly as Bitvavo sends them and ``Decimal`` in memory; times are
integer epoch milliseconds, UTC. Every message carries ``id``, ``ts`` (event time),
``src`` (service), ``trace`` (id and ts of the market event that started the chain) and
``v`` (schema version).

Decoding goes through a ``type → class`` registry that rejects unknown types, unknown
fields, missing fields (``v`` included) and a version this code does not speak.
"""

from __future__ import annotations

import hashlib
import uuid
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal, Mapping, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError

from tradestack.clock import Clock
from tradestack.errors import PoisonMessage


def _decimal_string(value: Any) -> Any:
    # Money never travels as a JSON number: floats lose digits, and Bitvavo sends strings.
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("must be a finite decimal")
        return value
    if isinstance(value, str):
        try:
            parsed = Decimal(value)
        except ArithmeticError:
            raise ValueError(f"{value!r} is not a decimal string") from None
        if not parsed.is_finite():
            raise ValueError("must be a finite decimal")
        return parsed
    raise ValueError("must be a decimal string such as \"0.1\" (not a JSON number)")


def _plain(value: Decimal) -> str:
    # "0.00000001", never "1E-8": the way Bitvavo writes numbers.
    return format(value, "f")


Dec = Annotated[Decimal, BeforeValidator(_decimal_string), PlainSerializer(_plain, return_type=str, when_used="json")]
Side = Literal["buy", "sell"]
Mode = Literal["paper", "sandbox", "live"]

ID_NAMESPACE = uuid.UUID("6f1c3e4a-8c1d-5b7e-9a2f-3d4c5b6a7e8f")


def new_id() -> str:
    return str(uuid.uuid4())


_NS_BYTES = ID_NAMESPACE.bytes


def derive_id(parent_id: str, tag: str = "") -> str:
    """A deterministic id from an input's id, so a replay produces the same output id.

    Exactly ``str(uuid.uuid5(ID_NAMESPACE, f"{parent_id}/{tag}"))``, computed without building
    UUID objects (on every output of every service: 5x cheaper)."""
    digest = bytearray(hashlib.sha1(_NS_BYTES + f"{parent_id}/{tag}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Trace(BaseModel):
    """The market event that started the chain: from it anyone rebuilds why an order exists."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    ts: int


_REGISTRY: dict[str, type["Message"]] = {}


class Message(BaseModel):
    """Base of every message. Subclasses set TYPE (and V when the schema changes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    TYPE: ClassVar[str] = ""
    V: ClassVar[int] = 1

    id: str
    ts: int
    src: str
    trace: Trace
    v: int = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Only a class that names its own TYPE is a wire type (helpers subclassing one are not).
        if "TYPE" in cls.__dict__ and cls.TYPE:
            if cls.TYPE in _REGISTRY:
                raise TypeError(f"message type {cls.TYPE!r} declared twice")
            _REGISTRY[cls.TYPE] = cls


M = TypeVar("M", bound=Message)


class MessageFactory:
    """Builds a service's outputs, so no handler fills the envelope by hand.

    ``child`` makes a message caused by an input: its id is derived from the input's id and a tag
    (a replay makes the same id, and the next group drops it), ``ts`` is now on the service's
    clock, ``src`` the service, ``trace`` the input's (the market event that started the chain).
    ``root`` makes a message that no input caused (a timer's), its id derived from a key that names
    the occasion (e.g. ``universe/<refresh time>``)."""

    __slots__ = ("src", "clock")

    def __init__(self, src: str, clock: Clock) -> None:
        self.src = src
        self.clock = clock

    def child(self, parent: Message, cls: type[M], tag: str = "", **fields: Any) -> M:
        return cls(id=derive_id(parent.id, tag or cls.TYPE), ts=self.clock.now_ms(), src=self.src,
                   trace=parent.trace, v=cls.V, **fields)

    def root(self, cls: type[M], key: str, trace: Trace | None = None, **fields: Any) -> M:
        now = self.clock.now_ms()
        msg_id = derive_id(f"{self.src}/{key}", cls.TYPE)
        return cls(id=msg_id, ts=now, src=self.src, trace=trace or Trace(id=msg_id, ts=now), v=cls.V, **fields)


def encode(msg: Message) -> dict[bytes, bytes]:
    """The stream entry fields for a message: ``{type, data}``."""
    return {b"type": msg.TYPE.encode(), b"data": encode_data(msg)}


def encode_data(msg: Message) -> bytes:
    # pydantic-core's encoder writes the same compact JSON as orjson would, and skips the
    # model_dump() detour: measured 2x faster per message (bench/loop.py).
    return msg.__pydantic_serializer__.to_json(msg)


def decode(fields: Mapping[bytes | str, bytes | str] | None) -> Message:
    """A stream entry back into its message, or PoisonMessage saying exactly why not."""
    if not fields:
        raise PoisonMessage("entry has no fields")
    mtype = fields.get(b"type", fields.get("type"))
    data = fields.get(b"data", fields.get("data"))
    if mtype is None or data is None:
        raise PoisonMessage("entry lacks the 'type' or 'data' field")
    if isinstance(mtype, bytes):
        mtype = mtype.decode("utf-8", "replace")
    cls = _REGISTRY.get(mtype)
    if cls is None:
        raise PoisonMessage(f"unknown message type {mtype!r}")
    try:
        msg = cls.model_validate_json(data)
    except ValidationError as exc:
        raise PoisonMessage(f"{mtype}: {_describe(exc)}") from None
    if "v" not in msg.model_fields_set:
        raise PoisonMessage(f"{mtype}: missing field(s) v")
    if msg.v != cls.V:
        raise PoisonMessage(f"{mtype}: version {msg.v!r} is not supported (this code speaks v{cls.V})")
    return msg


def _describe(exc: ValidationError) -> str:
    missing = sorted(".".join(str(p) for p in e["loc"]) for e in exc.errors() if e["type"] == "missing")
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    problems = []
    for e in exc.errors()[:5]:
        where = ".".join(str(p) for p in e["loc"]) or "data"
        problems.append(f"{where}: {e['msg']}")
    return "; ".join(problems)


def message_types() -> dict[str, type[Message]]:
    return dict(_REGISTRY)


# ---------------------------------------------------------------------------------------
# Market data (ingest)


class Ticker24hUpdated(Message):
    """One market's 24 h ticker as Bitvavo sent it (fields are null before any trade)."""

    TYPE: ClassVar[str] = "market.ticker24h"
    market: str
    open: Dec | None
    high: Dec | None
    low: Dec | None
    last: Dec | None
    volume: Dec | None
    volume_quote: Dec | None
    bid: Dec | None
    bid_size: Dec | None
    ask: Dec | None
    ask_size: Dec | None
    exchange_ts: int


class BookTopUpdated(Message):
    """Top of a market's book, published when it changes."""

    TYPE: ClassVar[str] = "market.book_top"
    market: str
    bid: Dec
    bid_size: Dec
    ask: Dec
    ask_size: Dec
    mid: Dec
    spread_bps: Dec
    nonce: int
    exchange_ts: int


class BookDeltaReceived(Message):
    """One book event: the changed levels with their new total size (0 removes a level)."""

    TYPE: ClassVar[str] = "market.book_delta"
    market: str
    nonce: int
    bids: list[tuple[Dec, Dec]]
    asks: list[tuple[Dec, Dec]]
    exchange_ts: int


class CandleUpdated(Message):
    """A candle as it forms; ``closed`` once its period is over."""

    TYPE: ClassVar[str] = "market.candle"
    market: str
    interval: str
    open_ts: int
    open: Dec
    high: Dec
    low: Dec
    close: Dec
    volume: Dec
    closed: bool


# ---------------------------------------------------------------------------------------
# Universe, signals, decisions


class UniverseChanged(Message):
    TYPE: ClassVar[str] = "universe.changed"
    members: list[str]
    added: list[str]
    removed: list[str]


class SignalEmitted(Message):
    """A strategy's call on one closed candle. v2: ``params`` (the strategy's parameters, so a
    decision can say which settings made the call) and ``candle_open_ts`` (which candle)."""

    TYPE: ClassVar[str] = "signal"
    V: ClassVar[int] = 2
    v: int = 2
    market: str
    strategy: str
    side: Side
    strength: float  # 0..1, not money
    ref_price: Dec
    atr: Dec | None
    interval: str
    candle_open_ts: int
    features: dict[str, float]
    params: dict[str, str]


class GuardCheck(BaseModel):
    """One guard (or input/sizing check) of a decision: what it measured against which limit.

    ``value`` and ``limit`` are strings: a decimal string for money and counts (``"187.50"``), a
    word otherwise (``"on"``, ``"BTC-EUR"``); ``reason`` is the short code of a failed check."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    passed: bool
    value: str
    limit: str
    reason: str | None = None


class Sizing(BaseModel):
    """How an entry's size was computed (trading core, sizing.py), all in quote (EUR) or base units.

    ``loss_per_unit`` = entry·(1+fee) − stop·(1−fee): what one unit loses at a stop-out, fees in.
    ``raw_size`` = ``risk_eur`` / ``loss_per_unit``; ``capped_size`` after the caps (``capped_by``
    names the binding one); ``rounded_size`` down to the market's quantity decimals."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    equity: Dec
    risk_mode: Literal["percent", "fixed"]
    risk_value: Dec
    risk_eur: Dec
    entry_price: Dec
    stop_price: Dec
    stop_distance: Dec
    fee_rate: Dec
    loss_per_unit: Dec
    raw_size: Dec
    capped_size: Dec
    capped_by: str | None
    rounded_size: Dec


class DecisionMade(Message):
    """The trading core's verdict on one signal: accepted, or blocked with every reason.

    v2: enough to answer "why does (or doesn't) this order exist?" from the stream alone: the
    strategy's parameters, the signal's reference price and ATR, every check with value and
    limit (``checks``: the signal's own checks, then every guard in chain order; ``reasons`` are
    the failed ones' codes, the first names the decision's event), the sizing
    inputs (None when the signal was unusable), the planned stop/take-profit and the intent's id."""

    TYPE: ClassVar[str] = "decision"
    V: ClassVar[int] = 2
    v: int = 2
    signal_id: str
    market: str
    strategy: str
    strategy_params: dict[str, str]
    side: Side
    ref_price: Dec
    atr: Dec | None
    accepted: bool
    reasons: list[str]
    checks: list[GuardCheck]
    sizing: Sizing | None
    stop_price: Dec | None
    take_profit_price: Dec | None
    intent_id: str | None
    mode: Mode


# ---------------------------------------------------------------------------------------
# Orders


class EntryIntent(Message):
    """Open a position: what the core wants the executor to do.

    v2: the links (``signal_id``, ``decision_id``), the strategy and its parameters, every guard
    checked, the sizing inputs and the exit plan (trailing distance in quote, time stop), so the
    intent alone explains the order. ``price`` is the limit price (None for a market order);
    ``ref_price`` the price the size was computed at. The core always fills every field; an intent
    made by hand (the ``MomentumIntent``/``MeanReversionIntent`` doors) has ``signal_id``,
    ``ref_price`` and ``sizing`` None and no ``checks``, which says exactly that: no signal, no
    guard, no sizing made it (the executor's own checks still apply)."""

    TYPE: ClassVar[str] = "intent.entry"
    V: ClassVar[int] = 2
    v: int = 2
    decision_id: str
    signal_id: str | None
    market: str
    side: Side
    order_type: Literal["market", "limit"]
    amount: Dec
    price: Dec | None
    ref_price: Dec | None
    stop_price: Dec
    take_profit_price: Dec | None
    trailing_distance: Dec | None
    time_stop_secs: int | None
    strategy: str
    strategy_params: dict[str, str]
    checks: list[GuardCheck]
    sizing: Sizing | None
    mode: Mode


class ExitIntent(Message):
    """Close (part of) a position: take-profit, stop, trailing, time stop or emergency.

    v2: ``position_id`` is the entry intent's id; ``trigger_price`` the book price that triggered
    it (best bid for a long), ``level`` the take-profit/stop level it crossed (None for a time stop),
    ``opened_ts`` when the position's first fill was booked."""

    TYPE: ClassVar[str] = "intent.exit"
    V: ClassVar[int] = 2
    v: int = 2
    position_id: str
    market: str
    side: Side
    order_type: Literal["market", "limit"]
    amount: Dec
    price: Dec | None
    reason: Literal["take_profit", "stop_loss", "trailing_stop", "time_stop", "emergency", "manual"]
    trigger_price: Dec | None
    level: Dec | None
    opened_ts: int | None
    mode: Mode


class StopAmendIntent(Message):
    """Move a resting stop up (trailing stop).

    v2: ``previous_stop`` and the ``high_price`` (highest best bid since entry) the new stop trails
    by ``trailing_distance`` (quote), and the ``amount`` the stop covers."""

    TYPE: ClassVar[str] = "intent.amend_stop"
    V: ClassVar[int] = 2
    v: int = 2
    position_id: str
    market: str
    amount: Dec
    stop_price: Dec
    previous_stop: Dec
    high_price: Dec
    trailing_distance: Dec
    mode: Mode


class FillInfo(BaseModel):
    """One trade of an order, as the exchange (or the paper broker) reported it. ``fee`` is None
    until Bitvavo settles it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    fill_id: str
    ts: int
    amount: Dec
    price: Dec
    taker: bool
    fee: Dec | None
    fee_currency: str | None


OrderPurpose = Literal["entry", "stop", "exit", "emergency", "unknown"]


class OrderExecuted(Message):
    """An order state from the executor: fills so far (cumulative per ``client_order_id``), fees,
    status. v2 adds what an audit needs: the position the order belongs to (the entry intent's
    id), why the order exists (``purpose``: entry, the resting stop, an exit, an emergency close),
    its type and trigger price, the exchange's fills, and the Bitvavo restatement reason."""

    TYPE: ClassVar[str] = "order.executed"
    V: ClassVar[int] = 2
    v: int = 2
    intent_id: str
    client_order_id: str
    order_id: str | None
    market: str
    side: Side
    status: str
    filled_amount: Dec
    filled_quote: Dec
    avg_price: Dec | None
    fee: Dec
    fee_currency: str
    mode: Mode
    reason: str | None
    position_id: str | None = None
    purpose: OrderPurpose = "unknown"
    order_type: str | None = None
    amount: Dec | None = None  # what was asked (base); None for an amountQuote order
    trigger_price: Dec | None = None
    fills: list[FillInfo] = Field(default_factory=list)
    restatement_reason: str | None = None
    exchange_ts: int | None = None  # the order's ``updated`` on the exchange


# ---------------------------------------------------------------------------------------
# Events and PnL


class TradingEvent(Message):
    """Something an operator should see: kill switch, universe change, alerts."""

    TYPE: ClassVar[str] = "event"
    kind: str
    severity: Literal["info", "warning", "critical"]
    message: str
    details: dict[str, str]


class PnlSnapshotTaken(Message):
    """The PnL orchestrator's totals at one moment (on a period and after every fill). v2 adds what a
    restart needs to continue the day and the drawdown exactly (``day``, ``day_start_equity``,
    ``peak_equity``) and what an operator reads (cash, daily PnL, drawdown, exposure per asset)."""

    TYPE: ClassVar[str] = "pnl.snapshot"
    V: ClassVar[int] = 2
    v: int = 2
    equity: Dec
    realized: Dec
    unrealized: Dec
    fees: Dec
    exposure: Dec
    positions: dict[str, Dec]  # market → size
    cash: Dec = Decimal(0)
    starting_equity: Dec = Decimal(0)
    day: str = ""  # UTC date of the day the daily figures are for
    day_start_equity: Dec = Decimal(0)
    daily_pnl: Dec = Decimal(0)
    peak_equity: Dec = Decimal(0)
    drawdown_pct: Dec = Decimal(0)
    exposure_by_asset: dict[str, Dec] = Field(default_factory=dict)
    reports_booked: int = 0
    mode: Mode = "paper"
