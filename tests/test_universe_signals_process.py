"""The universe selector and the signal engine as processes on a real Redis (issue 10), fed with
made-up market data so every outcome is known; tests/test_stack_e2e.py runs them on the sandbox."""

from __future__ import annotations

import signal
import subprocess
from decimal import Decimal

import orjson
import redis

from tests.conftest import spawn, wait_until
from tests.signals import book, candle, candles_from_closes, momentum_series
from tradestack import streams
from tradestack.embedded_redis import free_port
from tradestack.messages import Ticker24hUpdated, Trace, UniverseChanged, decode, encode, new_id

SELECTOR = ["-m", "services.trader_universe_selector"]
ENGINE = ["-m", "services.trader_signal_engine"]


def stop(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    return err.decode()


def ticker(market: str, volume_quote: str, now_ms: int, last: str = "100") -> Ticker24hUpdated:
    msg_id = new_id()
    d = Decimal
    return Ticker24hUpdated(id=msg_id, ts=now_ms, src="test", trace=Trace(id=msg_id, ts=now_ms), market=market,
                            open=d("95"), high=d("110"), low=d("90"), last=d(last), volume=d(volume_quote) / 100,
                            volume_quote=d(volume_quote), bid=d("99.9"), bid_size=d("1"), ask=d("100.1"),
                            ask_size=d("1"), exchange_ts=now_ms)


def universe(client: redis.Redis) -> set[str]:
    return {k.decode() for k in client.hkeys(streams.UNIVERSE)}


def changes(client: redis.Redis) -> list[UniverseChanged]:
    out = []
    for _, fields in client.xrange(streams.TRADING_EVENTS):
        msg = decode(fields)
        if isinstance(msg, UniverseChanged):
            out.append(msg)
    return out


def test_universe_follows_volume_and_a_market_that_dries_up_leaves(redis_url: str, rclient: redis.Redis) -> None:
    now = int(rclient.time()[0]) * 1000
    for market, volume in (("BTC-EUR", "900000"), ("ETH-EUR", "500000"), ("SOL-EUR", "300000"), ("ADA-EUR", "1000")):
        rclient.xadd(streams.TICKER24H, encode(ticker(market, volume, now)))
    env = {"REDIS_URL": redis_url, "METRICS_PORT": str(free_port()), "UNIVERSE_REFRESH_SECS": "0.2",
           "UNIVERSE_FILTERS": '[{"method":"VolumeTopN","n":3,"quote":"EUR","min_volume_quote":10000}]'}
    proc = spawn(SELECTOR, env)
    try:
        # the tickers were there before the group: folded from history at start
        wait_until(lambda: universe(rclient) == {"BTC-EUR", "ETH-EUR", "SOL-EUR"}, what="the top 3 by volume")
        member = orjson.loads(rclient.hget(streams.UNIVERSE, "BTC-EUR"))
        assert member["rank"] == 1 and Decimal(member["volume_quote"]) == 900000
        # SOL-EUR's volume dries up: it leaves at the next refresh, in one atomic rewrite
        rclient.xadd(streams.TICKER24H, encode(ticker("SOL-EUR", "0", now + 1000)))
        wait_until(lambda: universe(rclient) == {"BTC-EUR", "ETH-EUR"}, what="SOL-EUR to leave")
        wait_until(lambda: len(changes(rclient)) == 2, what="two membership changes")
        first, second = changes(rclient)
        assert sorted(first.added) == ["BTC-EUR", "ETH-EUR", "SOL-EUR"] and not first.removed
        assert second.removed == ["SOL-EUR"] and not second.added
    finally:
        err = stop(proc)
    assert proc.returncode == 0, err
    # bad input goes to the DLQ with its reason, and the universe stays
    bad = ticker("XRP-EUR", "-5", now)
    rclient.xadd(streams.TICKER24H, encode(bad))
    proc = spawn(SELECTOR, env)
    try:
        wait_until(lambda: rclient.xlen(streams.dlq(streams.TICKER24H)) == 1, what="the bad ticker dead-lettered")
        (_, record), = rclient.xrange(streams.dlq(streams.TICKER24H))
        assert b"volume" in record[b"error"]
        assert universe(rclient) == {"BTC-EUR", "ETH-EUR"}
    finally:
        stop(proc)


def test_bad_filter_chain_stops_at_start_with_one_line(redis_url: str) -> None:
    proc = spawn(SELECTOR, {"REDIS_URL": redis_url, "METRICS_PORT": str(free_port()),
                            "UNIVERSE_FILTERS": '[{"method":"VolumeTopN","n":3},{"method":"MaxSpread","max_bps":-1}]'})
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2
    line = [ln for ln in err.decode().splitlines() if ln.startswith("tradestack:")]
    assert len(line) == 1 and "MaxSpread" in line[0] and "max_bps" in line[0], err


def engine_env(redis_url: str) -> dict[str, str]:
    # the series is from 2023 and has made-up books: the age, spread and volatility gates stay open
    return {"REDIS_URL": redis_url, "METRICS_PORT": str(free_port()), "SIGNAL_MAX_CANDLE_AGE_MS": "0",
            "SIGNAL_MAX_BOOK_AGE_MS": "0", "SIGNAL_MIN_VOL": "0", "SIGNAL_MAX_VOL": "1000",
            "SIGNAL_MAX_SPREAD_BPS": "1000", "SIGNAL_UNIVERSE_POLL_S": "0.2"}


def signals(client: redis.Redis) -> list[tuple[str, str, str, int]]:
    out = []
    for _, fields in client.xrange(streams.SIGNALS_BASELINE):
        msg = decode(fields)
        out.append((msg.id, msg.strategy, msg.side, msg.candle_open_ts))  # type: ignore[attr-defined]
    return out


def test_signal_engine_warms_from_history_signals_once_and_never_again(redis_url: str, rclient: redis.Redis) -> None:
    series = candles_from_closes(momentum_series())  # known calls: momentum sell at 64, buy at 74
    rclient.hset(streams.UNIVERSE, "BTC-EUR", "{}")
    for msg in series[:60]:  # history, before the engine's group exists
        rclient.xadd(streams.candles("1m"), encode(msg))
    proc = spawn(ENGINE, engine_env(redis_url))
    try:
        wait_until(lambda: rclient.exists(streams.heartbeat("trader_signal_engine")) and any(
            g["name"] == b"trader_signal_engine" for g in rclient.xinfo_groups(streams.candles("1m"))),
            what="the engine's group")
        rclient.xadd(streams.BOOK, encode(book("BTC-EUR", ts=series[60].ts, bid=130.0)))
        for msg in series[60:]:
            rclient.xadd(streams.candles("1m"), encode(msg))
        # outside the universe: ignored, not an error; malformed: the DLQ with the reason
        rclient.xadd(streams.candles("1m"), encode(candle(95, 1, 2, 0.5, 1.5, market="DOGE-EUR")))
        rclient.xadd(streams.candles("1m"), encode(candle(96, 10, 9, 11, 10)))  # high below low
        wait_until(lambda: rclient.xlen(streams.dlq(streams.candles("1m"))) == 1, what="the bad candle dead-lettered")
        wait_until(lambda: len(signals(rclient)) >= 2, what="the momentum signals")
        first = signals(rclient)
    finally:
        err = stop(proc)
    assert proc.returncode == 0, err
    momentum = [(side, ts) for _, strategy, side, ts in first if strategy == "momentum"]
    assert momentum == [("sell", series[64].open_ts), ("buy", series[74].open_ts)]
    (_, record), = rclient.xrange(streams.dlq(streams.candles("1m")))
    assert b"high" in record[b"error"]
    # a restart, and every closed candle published again (a replay): not one new signal
    proc = spawn(ENGINE, engine_env(redis_url))
    try:
        for msg in series[60:]:
            rclient.xadd(streams.candles("1m"), encode(msg.model_copy(update={"id": new_id()})))
        marker = candle(97, 100, 101, 99, 100, market="DOGE-EUR")  # after the replay: seen = all seen
        rclient.xadd(streams.candles("1m"), encode(marker))
        wait_until(lambda: any(g["name"] == b"trader_signal_engine" and g["pending"] == 0
                               and g["last-delivered-id"] == rclient.xrevrange(streams.candles("1m"), count=1)[0][0]
                               for g in rclient.xinfo_groups(streams.candles("1m"))), what="the replay consumed")
    finally:
        err = stop(proc)
    assert proc.returncode == 0, err
    assert signals(rclient) == first
