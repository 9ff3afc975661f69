"""`tradestack up` on a fresh data directory, the way an operator starts it: an embedded Redis, the
sandbox exchange, every process. The universe forms from the sandbox's tickers, book and candle
ingest follow it, and the signal engine emits signals on its closed candles (issue 10).

Bounded: the strategy is made eager (a 2/3 EMA cross, the gates open) so a signal comes with the
first closed candles instead of whenever the market obliges; the test ends as soon as one is there.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.conftest import port_is_open, wait_until
from tests.stack_helpers import run_stack
from tradestack import streams
from tradestack.messages import DecisionMade, SignalEmitted, decode

PORTS = (9601, 9602, 9603, 9604, 9605, 9610, 9611, 9612)


@pytest.fixture
def stack(tmp_path: Path):  # type: ignore[no-untyped-def]
    if any(port_is_open(p) for p in PORTS):
        pytest.skip("a stack is already running on this machine (its metrics ports are taken)")
    env = dict(UNIVERSE_REFRESH_SECS="1", UNIVERSE_STALE_AFTER_MS="5000",
               SIGNAL_STRATEGIES='[{"method":"momentum","fast":2,"slow":3,"trend":3}]', SIGNAL_MIN_VOL="0",
               SIGNAL_MAX_VOL="1000", SIGNAL_MAX_SPREAD_BPS="1000", SIGNAL_UNIVERSE_POLL_S="1")
    with run_stack(tmp_path, env=env) as running:
        yield running.client, running.proc, running.log


def test_stack_selects_markets_emits_signals_decides_and_fills(stack) -> None:  # type: ignore[no-untyped-def]
    client, proc, log = stack

    def members() -> set[str]:
        return {k.decode() for k in client.hkeys(streams.UNIVERSE)}

    try:
        wait_until(lambda: members(), timeout_s=60, what="a non-empty trading:universe")
        selected = members()
        assert all(m.endswith("-EUR") for m in selected)
        # book and candle ingest follow the universe: their markets are the selected ones
        wait_until(lambda: client.xlen(streams.candles("1m")) > 0, timeout_s=60, what="candles of the universe")
        wait_until(lambda: client.xlen(streams.SIGNALS_BASELINE) > 0, timeout_s=150, what="a signal")
        # the trading core decides on it (rules from the sandbox's /markets)
        wait_until(lambda: client.xlen(streams.ORDERS_SIGNALS) > 0, timeout_s=30, what="a decision")
        # an accepted one is filled by the paper broker, and its stop rests (paper) at once
        wait_until(lambda: client.xlen(streams.ORDERS_SHADOW) > 0, timeout_s=120, what="an entry intent")
        wait_until(lambda: any(decode(f).purpose == "stop" for _, f in client.xrange(streams.ORDERS_EXECUTED)),
                   timeout_s=30, what="an entry filled and its stop placed")
    except AssertionError:
        print(log.read_text()[-5000:])
        raise
    (_, fields), = client.xrange(streams.SIGNALS_BASELINE, count=1)
    sig = decode(fields)
    assert isinstance(sig, SignalEmitted)
    assert sig.market in members() | selected and sig.strategy == "momentum" and sig.interval == "1m"
    assert sig.atr is not None and sig.ref_price > 0
    wait_until(lambda: orjson.loads(client.get(streams.heartbeat("trader_signal_engine")))["state"] == "running",
               what="the signal engine running")
    (_, fields), = client.xrange(streams.ORDERS_SIGNALS, count=1)
    decision = decode(fields)
    assert isinstance(decision, DecisionMade) and decision.signal_id == sig.id and decision.mode == "paper"
    assert decision.accepted or decision.reasons, decision
    assert proc.poll() is None
