"""The Exchange facade: Bitvavo-shaped dicts in and out; the server only does transport."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from decimal import Decimal

from . import errors as E
from . import persistence
from .accounts import FEE_ACCOUNT, LP_ACCOUNT, Account, Balance, Ledger
from .book import OrderBook, Resting
from .candles import INTERVALS
from .config import SandboxConfig
from .errors import ExchangeError
from .events import BookEvent, CandleEvent, Event, FillEvent, OrderEvent, TickerEvent, TradeEvent
from .ids import IdGenerator
from .market_state import MarketState
from .markets import STATUSES, build_catalogue
from .matching import Taker, fillable, match, would_take
from .numbers import ZERO, fmt, parse_decimal, round_down, round_half_up, round_up
from .orders import (
    TRIGGER_TYPES,
    UPDATE_PARAMS,
    Fill,
    Order,
    check_amount,
    check_price,
    check_quote,
    parse_bool,
    parse_create,
    parse_operator_id,
    parse_positive,
)
from .simulator import MarketSimulator

log = logging.getLogger(__name__)

EXTERNAL_ACCOUNT = "__external__"  # withdrawals leave the exchange here
_STATUS_FOR_DATA = ("halted", "auction", "auctionMatching")
MAX_TRIGGER_ROUNDS = 50


class Exchange:
    def __init__(self, config: SandboxConfig, now_ms: Callable[[], int]) -> None:
        self.config = config
        self._now = now_ms
        self.ids = IdGenerator(config.seed)
        self._t = now_ms()  # "current" time for events; sub-step time during step()
        specs = build_catalogue(config.markets)
        mid_sources: dict[str, Callable[[int], float | None]] = {}
        if config.replay_dir:
            from .replay import load_replay

            replay = load_replay(config.replay_dir, self._t)
            for market, spec in replay.extra_specs(specs).items():
                specs[market] = spec
            if config.markets is None:
                specs = {m: s for m, s in specs.items() if m in replay.markets} or specs
            mid_sources = {m: replay.mid_source(m) for m in specs if m in replay.markets}
            for market, price in replay.first_prices().items():
                if market in specs:
                    specs[market].price0 = price
                    specs[market].__post_init__()  # minimums follow the recorded price
        self.mstates: dict[str, MarketState] = {}
        for market, spec in specs.items():
            sim = MarketSimulator(spec, config.seed, config.book_levels, config.activity,
                                  config.volatility, mid_sources.get(market))
            self.mstates[market] = MarketState(spec, sim, config.max_trades_per_market,
                                               config.trade_retention_ms, config.max_candles_per_interval)
        self.accounts: dict[str, Account] = {}
        for api_key, acct in config.accounts.items():
            account = Account(api_key, acct.secret, Decimal(acct.taker_fee), Decimal(acct.maker_fee))
            for asset, amount in acct.balances.items():
                account.balances[asset] = Balance(Decimal(amount), ZERO)
            self.accounts[api_key] = account
        self.ledger = Ledger()
        self.ledger.amounts[EXTERNAL_ACCOUNT] = {}
        self.order_index: dict[str, Order] = {}
        self.orders_by_market: dict[tuple[str, str], list[str]] = {}  # (api_key, market) -> ids by creation
        self.open_orders: dict[tuple[str, str], dict[str, Order]] = {}
        self.own_trades: dict[tuple[str, str], deque] = {}
        self.withdrawals: dict[str, list[dict]] = {}
        self._events: list[Event] = []
        self._lp_seq = 0
        self._per_change = config.book_event_per_change
        self._dirty_books: dict[MarketState, None] = {}  # books with unsent changes, in order of change
        for ms in self.mstates.values():
            ms.book.dirty_sink, ms.book.owner = self._dirty_books, ms
        self._reject_next = 0
        self._reject_code = 230
        self._reject_type: str | None = None  # only orders of this type are rejected (None: any)
        self._generate_history()
        if config.state_path:
            persistence.load_into(self, config.state_path)
        for ms in self.mstates.values():
            ms.last_step_ms = self._t
            if ms.spec.status == "trading" and config.simulate:
                ms.sim.requote(self, ms.book)
            ms.last_ticker = ms.top()
            ms.last_top_raw = ms.top_raw()
        self._events.clear()  # start-up noise (history, first quotes) is not streamed
        for ms in self._dirty_books:
            ms.book.take_changes()
        self._dirty_books.clear()

    # ---- basics --------------------------------------------------------------------------------
    @property
    def market_ids(self) -> list[str]:
        return list(self.mstates)

    def secret_for(self, api_key: str) -> str | None:
        account = self.accounts.get(api_key)
        return account.secret if account is not None else None

    def _account(self, api_key: str) -> Account:
        account = self.accounts.get(api_key)
        if account is None:
            raise ExchangeError(305, "No active API key found.", 403)
        return account

    def _market(self, market: object) -> MarketState:
        if market is None or market == "":
            raise E.missing("market")
        ms = self.mstates.get(market) if isinstance(market, str) else None
        if ms is None:
            raise E.invalid("market", market)
        return ms

    @staticmethod
    def _check_params(params: dict, allowed: Iterable[str]) -> None:
        allowed = set(allowed)
        for key in params:
            if key not in allowed:
                raise ExchangeError(200, f"{key} url parameter is not supported. Please refer to the documentation.")

    @staticmethod
    def _int_param(params: dict, name: str, lo: int, hi: int, default: int | None) -> int | None:
        value = params.get(name)
        if value is None or value == "":
            return default
        try:
            n = int(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            n = None
        if n is None or n < lo or n > hi:
            raise E.invalid(name, value) if name == "depth" else E.invalid(name)
        return n

    def _ts_param(self, params: dict, name: str) -> int | None:
        return self._int_param(params, name, 0, 2**62, None)

    # ---- public --------------------------------------------------------------------------------
    def time(self) -> dict:
        now = self._now()
        return {"time": now, "timeNs": now * 1_000_000}

    def markets(self, params: dict) -> list | dict:
        self._check_params(params, ("market",))
        if params.get("market"):
            return self._market(params["market"]).spec.to_json()
        return [ms.spec.to_json() for ms in self.mstates.values()]

    def _asset_specs(self) -> dict[str, tuple[str, int]]:
        assets: dict[str, tuple[str, int]] = {"EUR": ("Euro", 2)}
        for ms in self.mstates.values():
            assets.setdefault(ms.spec.base, (ms.spec.name, 8))
        return dict(sorted(assets.items()))

    def assets(self, params: dict) -> list | dict:
        self._check_params(params, ("symbol",))

        def row(symbol: str, name: str, decimals: int) -> dict:
            fiat = symbol == "EUR"
            return {"symbol": symbol, "name": name, "decimals": decimals, "depositFee": "0",
                    "depositConfirmations": 0 if fiat else 10, "depositStatus": "OK",
                    "withdrawalFee": "0" if fiat else "0.0001", "withdrawalMinAmount": "0" if fiat else "0.001",
                    "withdrawalStatus": "OK", "networks": ["SEPA"] if fiat else ["Mainnet"], "message": ""}

        assets = self._asset_specs()
        symbol = params.get("symbol")
        if symbol:
            if symbol not in assets:
                raise E.invalid("symbol", symbol)
            return row(symbol, *assets[symbol])
        return [row(s, *v) for s, v in assets.items()]

    def _data_available(self, ms: MarketState, what: str) -> None:
        if ms.spec.status in _STATUS_FOR_DATA:
            raise E.market_data_unavailable(what, ms.market, ms.spec.status)

    def book(self, market: str, params: dict) -> dict:
        ms = self._market(market)
        self._check_params(params, ("depth", "market"))
        self.step([ms])  # answer as of now, not as of the last market-loop tick (as Bitvavo does)
        depth = self._int_param(params, "depth", 1, 1000, 1000)
        self._data_available(ms, "getBook")
        book = ms.book
        return {
            "market": ms.market,
            "nonce": book.nonce,
            "bids": [[fmt(ms.price(t)), fmt(s)] for t, s in book.depth("buy", depth)],
            "asks": [[fmt(ms.price(t)), fmt(s)] for t, s in book.depth("sell", depth)],
            "timestamp": self._now() * 1_000_000,
        }

    def public_trades(self, market: str, params: dict) -> list:
        ms = self._market(market)
        self._check_params(params, ("limit", "start", "end", "tradeIdFrom", "tradeIdTo", "market"))
        self.step([ms])  # answer as of now, not as of the last market-loop tick (as Bitvavo does)
        limit = self._int_param(params, "limit", 1, 1000, 500)
        start, end = self._ts_param(params, "start"), self._ts_param(params, "end")
        ms.tape.expire(self._now())
        rows = ms.tape.query(limit, start, end, params.get("tradeIdFrom"), params.get("tradeIdTo"))
        return [{"id": t[5], "timestamp": t[1], "amount": fmt(t[3]), "price": fmt(t[2]), "side": t[4]}
                for t in rows]

    def candles(self, market: str, params: dict) -> list:
        ms = self._market(market)
        self._check_params(params, ("interval", "limit", "start", "end", "market"))
        self.step([ms])  # answer as of now, not as of the last market-loop tick (as Bitvavo does)
        interval = params.get("interval")
        if not interval:
            raise E.missing("interval")
        if interval not in INTERVALS:
            raise E.invalid("interval")
        limit = self._int_param(params, "limit", 1, 1440, 1440)
        start, end = self._ts_param(params, "start"), self._ts_param(params, "end")
        return ms.candles.series[interval].query(limit, start, end)

    def _select(self, params: dict) -> tuple[list[MarketState], bool]:
        self._check_params(params, ("market",))
        if params.get("market"):
            return [self._market(params["market"])], True
        return list(self.mstates.values()), False

    def _price_row(self, ms: MarketState) -> dict:
        last = ms.last_price()
        return {"market": ms.market, "price": fmt(last) if last is not None else None}

    def ticker_price(self, params: dict) -> list | dict:
        selected, single = self._select(params)
        rows = [self._price_row(ms) for ms in selected]
        return rows[0] if single else rows

    def _book_row(self, ms: MarketState) -> dict:
        top = ms.top()
        return {"market": ms.market, "bid": top.get("bestBid"), "bidSize": top.get("bestBidSize"),
                "ask": top.get("bestAsk"), "askSize": top.get("bestAskSize")}

    def ticker_book(self, params: dict) -> list | dict:
        selected, single = self._select(params)
        rows = [self._book_row(ms) for ms in selected]
        return rows[0] if single else rows

    def _ticker24h_row(self, ms: MarketState, now: int) -> dict:
        ms.tape.expire(now)
        stats = ms.tape.stats()
        top = ms.top()
        row: dict = {"market": ms.market, "startTimestamp": now - 24 * 3_600_000, "timestamp": now}
        if stats is None:
            row.update(open=None, openTimestamp=None, high=None, low=None, last=None, closeTimestamp=None)
        else:
            row.update(open=fmt(stats["open"]), openTimestamp=stats["openTimestamp"], high=fmt(stats["high"]),
                       low=fmt(stats["low"]), last=fmt(stats["last"]), closeTimestamp=stats["closeTimestamp"])
        row.update(bid=top.get("bestBid"), bidSize=top.get("bestBidSize"), ask=top.get("bestAsk"),
                   askSize=top.get("bestAskSize"))
        if stats is None:
            row.update(volume="0", volumeQuote="0")
        else:
            row.update(volume=fmt(stats["volume"]),
                       volumeQuote=fmt(round_half_up(stats["volumeQuote"], ms.spec.notional_decimals)))
        return row

    def ticker_24h(self, params: dict) -> list | dict:
        selected, single = self._select(params)
        now = self._now()
        rows = [self._ticker24h_row(ms, now) for ms in selected]
        return rows[0] if single else rows

    def ticker24h_rows(self, markets: Iterable[str]) -> list[dict]:
        now = self._now()
        return [self._ticker24h_row(self.mstates[m], now) for m in markets if m in self.mstates]

    # ---- orders: lookup ------------------------------------------------------------------------
    def _find_order(self, api_key: str, ms: MarketState, params: dict) -> Order:
        coid = params.get("clientOrderId")
        oid = params.get("orderId")
        if coid is None and oid is None:
            raise ExchangeError(203, "orderId or clientOrderId parameter is required.")
        if coid is not None:
            # clientOrderId wins; prefer the open order carrying it, else the newest.
            for order in self.open_orders.get((api_key, ms.market), {}).values():
                if order.client_order_id == coid:
                    return order
            for order_id in reversed(self.orders_by_market.get((api_key, ms.market), [])):
                order = self.order_index.get(order_id)
                if order is not None and order.client_order_id == coid:
                    return order
            raise E.order_not_found()
        order = self.order_index.get(oid) if isinstance(oid, str) else None
        if order is None or order.api_key != api_key or order.market != ms.market:
            raise E.order_not_found()
        return order

    # ---- orders: create ------------------------------------------------------------------------
    def create_order(self, api_key: str, body: dict) -> dict:
        account = self._account(api_key)
        ms = self._market(body.get("market"))
        req = parse_create(body, ms.spec)
        status = ms.spec.status
        if status in ("halted", "cancelOnly", "auctionMatching"):
            raise E.market_status(status)
        if status == "auction" and req.order_type == "market":
            raise E.market_status(status)  # limit orders rest, crossed or not, until the uncross
        if status == "auction" and req.time_in_force != "GTC":
            raise ExchangeError(
                231, "The order is rejected by the matching engine. TimeInForce must be GTC when markets are paused.")
        if self._reject_next > 0 and self._reject_type in (None, req.order_type):
            self._reject_next -= 1
            raise ExchangeError(self._reject_code, "The order is rejected by the matching engine.")
        key = (api_key, ms.market)
        open_here = self.open_orders.get(key, {})
        if len(open_here) >= 100:
            raise E.too_many_open_orders()
        if req.client_order_id is not None and any(
                o.client_order_id == req.client_order_id for o in open_here.values()):
            raise E.client_order_id_conflict()
        if req.order_type == "market" and req.amount is not None:
            estimate = self._estimate_price(ms, req.side, req.amount)
            if estimate is not None and req.amount * estimate < ms.spec.min_quote:
                raise E.notional_too_low()

        now = self._now()
        self._t = now
        spec = ms.spec
        order = Order(
            order_id=self.ids.next("order"), market=ms.market, api_key=api_key, side=req.side,
            order_type=req.order_type, created=now, updated=now,
            status="awaitingTrigger" if req.order_type in TRIGGER_TYPES else "new",
            operator_id=req.operator_id, base=spec.base, quote=spec.quote,
            amount=req.amount, amount_remaining=req.amount,
            amount_quote=req.amount_quote, amount_quote_remaining=req.amount_quote,
            price=req.price, trigger_amount=req.trigger_amount, trigger_type=req.trigger_type,
            trigger_reference=req.trigger_reference, time_in_force=req.time_in_force,
            post_only=req.post_only, stp=req.stp, client_order_id=req.client_order_id,
        )
        hold = self._hold_for(order, ms, account)
        account.reserve(order.on_hold_currency, hold)  # raises 216
        order.on_hold = hold
        self._register(order)
        self._emit_order(order, "new")
        if order.order_type in TRIGGER_TYPES:
            ms.triggers[order.order_id] = order
        else:
            self._execute(ms, order)
        self._check_triggers(ms)
        self._emit_market_updates(ms)
        log.debug("order_created", extra={"order_id": order.order_id, "market": ms.market, "status": order.status})
        return order.to_json() if req.response_required else order.short_json()

    def _register(self, order: Order) -> None:
        key = (order.api_key, order.market)
        self.order_index[order.order_id] = order
        ids = self.orders_by_market.setdefault(key, [])
        ids.append(order.order_id)
        self.open_orders.setdefault(key, {})[order.order_id] = order
        self._trim_closed(ids)

    def _trim_closed(self, ids: list[str]) -> None:
        # Bound memory: forget the oldest terminal orders beyond the cap.
        cap = self.config.max_closed_orders_per_account
        if len(ids) <= cap:
            return
        keep: list[str] = []
        drop = len(ids) - cap
        for order_id in ids:
            order = self.order_index.get(order_id)
            if drop > 0 and (order is None or not order.is_open):
                self.order_index.pop(order_id, None)
                drop -= 1
            else:
                keep.append(order_id)
        ids[:] = keep

    def _estimate_price(self, ms: MarketState, side: str, amount: Decimal) -> Decimal | None:
        """Average price to take ``amount`` from the book (last level / last trade beyond it)."""
        opp = ms.book.opposite(side)
        left, cost = amount, ZERO
        last_tick = None
        for tick in opp.ticks_best_first():
            size = opp.levels[tick].total
            take = min(size, left)
            cost += take * ms.price(tick)
            left -= take
            last_tick = tick
            if left <= 0:
                break
        if left > 0:
            ref = ms.price(last_tick) if last_tick is not None else ms.last_price()
            if ref is None:
                return None
            cost += left * ref
        return cost / amount

    def _estimate_base_for_quote(self, ms: MarketState, side: str, quote: Decimal) -> Decimal:
        opp = ms.book.opposite(side)
        left, base = quote, ZERO
        last_price = ms.last_price()
        for tick in opp.ticks_best_first():
            price = ms.price(tick)
            level_quote = opp.levels[tick].total * price
            take = min(level_quote, left)
            base += take / price
            left -= take
            last_price = price
            if left <= 0:
                break
        if left > 0 and last_price:
            base += left / last_price
        return round_up(base, ms.spec.quantity_decimals)

    def _hold_for(self, order: Order, ms: MarketState, account: Account) -> Decimal:
        """Funds reserved at placement: buys reserve quote incl. the max (taker) fee rounded up
        to the cent, sells reserve base."""
        spec = ms.spec
        fee = account.taker_fee
        nd = spec.notional_decimals
        if order.side == "sell":
            if order.amount is not None:
                return order.amount
            ref = order.trigger_amount
            if ref is not None:
                base = round_up(order.amount_quote / ref, spec.quantity_decimals)
            else:
                base = self._estimate_base_for_quote(ms, "sell", order.amount_quote)
            return base
        if order.amount_quote is not None:
            return order.amount_quote  # amountQuote buys include the fee
        if order.price is not None:
            return round_up(order.amount * order.price * (1 + fee), nd)
        if order.trigger_amount is not None:
            return round_up(order.amount * order.trigger_amount * (1 + fee), nd)
        estimate = self._estimate_price(ms, "buy", order.amount)
        if estimate is None:
            raise E.rejected()
        return round_up(order.amount * estimate * (1 + fee), nd)

    # ---- execution -----------------------------------------------------------------------------
    def _max_qty(self, order: Order, account: Account, ms: MarketState, tick: int) -> Decimal:
        price = ms.price(tick)
        qd = ms.spec.quantity_decimals
        market_like = not order.is_limit_like
        if order.side == "buy":
            funds = order.on_hold + (account.available(order.quote) if market_like else ZERO)
            affordable = round_down(funds / (price * (1 + account.taker_fee)), qd)
            if order.amount is not None:
                return min(order.amount_remaining, affordable)
            by_budget = round_down(order.amount_quote_remaining / (price * (1 + account.taker_fee)), qd)
            return min(by_budget, affordable)
        funds = order.on_hold + (account.available(order.base) if market_like else ZERO)
        if order.amount is not None:
            return min(order.amount_remaining, funds)
        return min(round_down(order.amount_quote_remaining / price, qd), funds)

    def _execute(self, ms: MarketState, order: Order) -> None:
        """Match an active user order as taker, then rest, cancel or finish it."""
        account = self.accounts[order.api_key]
        book = ms.book
        limit_tick = check_price(ms.spec, "price", order.price) if order.is_limit_like else None
        if ms.spec.status == "auction" and limit_tick is not None:
            # No matching in an auction: the order rests until the uncross (set_market_status).
            book.add(order.order_id, order.api_key, order.side, limit_tick, order.amount_remaining, order)
            return
        if limit_tick is not None and order.post_only and would_take(book, order.side, limit_tick):
            self._finalize(order, "canceledPostOnly", "canceled")
            return
        if order.time_in_force == "FOK" and order.is_limit_like:
            if fillable(book, order.side, limit_tick, order.api_key) < order.amount_remaining:
                self._finalize(order, "canceledFOK", "canceled")
                return
        taker = Taker(order.api_key, order.side, limit_tick,
                      lambda tick: self._max_qty(order, account, ms, tick), order.stp)
        match(book, taker,
              lambda maker, qty, tick: self._on_trade(ms, maker, qty, tick, order, order.side),
              lambda maker, dec: self._on_stp(ms, maker, dec))
        if not order.is_open:
            return  # filled inside the loop
        if taker.stp_decrement > 0 and order.amount is not None and not taker.stp_cancel_taker:
            order.amount -= taker.stp_decrement
            order.amount_remaining -= taker.stp_decrement
            order.restatement_reason = "decrementOnSelfTradePrevention"
            if order.amount_remaining <= 0:
                self._finalize(order, "filled" if order.filled_amount > 0 else "canceledSelfTradePrevention",
                               "restated")
                return
        if taker.stp_cancel_taker:
            order.restatement_reason = "cancelOnSelfTradePrevention"
            self._finalize(order, "canceledSelfTradePrevention", "canceled")
            return
        if not order.is_limit_like:
            # Market orders never rest: done when nothing more can be taken.
            final = "filled" if order.filled_amount > 0 and (order.amount is None or order.amount_remaining == 0) \
                else "canceled"
            if order.amount is not None and order.filled_amount > 0 and order.amount_remaining > 0:
                final = "canceled"
            self._finalize(order, final, "trade" if final == "filled" else "canceled")
            return
        if order.time_in_force in ("IOC", "FOK"):
            self._finalize(order, "canceledIOC" if order.time_in_force == "IOC" else "canceledFOK", "canceled")
            return
        book.add(order.order_id, order.api_key, order.side, limit_tick, order.amount_remaining, order)

    def _settle_lp(self, side: str, base: str, quote: str, qty: Decimal, notional: Decimal) -> None:
        sign = 1 if side == "buy" else -1
        self.ledger.add(LP_ACCOUNT, base, sign * qty)
        self.ledger.add(LP_ACCOUNT, quote, -sign * notional)

    def _settle_user(self, ms: MarketState, order: Order, qty: Decimal, price: Decimal, taker: bool) -> None:
        account = self.accounts[order.api_key]
        nd = ms.spec.notional_decimals
        notional = qty * price
        rate = account.taker_fee if taker else account.maker_fee
        fee = round_half_up(notional * rate, nd)
        base_bal, quote_bal = account.bal(order.base), account.bal(order.quote)
        if order.side == "buy":
            if order.amount_quote_remaining is not None:
                # amountQuote includes the fee: rounding must not push spending past it.
                fee = max(ZERO, min(fee, order.amount_quote_remaining - notional))
            spend = notional + fee
            from_hold = min(spend, order.on_hold)
            order.on_hold -= from_hold
            quote_bal.in_order -= from_hold
            rest = spend - from_hold
            if rest > 0:
                from_avail = min(rest, quote_bal.available)
                quote_bal.available -= from_avail
                short = rest - from_avail
                if short > 0:
                    fee -= short  # never overdraw: rounding residue comes off the fee
            base_bal.available += qty
            spent = notional + fee
            if order.amount_quote_remaining is not None:
                order.amount_quote_remaining -= spent
        else:
            from_hold = min(qty, order.on_hold)
            order.on_hold -= from_hold
            base_bal.in_order -= from_hold
            base_bal.available -= qty - from_hold
            quote_bal.available += notional - fee
            if order.amount_quote_remaining is not None:
                order.amount_quote_remaining -= notional
        self.ledger.add(FEE_ACCOUNT, order.quote, fee)
        account.volume_30d += notional
        order.filled_amount += qty
        order.filled_amount_quote += notional
        order.fee_paid += fee
        if order.amount_remaining is not None:
            order.amount_remaining -= qty
        order.updated = self._t
        fill = Fill(self.ids.next("fill"), self._t, qty, price, taker, fee, order.quote)
        order.fills.append(fill)
        own = self.own_trades.setdefault((order.api_key, order.market), deque(maxlen=50_000))
        trade = {"id": fill.fill_id, "orderId": order.order_id}
        if order.client_order_id is not None:
            trade["clientOrderId"] = order.client_order_id
        trade.update(timestamp=self._t, market=order.market, side=order.side, amount=fmt(qty),
                     price=fmt(price), taker=taker, fee=fmt(fee), feeCurrency=order.quote, settled=True,
                     operatorId=order.operator_id)
        own.append(trade)
        self._events.append(FillEvent(order.api_key, order.market, {
            "timestamp": self._t, "market": order.market, "orderId": order.order_id,
            "fillId": fill.fill_id, "side": order.side, "amount": fmt(qty), "price": fmt(price),
            "taker": taker, "fee": fmt(fee), "feeCurrency": order.quote, "operatorId": order.operator_id,
            **({"clientOrderId": order.client_order_id} if order.client_order_id is not None else {}),
        }))
        if order.amount_remaining is not None and order.amount_remaining <= 0:
            self._finalize(order, "filled", "trade")
        else:
            order.status = "partiallyFilled"
            self._emit_order(order, "trade")

    def _on_trade(self, ms: MarketState, maker: Resting, qty: Decimal, tick: int,
                  taker_order: Order | None, taker_side: str) -> None:
        price = ms.price(tick)
        notional = qty * price
        spec = ms.spec
        ms.book.reduce(maker, qty)
        if maker.owner is None:
            self._settle_lp(maker.side, spec.base, spec.quote, qty, notional)
        else:
            self._settle_user(ms, maker.order, qty, price, taker=False)
        if taker_order is None:
            self._settle_lp(taker_side, spec.base, spec.quote, qty, notional)
        else:
            self._settle_user(ms, taker_order, qty, price, taker=True)
        trade_id = self.ids.next(f"trade:{ms.market}")
        self._print_trade(ms, self._t, price, qty, taker_side, trade_id)

    def _print_trade(self, ms: MarketState, ts: int, price: Decimal, qty: Decimal, side: str,
                     trade_id: str, emit: bool = True) -> None:
        ms.tape.append(ts, price, qty, side, trade_id)
        ms.candles.add(ts, price, qty)
        if emit:
            self._events.append(TradeEvent(ms.market, {"id": trade_id, "timestamp": ts, "amount": fmt(qty),
                                                       "price": fmt(price), "side": side}))

    def _on_stp(self, ms: MarketState, maker: Resting, dec: Decimal) -> None:
        order: Order = maker.order
        if dec >= maker.remaining:
            ms.book.remove(maker)
            order.restatement_reason = "cancelOnSelfTradePrevention"
            self._finalize(order, "canceledSelfTradePrevention", "canceled")
            return
        ms.book.reduce(maker, dec)
        order.amount -= dec
        order.amount_remaining -= dec
        order.restatement_reason = "decrementOnSelfTradePrevention"
        self._rehold(order)
        order.updated = self._t
        self._emit_order(order, "restated")

    def _rehold(self, order: Order) -> None:
        """Shrink a resting order's reservation to what its remaining amount needs."""
        account = self.accounts[order.api_key]
        if order.side == "sell":
            need = order.amount_remaining
        else:
            need = round_up(order.amount_remaining * order.price * (1 + account.taker_fee), 2)
        if need < order.on_hold:
            account.release(order.on_hold_currency, order.on_hold - need)
            order.on_hold = need

    def _finalize(self, order: Order, status: str, execution_type: str) -> None:
        order.status = status
        order.updated = self._t
        account = self.accounts[order.api_key]
        account.release(order.on_hold_currency, order.on_hold)
        order.on_hold = ZERO
        self.open_orders.get((order.api_key, order.market), {}).pop(order.order_id, None)
        ms = self.mstates.get(order.market)
        if ms is not None:
            ms.triggers.pop(order.order_id, None)
        self._emit_order(order, execution_type)

    def _emit_order(self, order: Order, execution_type: str) -> None:
        self._events.append(OrderEvent(order.api_key, order.market, order.to_ws(execution_type)))

    def _check_triggers(self, ms: MarketState) -> None:
        if ms.spec.status != "trading":
            return  # stops wait while a market is paused (a book in auction may even be crossed)
        for _ in range(MAX_TRIGGER_ROUNDS):
            if not ms.triggers:
                return
            fired = None
            for order in ms.triggers.values():
                ref = ms.reference_price(order.trigger_reference)
                if ref is None:
                    continue
                trig = order.trigger_amount
                stop = order.order_type.startswith("stopLoss")
                if order.side == "sell":
                    hit = ref <= trig if stop else ref >= trig
                else:
                    hit = ref >= trig if stop else ref <= trig
                if hit:
                    fired = order
                    break
            if fired is None:
                return
            del ms.triggers[fired.order_id]
            fired.triggered = True
            fired.status = "new"
            fired.updated = self._t
            self._emit_order(fired, "triggered")
            self._execute(ms, fired)

    # ---- orders: get / update / cancel ----------------------------------------------------------
    def get_order(self, api_key: str, params: dict) -> dict:
        self._account(api_key)
        self._check_params(params, ("market", "orderId", "clientOrderId"))
        ms = self._market(params.get("market"))
        return self._find_order(api_key, ms, params).to_json()

    def update_order(self, api_key: str, body: dict) -> dict:
        account = self._account(api_key)
        for key in body:
            if key not in UPDATE_PARAMS:
                raise E.not_supported(key)
        ms = self._market(body.get("market"))
        operator_id = parse_operator_id(body)
        if ms.spec.status in ("halted", "cancelOnly", "auctionMatching"):
            raise E.market_status(ms.spec.status)
        order = self._find_order(api_key, ms, body)
        if order.order_type == "market":
            raise E.market_order_update()
        changes = [k for k in ("amount", "amountQuote", "amountRemaining", "price", "triggerAmount",
                               "timeInForce", "selfTradePrevention", "postOnly") if body.get(k) is not None]
        if not changes:
            raise E.nothing_to_update()
        if body.get("amount") is not None and body.get("amountRemaining") is not None:
            raise E.amount_and_remaining()
        if (body.get("amountQuote") is not None and order.amount is not None) or (
                order.amount_quote is not None and (body.get("amount") is not None
                                                    or body.get("amountRemaining") is not None)):
            raise E.switch_amount_quote()
        if not order.is_open:
            raise E.order_not_active()
        spec = ms.spec
        new = {}
        if body.get("amount") is not None:
            amount = parse_positive("amount", body["amount"])
            check_amount(spec, "amount", amount)
            if amount <= order.filled_amount:
                raise E.invalid("amount")
            new["amount"] = amount
        if body.get("amountRemaining") is not None:
            remaining = parse_positive("amountRemaining", body["amountRemaining"])
            check_amount(spec, "amountRemaining", remaining)
            new["amount"] = order.filled_amount + remaining
        if body.get("amountQuote") is not None:
            if order.order_type not in ("stopLoss", "takeProfit"):
                raise E.not_supported_for_type("amountQuote")
            aq = parse_positive("amountQuote", body["amountQuote"])
            check_quote(spec, aq)
            new["amountQuote"] = aq
        if body.get("price") is not None:
            if not order.is_limit_like:
                raise E.not_supported_for_type("price")
            price = parse_positive("price", body["price"])
            check_price(spec, "price", price)
            new["price"] = price
        if body.get("triggerAmount") is not None:
            if order.order_type not in TRIGGER_TYPES or order.status != "awaitingTrigger":
                raise E.not_supported_for_type("triggerAmount")
            trig = parse_positive("triggerAmount", body["triggerAmount"])
            check_price(spec, "triggerAmount", trig)
            new["triggerAmount"] = trig
        if body.get("timeInForce") is not None:
            if body["timeInForce"] not in ("GTC", "IOC", "FOK"):
                raise E.invalid("timeInForce")
            new["timeInForce"] = body["timeInForce"]
        if body.get("selfTradePrevention") is not None:
            if body["selfTradePrevention"] not in ("decrementAndCancel", "cancelOldest", "cancelNewest", "cancelBoth"):
                raise E.invalid("selfTradePrevention")
            new["selfTradePrevention"] = body["selfTradePrevention"]
        if body.get("postOnly") is not None:
            new["postOnly"] = parse_bool("postOnly", body["postOnly"])
        response_required = True
        if body.get("responseRequired") is not None:
            response_required = parse_bool("responseRequired", body["responseRequired"])
        amount = new.get("amount", order.amount)
        price = new.get("price", order.price)
        if amount is not None and price is not None and (amount - order.filled_amount) * price < spec.min_quote \
                and "amount" in new:
            raise E.notional_too_low()

        # The order leaves the book during the update and re-enters as a new taker (Bitvavo
        # docs: "your order is briefly removed from the order book").
        now = self._now()
        self._t = now
        resting = ms.book.index.get(order.order_id)
        old_hold = order.on_hold
        account.release(order.on_hold_currency, old_hold)
        order.on_hold = ZERO
        saved = (order.amount, order.amount_remaining, order.amount_quote, order.amount_quote_remaining,
                 order.price, order.trigger_amount)
        if "amount" in new:
            order.amount = new["amount"]
            order.amount_remaining = new["amount"] - order.filled_amount
        if "amountQuote" in new:
            order.amount_quote = new["amountQuote"]
            order.amount_quote_remaining = new["amountQuote"]
        if "price" in new:
            order.price = new["price"]
        if "triggerAmount" in new:
            order.trigger_amount = new["triggerAmount"]
        hold = self._hold_for(order, ms, account)
        if order.side == "buy" and order.amount is not None and order.price is not None:
            hold = round_up(order.amount_remaining * order.price * (1 + account.taker_fee), spec.notional_decimals)
        elif order.side == "sell" and order.amount is not None:
            hold = order.amount_remaining
        try:
            account.reserve(order.on_hold_currency, hold)
        except ExchangeError:
            (order.amount, order.amount_remaining, order.amount_quote, order.amount_quote_remaining,
             order.price, order.trigger_amount) = saved
            account.reserve(order.on_hold_currency, old_hold)
            order.on_hold = old_hold
            raise
        order.on_hold = hold
        order.time_in_force = new.get("timeInForce", order.time_in_force)
        order.stp = new.get("selfTradePrevention", order.stp)
        order.post_only = new.get("postOnly", order.post_only)
        order.operator_id = operator_id
        order.updated = now
        self._emit_order(order, "updated")
        if order.status != "awaitingTrigger":
            if resting is not None:
                ms.book.remove(resting)
            self._execute(ms, order)
        self._check_triggers(ms)
        self._emit_market_updates(ms)
        return order.to_json() if response_required else order.short_json()

    def cancel_order(self, api_key: str, params: dict) -> dict:
        self._account(api_key)
        self._check_params(params, ("market", "orderId", "clientOrderId", "operatorId"))
        ms = self._market(params.get("market"))
        operator_id = parse_operator_id(params)
        if ms.spec.status == "halted":
            raise E.market_status("halted")
        order = self._find_order(api_key, ms, params)
        if not order.is_open:
            raise E.order_not_found()
        self._t = self._now()
        self._cancel(ms, order)
        self._check_triggers(ms)  # a canceled level can move bestBid/bestAsk/midPrice
        self._emit_market_updates(ms)
        out = {"orderId": order.order_id}
        if order.client_order_id is not None:
            out["clientOrderId"] = order.client_order_id
        out["operatorId"] = operator_id
        return out

    def _cancel(self, ms: MarketState, order: Order) -> None:
        resting = ms.book.index.get(order.order_id)
        if resting is not None:
            ms.book.remove(resting)
        self._finalize(order, "canceled", "canceled")

    def cancel_orders(self, api_key: str, params: dict) -> list:
        self._account(api_key)
        self._check_params(params, ("market", "operatorId"))
        operator_id = parse_operator_id(params)
        selected = [self._market(params["market"])] if params.get("market") else list(self.mstates.values())
        self._t = self._now()
        out = []
        for ms in selected:
            if ms.spec.status == "halted":
                if params.get("market"):
                    raise E.market_status("halted")
                continue
            for order in list(self.open_orders.get((api_key, ms.market), {}).values()):
                self._cancel(ms, order)
                out.append({"orderId": order.order_id, "operatorId": operator_id})
            self._check_triggers(ms)
            self._emit_market_updates(ms)
        return out

    def orders(self, api_key: str, params: dict) -> list:
        self._account(api_key)
        self._check_params(params, ("market", "limit", "start", "end", "orderIdFrom", "orderIdTo"))
        ms = self._market(params.get("market"))
        limit = self._int_param(params, "limit", 1, 1000, 500)
        start, end = self._ts_param(params, "start"), self._ts_param(params, "end")
        ids = self.orders_by_market.get((api_key, ms.market), [])
        lo, hi = 0, len(ids)
        if params.get("orderIdFrom"):
            lo = ids.index(params["orderIdFrom"]) if params["orderIdFrom"] in ids else hi
        if params.get("orderIdTo"):
            hi = ids.index(params["orderIdTo"]) + 1 if params["orderIdTo"] in ids else 0
        out = []
        for order_id in reversed(ids[lo:hi]):
            order = self.order_index.get(order_id)
            if order is None:
                continue
            if end is not None and order.created > end:
                continue
            if start is not None and order.created < start:
                break
            out.append(order.to_json())
            if len(out) >= limit:
                break
        return out

    def orders_open(self, api_key: str, params: dict) -> list:
        self._account(api_key)
        self._check_params(params, ("market", "base"))
        if params.get("market"):
            markets = [self._market(params["market"]).market]
        elif params.get("base"):
            markets = [m for m, ms in self.mstates.items() if ms.spec.base == params["base"]]
        else:
            markets = list(self.mstates)
        out = []
        for market in markets:
            opened = self.open_orders.get((api_key, market), {})
            out.extend(o.to_json() for o in sorted(opened.values(), key=lambda o: o.created, reverse=True))
        return out

    def trades(self, api_key: str, params: dict) -> list:
        self._account(api_key)
        self._check_params(params, ("market", "limit", "start", "end", "tradeIdFrom", "tradeIdTo", "tradeId"))
        ms = self._market(params.get("market"))
        limit = self._int_param(params, "limit", 1, 1000, 500)
        start, end = self._ts_param(params, "start"), self._ts_param(params, "end")
        rows = list(self.own_trades.get((api_key, ms.market), ()))
        ids = [r["id"] for r in rows]
        lo, hi = 0, len(rows)
        id_to = params.get("tradeIdTo") or params.get("tradeId")
        if params.get("tradeIdFrom"):
            lo = ids.index(params["tradeIdFrom"]) if params["tradeIdFrom"] in ids else hi
        if id_to:
            hi = ids.index(id_to) + 1 if id_to in ids else 0
        out = []
        for row in reversed(rows[lo:hi]):
            if end is not None and row["timestamp"] > end:
                continue
            if start is not None and row["timestamp"] < start:
                break
            out.append(dict(row))
            if len(out) >= limit:
                break
        return out

    # ---- account -------------------------------------------------------------------------------
    def account(self, api_key: str) -> dict:
        acct = self._account(api_key)
        return {"fees": {"taker": fmt_fee(acct.taker_fee), "maker": fmt_fee(acct.maker_fee),
                         "volume": f"{acct.volume_30d:.2f}"}}

    def fees(self, api_key: str, params: dict) -> dict:
        acct = self._account(api_key)
        self._check_params(params, ("market", "quote"))
        if params.get("market"):
            self._market(params["market"])
        if params.get("quote") and params["quote"] not in ("EUR", "USDC"):
            raise E.invalid("quote")
        return {"tier": "0", "volume": f"{acct.volume_30d:.2f}", "taker": fmt_fee(acct.taker_fee),
                "maker": fmt_fee(acct.maker_fee)}

    def balance(self, api_key: str, params: dict) -> list:
        acct = self._account(api_key)
        self._check_params(params, ("symbol",))
        symbol = params.get("symbol") or None
        return acct.balance_json(symbol)

    def deposit(self, api_key: str, params: dict) -> dict:
        self._account(api_key)
        symbol = params.get("symbol")
        if not symbol:
            raise E.missing("symbol")
        if symbol not in self._asset_specs():
            raise E.invalid("symbol")
        if symbol == "EUR":
            return {"iban": "NL32BUNQ2291234129", "bic": "BUNQNL2A", "description": api_key[:10].upper()}
        return {"address": f"sandbox-{symbol.lower()}-{api_key[:8]}", "paymentid": ""}

    def withdraw(self, api_key: str, body: dict) -> dict:
        acct = self._account(api_key)
        for name in ("symbol", "amount", "address"):
            if body.get(name) in (None, ""):
                raise E.missing(name)
        symbol = body["symbol"]
        if symbol not in self._asset_specs():
            raise E.invalid("symbol")
        amount = parse_decimal(body["amount"])
        if amount is None or amount <= 0:
            raise E.invalid("amount")
        if acct.available(symbol) < amount:
            raise ExchangeError(408, "You do not have sufficient balance to complete this operation.")
        acct.bal(symbol).available -= amount
        self.ledger.add(EXTERNAL_ACCOUNT, symbol, amount)
        now = self._now()
        self.withdrawals.setdefault(api_key, []).append({
            "timestamp": now, "symbol": symbol, "amount": fmt(amount), "fee": "0",
            "status": "completed", "address": str(body["address"]),
            **({"paymentId": str(body["paymentId"])} if body.get("paymentId") else {})})
        return {"success": True, "symbol": symbol, "amount": fmt(amount)}

    def deposit_history(self, api_key: str, params: dict) -> list:
        self._account(api_key)
        return []

    def withdrawal_history(self, api_key: str, params: dict) -> list:
        self._account(api_key)
        symbol = params.get("symbol")
        limit = self._int_param(params, "limit", 1, 1000, 500)
        rows = [w for w in reversed(self.withdrawals.get(api_key, [])) if not symbol or w["symbol"] == symbol]
        return [dict(w) for w in rows[:limit]]

    # ---- admin / faults ------------------------------------------------------------------------
    def admin_orders(self, client_order_id: str | None = None) -> list:
        return [o.to_json() for o in self.order_index.values()
                if client_order_id is None or o.client_order_id == client_order_id]

    def set_market_status(self, market: str, status: str) -> None:
        ms = self._market(market)
        if status not in STATUSES:
            raise E.invalid("status", status)
        previous = ms.spec.status
        ms.spec.status = status
        ms.last_step_ms = self._now()
        self._t = ms.last_step_ms
        if status == "trading" and previous in ("auction", "auctionMatching"):
            self._uncross(ms)
            self._check_triggers(ms)
            self._emit_market_updates(ms)

    # ---- auction -------------------------------------------------------------------------------
    @staticmethod
    def clearing_tick(book: OrderBook, reference: int | None) -> int | None:
        """The single price of an uncross: the tick that executes the most volume; ties go to
        the smallest imbalance, then to the tick nearest ``reference`` (the last trade), then
        the lower tick. None when the book is not crossed."""
        bid, ask = book.bids.best(), book.asks.best()
        if bid is None or ask is None or bid < ask:
            return None
        candidates = sorted({t for t in book.bids.ticks if t >= ask} | {t for t in book.asks.ticks if t <= bid})
        best_key, best_tick = None, None
        for tick in candidates:
            demand = sum((book.bids.levels[t].total for t in book.bids.ticks if t >= tick), ZERO)
            supply = sum((book.asks.levels[t].total for t in book.asks.ticks if t <= tick), ZERO)
            key = (-min(demand, supply), abs(demand - supply), abs(tick - reference) if reference is not None else 0)
            if best_key is None or key < best_key:
                best_key, best_tick = key, tick
        return best_tick

    def _uncross(self, ms: MarketState) -> None:
        """End of an auction: match the crossed part of the book at one clearing price, in
        price-time priority on each side. Both sides rested, so both pay the maker fee; the
        public trade's side is that of the later order. Orders of one account never trade
        with each other: the later one is canceled (cancelNewest)."""
        book = ms.book
        last = ms.last_price()
        tick = self.clearing_tick(book, None if last is None else int(last / ms.spec.tick))
        if tick is None:
            return
        price = ms.price(tick)
        spec = ms.spec
        while True:
            bid, ask = book.bids.best(), book.asks.best()
            if bid is None or ask is None or bid < tick or ask > tick:
                return
            b = next(iter(book.bids.levels[bid].orders.values()))
            a = next(iter(book.asks.levels[ask].orders.values()))
            later = b if b.seq > a.seq else a
            if b.owner is not None and b.owner == a.owner:
                book.remove(later)
                later.order.restatement_reason = "cancelOnSelfTradePrevention"
                self._finalize(later.order, "canceledSelfTradePrevention", "canceled")
                continue
            qty = min(b.remaining, a.remaining)
            for r in (b, a):
                book.reduce(r, qty)
                if r.owner is None:
                    self._settle_lp(r.side, spec.base, spec.quote, qty, qty * price)
                else:
                    self._settle_user(ms, r.order, qty, price, taker=False)
            self._print_trade(ms, self._t, price, qty, later.side, self.ids.next(f"trade:{ms.market}"))

    def set_reject_next_orders(self, n: int, error_code: int = 230, order_type: str | None = None) -> None:
        self._reject_next = n
        self._reject_code = error_code
        self._reject_type = order_type

    def skip_book_nonce(self, market: str) -> None:
        self._market(market).skip_nonce = True

    def save_state(self) -> None:
        if self.config.state_path:
            persistence.save(self, self.config.state_path)

    # ---- simulation ----------------------------------------------------------------------------
    def lp_place(self, market: str, side: str, tick: int, qty: Decimal) -> Resting | None:
        ms = self.mstates[market]
        book = ms.book
        remaining = [qty]
        if would_take(book, side, tick):
            def take(maker: Resting, q: Decimal, t: int) -> None:
                remaining[0] -= q
                self._on_trade(ms, maker, q, t, None, side)

            taker = Taker(None, side, tick, lambda _t: remaining[0])
            match(book, taker, take, lambda _m, _d: None)
        if remaining[0] <= 0:
            r = None
        else:
            # Simulated quotes never show their id to anyone: a counter is enough (ids.next costs a hash).
            self._lp_seq += 1
            r = book.add(f"lp-{self._lp_seq}", None, side, tick, remaining[0])
        if self._per_change:
            self._book_event(ms)
        return r

    def lp_cancel(self, market: str, resting: Resting) -> None:
        ms = self.mstates[market]
        if resting.order_id in ms.book.index:
            ms.book.remove(resting)
            if self._per_change:
                self._book_event(ms)

    def sim_take(self, market: str, side: str, qty: Decimal) -> None:
        ms = self.mstates[market]
        remaining = [qty]

        def take(maker: Resting, q: Decimal, t: int) -> None:
            remaining[0] -= q
            self._on_trade(ms, maker, q, t, None, side)

        match(ms.book, Taker(None, side, None, lambda _t: remaining[0]), take, lambda _m, _d: None)
        if self._per_change:
            self._book_event(ms)

    def step(self, markets: Iterable[MarketState] | None = None) -> None:
        """Simulate every market (or the given ones) up to now; a server steps them in slices so
        that requests are answered between slices."""
        now = self._now()
        cfg = self.config
        for ms in self.mstates.values() if markets is None else markets:
            last = ms.last_step_ms
            elapsed = now - last
            if elapsed <= 0 or (elapsed <= ms.sim.step_every_ms and not ms.triggers):
                continue  # a thin market waits for its own cadence, unless a user's stop is armed
            if ms.spec.status != "trading" or not cfg.simulate:
                ms.last_step_ms = now
                self._t = now
                if ms.triggers and ms.spec.status == "trading":
                    self._check_triggers(ms)
                ms.tape.expire(now)
                self._emit_market_updates(ms)
                continue
            sim = ms.sim
            if now - last > cfg.max_catchup_ms:
                # Too long a pause to simulate trade by trade: jump the price, requote.
                self._t = now
                sim.advance(now, now - last)
                sim.requote(self, ms.book)
            else:
                t = last
                while t < now:
                    dt = min(cfg.max_step_ms, now - t)
                    t += dt
                    self._t = t
                    sim.advance(t, dt)
                    sim.requote(self, ms.book, dt)
                    sim.flow(self, dt)
                    if ms.triggers:
                        self._check_triggers(ms)
            self._t = now
            if ms.triggers:
                self._check_triggers(ms)
            ms.last_step_ms = now
            ms.tape.expire(now)
            self._emit_market_updates(ms)

    def _emit_market_updates(self, ms: MarketState) -> None:
        if ms.candles.dirty:
            for interval, start, row in ms.candles.take_dirty():
                self._events.append(CandleEvent(ms.market, interval, start, row))
        raw = ms.top_raw()
        if raw == ms.last_top_raw:
            return
        ms.last_top_raw = raw
        top = ms.top()
        changed = {k: v for k, v in top.items() if ms.last_ticker.get(k) != v}
        if changed:
            ms.last_ticker = top
            self._events.append(TickerEvent(ms.market, changed))

    def _book_event(self, ms: MarketState) -> None:
        """Queue one book event with the market's unsent changes (nonce + 1), if it has any."""
        book = ms.book
        if not book.has_changes():
            return
        bids, asks = book.take_changes()
        book.nonce += 2 if ms.skip_nonce else 1  # skip_nonce: fault injection, a nonce gap
        ms.skip_nonce = False
        self._events.append(BookEvent(ms.market, book.nonce, bids, asks, self._now() * 1_000_000, ms.spec.tick))

    def _flush_dirty_books(self) -> None:
        dirty = self._dirty_books
        if dirty:
            for ms in list(dirty):
                self._book_event(ms)
            dirty.clear()

    def flush_book_events(self) -> list[BookEvent]:
        """Book events of every market with unsent changes (batched mode's timer calls this)."""
        self._flush_dirty_books()
        out = [e for e in self._events if type(e) is BookEvent]
        if out:
            self._events = [e for e in self._events if type(e) is not BookEvent]
        return out

    def drain_events(self) -> list[Event]:
        """Events since the last drain. Per-change mode: the book changes of the request just
        handled (a request is one change however many levels it touched) become their event."""
        if self._per_change:
            self._flush_dirty_books()
        events, self._events = self._events, []
        return events

    # ---- history -------------------------------------------------------------------------------
    def _generate_history(self) -> None:
        hours = self.config.history_hours if self.config.simulate else 0.0
        end = self._t
        start = end - int(hours * 3_600_000)
        for ms in self.mstates.values():
            if hours <= 0:
                continue
            spec = ms.spec
            tick = spec.tick

            def emit(ts: int, t: int, qty: Decimal, side: str, ms: MarketState = ms, tick: Decimal = tick) -> None:
                self._print_trade(ms, ts, t * tick, qty, side, self.ids.next(f"trade:{ms.market}"), emit=False)

            ms.sim.history(start, end, emit)
            ms.candles.dirty.clear()


def fmt_fee(rate: Decimal) -> str:
    return f"{rate:.4f}"
