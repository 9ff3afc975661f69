"""Save/restore accounts, orders, fills, own trades and id counters as JSON (atomic write)."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections import deque
from decimal import Decimal
from typing import TYPE_CHECKING

from .accounts import Balance
from .orders import ACTIVE_STATUSES, Fill, Order

if TYPE_CHECKING:
    from .exchange import Exchange

log = logging.getLogger(__name__)
VERSION = 1

_DEC_FIELDS = ("amount", "amount_remaining", "amount_quote", "amount_quote_remaining", "price",
               "trigger_amount", "on_hold", "filled_amount", "filled_amount_quote", "fee_paid")
_PLAIN_FIELDS = ("order_id", "market", "api_key", "side", "order_type", "created", "updated", "status",
                 "operator_id", "base", "quote", "trigger_type", "trigger_reference", "time_in_force",
                 "post_only", "stp", "client_order_id", "restatement_reason", "triggered")


def _dec(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _order_to_state(order: Order) -> dict:
    d = {name: getattr(order, name) for name in _PLAIN_FIELDS}
    d.update({name: _dec(getattr(order, name)) for name in _DEC_FIELDS})
    d["fills"] = [[f.fill_id, f.timestamp, str(f.amount), str(f.price), f.taker, str(f.fee), f.fee_currency]
                  for f in order.fills]
    return d


def _order_from_state(d: dict) -> Order:
    kwargs = {name: d[name] for name in _PLAIN_FIELDS}
    kwargs.update({name: None if d[name] is None else Decimal(d[name]) for name in _DEC_FIELDS})
    order = Order(**kwargs)
    order.fills = [Fill(f[0], f[1], Decimal(f[2]), Decimal(f[3]), f[4], Decimal(f[5]), f[6]) for f in d["fills"]]
    return order


def snapshot(ex: Exchange) -> dict:
    return {
        "version": VERSION,
        "seed": ex.config.seed,
        "ids": dict(ex.ids.counters),
        "accounts": {
            key: {"balances": {a: [str(b.available), str(b.in_order)] for a, b in acct.balances.items()},
                  "volume": str(acct.volume_30d)}
            for key, acct in ex.accounts.items()
        },
        "ledger": {who: {a: str(v) for a, v in amounts.items()} for who, amounts in ex.ledger.amounts.items()},
        "orders": [_order_to_state(ex.order_index[oid]) for ids in ex.orders_by_market.values() for oid in ids
                   if oid in ex.order_index],
        "own_trades": [[k[0], k[1], list(v)] for k, v in ex.own_trades.items()],
        "withdrawals": ex.withdrawals,
        "mids": {m: ms.sim.mid for m, ms in ex.mstates.items()},
    }


def save(ex: Exchange, path: str) -> None:
    data = snapshot(ex)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, separators=(",", ":"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never half
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    log.info("sandbox_state_saved", extra={"path": path, "orders": len(data["orders"])})


def load_into(ex: Exchange, path: str) -> None:
    """Restore state saved by ``save``; a missing file means a fresh start."""
    if not os.path.exists(path):
        return
    with open(path) as fh:
        data = json.load(fh)
    for kind, n in data.get("ids", {}).items():
        ex.ids.counters[kind] = max(ex.ids.counters.get(kind, 0), n)
    for key, acct_state in data["accounts"].items():
        acct = ex.accounts.get(key)
        if acct is None:
            log.warning("sandbox_state_unknown_account", extra={"api_key": key})
            continue
        acct.balances = {a: Balance(Decimal(v[0]), Decimal(v[1])) for a, v in acct_state["balances"].items()}
        acct.volume_30d = Decimal(acct_state.get("volume", "0"))
    for who, amounts in data["ledger"].items():
        ex.ledger.amounts[who] = {a: Decimal(v) for a, v in amounts.items()}
    for mid_market, mid in data.get("mids", {}).items():
        ms = ex.mstates.get(mid_market)
        if ms is not None and ms.sim.mid_source is None and mid > 0:
            ms.sim.log_mid = math.log(mid)
    for d in data["orders"]:
        order = _order_from_state(d)
        ms = ex.mstates.get(order.market)
        if ms is None:
            continue
        key = (order.api_key, order.market)
        ex.order_index[order.order_id] = order
        ex.orders_by_market.setdefault(key, []).append(order.order_id)
        if order.is_open:
            ex.open_orders.setdefault(key, {})[order.order_id] = order
            if order.status == "awaitingTrigger":
                ms.triggers[order.order_id] = order
            elif order.status in ACTIVE_STATUSES and order.is_limit_like:
                tick = int(order.price / ms.spec.tick)
                ms.book.add(order.order_id, order.api_key, order.side, tick, order.amount_remaining, order)
    for api_key, market, rows in data.get("own_trades", []):
        ex.own_trades[(api_key, market)] = deque(rows, maxlen=50_000)
    ex.withdrawals = data.get("withdrawals", {})
    log.info("sandbox_state_loaded", extra={"path": path, "orders": len(data["orders"])})
