"""Executor: settings, streams and wiring (DESIGN §1, §3, §5). The decisions are in manager.py
(``OrderManager``, pure), the brokers in brokers.py (paper.py simulates Bitvavo; sandbox and live
use Bitvavo's private API), the mode gates in gates.py (docs/executor.md).

Reads ``orders:shadow`` (intents from the core) and, in paper mode, ``bitvavo:book`` (the paper
fills and stops); in sandbox and live mode the account's order events (authenticated WS) with REST
polling while the socket is down. Writes execution reports to ``orders:executed`` and lifecycle
events to ``trading:events``. One executor acts (``lease:trader_executor``).

Start: the mode gates (a missing one stops the start with one line), market rules, the manager
rebuilt from ``orders:shadow`` and ``orders:executed``, then reconciled with the exchange (its open
orders; every order not known final looked up) before any new intent is read.

Safety at the door, whatever the core decided: the kill switch is read from Redis again right
before an entry is sent (Redis unreachable counts as on); live limits are checked by the manager.
Every ``Place`` is preceded by a lookup of its clientOrderId ("look before you place"): an order
sent just before a crash (before its report was committed) is found and adopted, never sent twice.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from contextlib import nullcontext
from decimal import Decimal
from typing import Any, cast

import orjson
from pydantic import Field, field_validator

from services.trader_executor.app.brokers import Broker, PaperBrokerAdapter, RealBroker
from services.trader_executor.app.gates import resolve_mode
from services.trader_executor.app.manager import (
    Amend,
    Cancel,
    Command,
    DoorLimits,
    Failure,
    OrderManager,
    Place,
    Step,
)
from services.trader_executor.app.paper import PaperBroker
from services.trader_executor.app.timing import IntentTimer
from tradestack import streams
from tradestack.bitvavo.orders import Fill, OrderState
from tradestack.bitvavo.parse import ParseError
from tradestack.bitvavo.private import AccountStream, BitvavoPrivate
from tradestack.bitvavo.rest import BitvavoRest, OrderNotFound, RestError, RestUnavailable
from tradestack.bus import REDIS_DOWN, Delivery
from tradestack.catalog import load_catalog
from tradestack.config import CommonSettings
from tradestack.effects import DelKey, Effect, HashDel, HashSet, Output, SetKey
from tradestack.errors import PoisonMessage
from tradestack.logs import get_logger
from tradestack.messages import (
    BookTopUpdated,
    EntryIntent,
    ExitIntent,
    Message,
    Mode,
    OrderExecuted,
    StopAmendIntent,
    TradingEvent,
)
from tradestack.metrics import ServiceMetrics
from tradestack.ratelimit import protective, shared_budget
from tradestack.rebuild import Rebuild, fold_history
from tradestack.service import Service, run_service

log = get_logger(__name__)

NAME = "trader_executor"
METRICS_PREFIX = "trader_executor"
READS = [streams.ORDERS_SHADOW]
WRITES = [streams.ORDERS_EXECUTED, streams.TRADING_EVENTS]
KEYS = [streams.KILL, streams.KILL_REASON]
# The paper account, written in the commit of the reports its changes made: a hash with "meta" (fees, the
# sequence, the closed orders kept), one "b:<asset>" field per balance and one "o:<order id>" per order
# kept, so a commit writes only what changed.
PAPER_STATE = "executor:paper"
MAX_COMMANDS = 64  # per input: a bug that loops never hammers the exchange
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MAX_TIMED_INTENTS = 10_000  # intents waiting for an ack/fill/stop to be timed (oldest forgotten first)
FINAL = frozenset({"filled", "canceled", "expired", "rejected"})
# Critical events that do not stop new risk: an order on the account we did not place is alerted and left
# alone (it may be a person's); everything else critical (a stop that cannot be placed, an emergency
# close that failed, coins sold twice, an order gone missing) sets trading:kill.
CRITICAL_WITHOUT_KILL = frozenset({"orphan_order"})


class Settings(CommonSettings):
    metrics_port: int = Field(9603, ge=0, le=65535)
    # Live gates (gates.py)
    secrets_file: str = ".env"
    golive_record: str = "./data/golive/golive.json"
    golive_max_age_hours: float = Field(24.0, gt=0)
    live_max_order_notional_eur: Decimal | None = None
    live_max_total_notional_eur: Decimal | None = None
    # Orders
    executor_stop_retries: int = Field(2, ge=0, le=10)
    executor_poll_secs: float = Field(5.0, gt=0)  # REST polling of our orders while the account socket is down
    executor_poll_up_secs: float = Field(60.0, gt=0)  # the same while it is up (a safety net)
    executor_commit_secs: float = Field(0.05, gt=0)  # reports from exchange events are committed this often
    # How long an entry may wait for the rate-limit budget (the part not kept for protective orders)
    # before it is refused and reported rejected (rate_limit_budget).
    executor_entry_budget_wait_s: float = Field(2.0, ge=0)
    # Paper broker
    paper_eur: Decimal = Field(Decimal(1000), gt=0)  # the paper account's starting EUR
    paper_maker_fee: Decimal = Field(Decimal("0.0015"), ge=0)
    paper_taker_fee: Decimal = Field(Decimal("0.0025"), ge=0)
    paper_slippage_bps: Decimal = Field(Decimal(0), ge=0)
    paper_book_max_age_ms: int = Field(10_000, ge=0)  # an older book is not filled against (0: no limit)
    paper_depth: int = Field(50, ge=1, le=1000)  # REST book depth fetched before a market order

    @field_validator("live_max_order_notional_eur", "live_max_total_notional_eur", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value


class Metrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__(METRICS_PREFIX)
        self.commands = self.hot_counter("commands_total", "Broker commands, by kind and outcome", ["kind", "outcome"])
        self.reports = self.hot_counter("reports_total", "Execution reports, by purpose and status",
                                        ["purpose", "status"])
        self.events = self.hot_counter("events_total", "Lifecycle events, by kind and severity", ["kind", "severity"])
        self.positions = self.gauge("positions", "Positions with coins held", [])
        self.unprotected = self.gauge("unprotected_positions", "Positions with coins held and no open stop "
                                      "(should be 0 but for a moment after a fill)", [])
        self.halted = self.gauge("halted_positions", "Positions the executor stopped acting on (critical)", [])
        self.account_ws = self.gauge("account_ws_up", "1 while the account socket is up (paper: always 1)", [])
        self.command_seconds = self.histogram("command_seconds", "Broker call time, by kind", ["kind"])
        self.orders = self.hot_counter("orders_total", "Orders sent (Place), by purpose, type and outcome "
                                       "(ok, rejected, unknown, not_found)", ["purpose", "order_type", "outcome"])
        self.rejects = self.hot_counter("rejects_total", "Exchange refusals, by purpose and Bitvavo errorCode",
                                        ["purpose", "code"])
        self.intent_ack = self.histogram("intent_ack_seconds", "Intent made (its ts) to the order acknowledged by "
                                         "the exchange, by purpose", ["purpose"], buckets=LATENCY_BUCKETS)
        self.intent_fill = self.histogram("intent_fill_seconds", "Intent made to the order filled, by purpose",
                                          ["purpose"], buckets=LATENCY_BUCKETS)
        self.intent_stop = self.histogram("intent_stop_seconds", "Entry intent made to its protective stop resting "
                                          "on the exchange", [], buckets=LATENCY_BUCKETS)
        self.ratelimit_remaining = self.gauge("ratelimit_remaining_points", "Rate-limit points left this minute "
                                              "(shared budget, the lower of ours and the exchange's)", ["scope"])
        self.ratelimit_bans = self.counter("ratelimit_bans_total", "105 bans seen (every process waits them out)",
                                           ["scope"])
        self.ratelimit_waits = self.counter("ratelimit_waits_total", "Times a request waited for the shared "
                                            "rate-limit budget, by priority (normal, protective)", ["priority"])
        self.reconciliation = self.hot_counter("reconciliation_total", "Reconciliation findings, by case (resumed, "
                                               "adopted, orphan, closed_while_down, protected, clean)", ["case"])
        self.unprotected_seconds = self.gauge("unprotected_seconds", "Longest time a position with coins held has "
                                              "been without a resting stop (0: none)", [])
        self.mode = self.gauge("mode", "1 for the mode orders are made in (paper, sandbox, live)", ["mode"])


def _kind(cmd: Command) -> str:
    return type(cmd).__name__.lower()


def setup(service: Service[Settings]) -> None:
    s = service.settings
    mode: Mode = resolve_mode(s, service.clock.now_ms())  # type: ignore[assignment]  # one line when refused
    metrics = service.metrics
    assert isinstance(metrics, Metrics)
    limits = DoorLimits(
        allowed_markets=frozenset(s.live_allowed_markets) if s.live_allowed_markets else None,
        max_order_notional_eur=s.live_max_order_notional_eur, max_total_notional_eur=s.live_max_total_notional_eur)
    lock = asyncio.Lock()  # one driver of the manager and the broker at a time
    pending: list[Effect] = []  # reports and events made outside a handler, committed by a timer
    holder: dict[str, Any] = {"ws_up": mode == "paper", "last_poll": 0.0}
    wake = asyncio.Event()  # the account socket (re)connected or said something: poll now
    budget = shared_budget(service.redis, s, service.clock)  # the key's and the IP's, shared in Redis
    timer = IntentTimer(MAX_TIMED_INTENTS)
    unprotected_since: dict[str, int] = {}  # position id → when it was first seen held without a stop
    exported: Counter[tuple[str, str]] = Counter()  # the budget's counts already added to the metrics
    metrics.mode.labels(mode=mode).set(1)

    def manager() -> OrderManager:
        return cast(OrderManager, holder["manager"])

    def broker() -> Broker:
        return cast(Broker, holder["broker"])

    async def kill_now() -> bool:
        """The switch as Redis has it right now (unreachable: on)."""
        try:
            return bool(await service.redis.get(streams.KILL) == b"1") or service.kill_switch
        except REDIS_DOWN:
            return True

    async def execute(cmd: Command) -> Step:
        # Everything but an entry protects a position (a stop, an exit, a cancel or a lookup that tells
        # what we hold): it may spend the rate-limit reserve entries must leave.
        entry = isinstance(cmd, Place) and cmd.purpose == "entry"
        with nullcontext() if entry else protective():
            return await execute_call(cmd)

    async def execute_call(cmd: Command) -> Step:
        m = manager()
        b = broker()
        now = service.clock.now_ms()
        kind = _kind(cmd)
        started = asyncio.get_running_loop().time()
        try:
            if isinstance(cmd, Place):
                existing = await b.get(cmd.market, cmd.client_order_id)  # look before you place
                if existing is not None:
                    log.warning("order_found_before_place", client_order_id=cmd.client_order_id,
                                status=existing.status, purpose=cmd.purpose)
                state: OrderState | None = existing if existing is not None else await b.place(cmd.request)
                assert state is not None
                metrics.orders.inc((cmd.purpose, cmd.request.order_type, "ok"))
                step = m.on_order(state, now)
            elif isinstance(cmd, Cancel):
                state = await b.cancel(cmd.market, cmd.client_order_id)
                step = m.on_order(state, now) if state is not None else \
                    m.on_failed(cmd, Failure("not_found", 240, "no such order"), now)
            elif isinstance(cmd, Amend):
                step = m.on_order(await b.amend(cmd.market, cmd.client_order_id, amount=cmd.amount,
                                                trigger_price=cmd.trigger_price), now)
            else:
                found = await b.get(cmd.market, cmd.client_order_id)
                step = m.on_lookup(cmd, found, now, kill_switch=service.kill_switch)
            metrics.commands.inc((kind, "ok"))
        except OrderNotFound as exc:
            metrics.commands.inc((kind, "not_found"))
            count_order(cmd, "not_found")
            step = m.on_failed(cmd, Failure("not_found", exc.error_code, str(exc)), now)
        except RestUnavailable as exc:  # before RestError: the outcome is unknown
            metrics.commands.inc((kind, "unknown"))
            count_order(cmd, "unknown")
            log.warning("order_outcome_unknown", command=kind, client_order_id=cmd.client_order_id, error=str(exc))
            step = m.on_failed(cmd, Failure("unknown", exc.error_code, str(exc)), now)
        except RestError as exc:
            metrics.commands.inc((kind, "rejected"))
            count_order(cmd, "rejected")
            metrics.rejects.inc((cmd.purpose if isinstance(cmd, Place) else kind, str(exc.error_code)))
            log.warning("order_rejected", command=kind, client_order_id=cmd.client_order_id, error=str(exc))
            step = m.on_failed(cmd, Failure("rejected", exc.error_code, str(exc)), now)
        except (OSError, TimeoutError, ParseError) as exc:
            metrics.commands.inc((kind, "unknown"))
            count_order(cmd, "unknown")
            log.warning("order_outcome_unknown", command=kind, client_order_id=cmd.client_order_id,
                        error=f"{type(exc).__name__}: {exc}")
            step = m.on_failed(cmd, Failure("unknown", None, f"{type(exc).__name__}: {exc}"), now)
        metrics.command_seconds.labels(kind=kind).observe(asyncio.get_running_loop().time() - started)
        return step

    def count_order(cmd: Command, outcome: str) -> None:
        if isinstance(cmd, Place):
            metrics.orders.inc((cmd.purpose, cmd.request.order_type, outcome))

    async def drive(first: Step) -> list[Effect]:
        """Carry out a step's commands and everything they lead to; the reports and events made."""
        out: list[Effect] = []
        steps = deque([first])
        sent = 0
        repeats: dict[Command, int] = {}
        while steps:
            step = steps.popleft()
            now = service.clock.now_ms()
            for report in step.reports:
                out.append(Output(streams.ORDERS_EXECUTED, report))
                metrics.reports.inc((report.purpose, report.status))
                for lat in timer.report(report, now):
                    if lat.measure == "stop":
                        metrics.intent_stop.observe(lat.seconds)
                    else:
                        (metrics.intent_ack if lat.measure == "ack" else metrics.intent_fill).labels(
                            purpose=lat.purpose).observe(lat.seconds)
            for event in step.events:
                out.append(Output(streams.TRADING_EVENTS, event))
                metrics.events.inc((event.kind, event.severity))
                if event.severity == "critical" and event.kind not in CRITICAL_WITHOUT_KILL:
                    # Critical errors stop new risk, in the same commit as the event; a person clears it.
                    why = orjson.dumps({"on": True, "reason": f"{event.kind}: {event.message}", "by": NAME,
                                        "ts": event.ts}).decode()
                    out += [SetKey(streams.KILL, "1"), SetKey(streams.KILL_REASON, why)]
                    log.critical("kill_switch_set", kind=event.kind, message=event.message)
            for cmd in step.commands:
                sent += 1
                if sent > MAX_COMMANDS:
                    if sent == MAX_COMMANDS + 1:
                        log.error("too_many_commands", limit=MAX_COMMANDS, command=repr(cmd),
                                  note="the rest is left for the next poll; a loop in the manager is a bug")
                    give_up(cmd)
                    continue
                repeats[cmd] = repeats.get(cmd, 0) + 1
                if repeats[cmd] > 1:  # "try again" (rate limit, overload): back off, a little
                    if repeats[cmd] > 5:
                        log.error("command_given_up", command=repr(cmd), note="made again after the next poll")
                        give_up(cmd)
                        continue
                    await asyncio.sleep(min(5.0, 0.2 * 2 ** repeats[cmd]))  # backoff before resending
                steps.append(await execute(cmd))
        return out + paper_effects()

    def give_up(cmd: Command) -> None:
        """Not carried out now: the manager lets go of it (else it would wait for an answer forever, a
        stop never placed) and the next poll's reconcile() makes it again."""
        manager().abandon(cmd)
        wake.set()

    def paper_effects() -> list[Effect]:
        """The paper account's changes, committed in the same atomic call as the reports they made."""
        adapter = holder.get("paper")
        if not isinstance(adapter, PaperBrokerAdapter) or not adapter.changed:
            return []
        meta, balances, changed, dropped = adapter.paper.take_changes()
        adapter.changed = False
        out: list[Effect] = [DelKey(PAPER_STATE)] if holder.pop("paper_rewrite", False) else []
        out.append(HashSet(PAPER_STATE, {"meta": orjson.dumps(meta),
                                         **{f"b:{asset}": orjson.dumps(b) for asset, b in balances.items()},
                                         **{f"o:{oid}": orjson.dumps(o) for oid, o in changed.items()}}))
        if dropped:
            out.append(HashDel(PAPER_STATE, tuple(f"o:{oid}" for oid in dropped)))
        return out

    async def load_paper(catalog: Any) -> PaperBroker | None:
        kind = await service.redis.type(PAPER_STATE)
        fees: dict[str, Any] = {"maker_fee": s.paper_maker_fee, "taker_fee": s.paper_taker_fee,
                                "slippage_bps": s.paper_slippage_bps}
        if kind in (b"string", "string"):  # the whole-JSON format of before: read it, rewrite it as a hash
            raw = await service.redis.get(PAPER_STATE)
            assert raw is not None
            paper = PaperBroker.restore(orjson.loads(raw), catalog, **fees)
            paper.mark_all_changed()
            holder["paper_rewrite"] = True
            return paper
        fields = {(k.decode() if isinstance(k, bytes) else k): v
                  for k, v in (await service.redis.hgetall(PAPER_STATE)).items()}
        if not fields:
            return None
        meta = orjson.loads(fields.pop("meta"))
        balances = {k[2:]: orjson.loads(v) for k, v in fields.items() if k.startswith("b:")}
        orders = [orjson.loads(v) for k, v in fields.items() if k.startswith("o:")]
        return PaperBroker.restore_parts(meta, balances, orders, catalog, **fees)

    def rest_client(**kw: Any) -> BitvavoRest:
        # The shared budget paces every process of the key; this process's own cap is the same limit
        # (it only matters while Redis is away).
        return BitvavoRest(s.bitvavo_rest_url, points_per_min=s.ratelimit_limit_points, clock=service.clock,
                           shared=budget, **kw)

    async def build_broker(catalog: Any) -> Broker:
        if mode == "paper":
            restored = await load_paper(catalog)
            if restored is not None:
                paper = restored
            else:
                paper = PaperBroker(catalog, balances={"EUR": s.paper_eur}, maker_fee=s.paper_maker_fee,
                                    taker_fee=s.paper_taker_fee, slippage_bps=s.paper_slippage_bps)
            adapter = PaperBrokerAdapter(paper, service.clock, rest_client(max_attempts=2),
                                         max_book_age_ms=s.paper_book_max_age_ms, depth=s.paper_depth)
            holder["paper"] = adapter
            return adapter
        assert s.bitvavo_api_key is not None and s.bitvavo_api_secret is not None
        assert s.bitvavo_operator_id is not None
        private = BitvavoPrivate(rest_client(),
                                 s.bitvavo_api_key.get_secret_value(), s.bitvavo_api_secret.get_secret_value(),
                                 s.bitvavo_operator_id)
        holder["private"] = private
        return RealBroker(private)

    def count_reconciliation(effects: list[Effect], resumed: int, at_start: bool) -> None:
        """Reconciliation findings by case (issue 12 item 9), from what a pass made: ours on both sides
        (resumed), placed by us but never reported (adopted), not ours (orphan), closed while we did not
        watch (a final report), a position found without a stop (protected), nothing at all (clean)."""
        cases: Counter[str] = Counter(resumed=resumed)
        for e in effects:
            if not isinstance(e, Output):
                continue
            if isinstance(e.msg, TradingEvent):
                case = {"orphan_order": "orphan", "order_adopted": "adopted", "stop_placed": "protected"}.get(e.msg.kind)
                if case is not None:
                    cases[case] += 1
            elif isinstance(e.msg, OrderExecuted) and e.msg.status in FINAL:
                cases["closed_while_down"] += 1
        if at_start and not +cases:
            cases["clean"] = 1
        for case, n in cases.items():
            if n > 0 and (at_start or case != "resumed"):
                metrics.reconciliation.inc((case,), n)
        if +cases:
            log.info("reconciled", at_start=at_start, cases={k: v for k, v in cases.items() if v})

    async def start() -> None:
        catalog, _ = await load_catalog(service.redis, s.bitvavo_rest_url, service.clock)
        m = OrderManager(catalog, service.messages, mode, limits, stop_retries=s.executor_stop_retries)
        holder["manager"] = m
        holder["broker"] = await build_broker(catalog)

        def fold_intent(msg: Message, entry_id: str) -> None:
            if isinstance(msg, (EntryIntent, ExitIntent, StopAmendIntent)):
                m.learn_intent(msg)

        def fold_report(msg: Message, entry_id: str) -> None:
            if isinstance(msg, OrderExecuted):
                m.learn_report(msg)

        # Rebuild (the intents this group has handled; every report), then reconcile with the exchange
        # before the loop reads a new intent.
        # The intents this group has handled *and* those still pending: an entry a crash left half done
        # (sent, its report never committed) is known now, so the reconciliation below finds it and its
        # stop is placed at once, not when the entry is claimed back (CLAIM_IDLE_MS later). Its
        # redelivery is then a duplicate for the manager.
        for rb in (Rebuild(streams.ORDERS_SHADOW, fold_intent, group=NAME, include_pending=True),
                   Rebuild(streams.ORDERS_EXECUTED, fold_report)):
            done = await fold_history(service.redis, rb)
            log.info("state_rebuilt", stream=done.stream, entries=done.entries, seconds=round(done.seconds, 3))
        async with lock:
            now = service.clock.now_ms()
            effects: list[Effect] = []
            adapter = holder.get("paper")
            if isinstance(adapter, PaperBrokerAdapter):  # the latest book tops: paper is not blind after a restart
                tops: dict[str, BookTopUpdated] = {}

                def fold_top(msg: Message, entry_id: str) -> None:
                    if isinstance(msg, BookTopUpdated):
                        tops[msg.market] = msg

                await fold_history(service.redis, Rebuild(streams.BOOK, fold_top, since_ms=now - max(
                    s.paper_book_max_age_ms, 1000)))
                for msg in tops.values():
                    for state in adapter.paper.on_top(msg):
                        adapter.changed = True
                        effects += await drive(m.on_order(state, now))
            opened = await broker().open_orders()
            ours = {o["client_order_id"] for o in m.summary()["open_orders"]}
            resumed = sum(1 for o in opened if o.client_order_id in ours)
            found: list[Effect] = await drive(m.on_open_orders(opened, now))
            for lookup in m.reconcile():
                found += await drive(await execute(lookup))
            count_reconciliation(found, resumed, at_start=True)
            pending.extend(effects + found)
        log.info("executor_ready", mode=mode, positions=len(m.positions()), reports_pending=len(pending))

    async def handle(msg: Message, delivery: Delivery) -> list[Effect]:
        if delivery.stream == streams.ORDERS_SHADOW and isinstance(msg, (EntryIntent, ExitIntent, StopAmendIntent)):
            kill = service.kill_switch
            private = holder.get("private")
            refuse: str | None = None
            if isinstance(msg, EntryIntent) and not kill and isinstance(private, BitvavoPrivate):
                # The rate-limit budget keeps a reserve for protective orders: an entry waits here, outside
                # the lock, so the stops and exits of other positions (timers, account events) go on; when
                # the wait would be long it is refused (reported rejected, the core lets go of it) rather
                # than hold up the exits queued behind it. Two points: the lookup and the place.
                waited = await private.rest.wait_for_budget(2, credentials=private.credentials, priority="normal",
                                                            max_wait_s=s.executor_entry_budget_wait_s)
                if waited is None:
                    refuse = "rate_limit_budget"
                    log.warning("entry_refused_rate_limit", intent_id=msg.id, market=msg.market,
                                max_wait_s=s.executor_entry_budget_wait_s)
                elif waited:
                    log.info("entry_waited_for_budget", intent_id=msg.id, seconds=round(waited, 3))
            if not isinstance(msg, StopAmendIntent):
                timer.intent(msg.id, msg.ts, "entry" if isinstance(msg, EntryIntent) else "exit")
            if isinstance(msg, EntryIntent) and not kill:
                kill = await kill_now()  # defense in depth: read again right before an entry may be sent
            async with lock:
                return await drive(manager().on_intent(msg, kill, service.clock.now_ms(), refuse=refuse))
        if delivery.stream == streams.BOOK and isinstance(msg, BookTopUpdated):
            adapter = holder.get("paper")
            if not isinstance(adapter, PaperBrokerAdapter):
                return []
            async with lock:
                changed = adapter.paper.on_top(msg)
                if not changed:
                    return []
                adapter.changed = True
                out: list[Effect] = []
                for state in changed:
                    out += await drive(manager().on_order(state, service.clock.now_ms()))
                return out
        raise PoisonMessage(f"{msg.TYPE} does not belong on {delivery.stream}")

    def flush_pending() -> list[Effect]:
        out = list(pending)
        pending.clear()
        return out

    async def poll() -> list[Effect]:
        """Sandbox/live: the account's open orders and a lookup of ours (missed events while the socket
        was down, or a safety net while it is up)."""
        if mode == "paper" and not wake.is_set():
            return []  # paper: only after a command was given up (the paper broker answers at once)
        loop_time = asyncio.get_running_loop().time()
        every = s.executor_poll_up_secs if holder["ws_up"] else s.executor_poll_secs
        if not wake.is_set() and loop_time - holder["last_poll"] < every:
            return []
        wake.clear()
        holder["last_poll"] = loop_time
        async with lock:
            m = manager()
            try:
                opened = await broker().open_orders()
            except (RestError, OSError, TimeoutError, ParseError) as exc:
                log.warning("poll_failed", error=f"{type(exc).__name__}: {exc}")
                return []
            effects: list[Effect] = []
            for state in opened:
                effects += await drive(m.on_order(state, service.clock.now_ms()))
            for lookup in m.reconcile():
                effects += await drive(await execute(lookup))
            count_reconciliation(effects, 0, at_start=False)
            return effects

    async def on_account_order(state: OrderState) -> None:
        # The socket's event is a wake-up: the order's full state (fills, fees) comes from REST.
        async with lock:
            if manager().knows(state):
                return  # nothing new (e.g. the event of a state the place or cancel answer gave already)
            if state.client_order_id:
                await read_order(state.market, state.client_order_id)

    async def read_order(market: str, client_order_id: str) -> None:
        """Under the lock: the order's state by REST (one point), driven through the manager."""
        m = manager()
        try:
            full = await broker().get(market, client_order_id)
        except (RestError, OSError, TimeoutError, ParseError) as exc:
            log.warning("order_state_unavailable", client_order_id=client_order_id, error=str(exc))
            wake.set()
            return
        if full is not None:
            pending.extend(await drive(m.on_order(full, service.clock.now_ms())))

    async def on_account_fill(fill: Fill) -> None:
        # Bitvavo sends an `order` event with every trade too; a fill adds a read only for an order of
        # ours not known final (a partial fill), and a poll (at most every EXECUTOR_POLL_SECS: each costs
        # 5 points a market) only for an order not acknowledged yet.
        async with lock:
            ref = manager().order_ref(fill.market, fill.order_id)
            if ref is None:
                loop_time = asyncio.get_running_loop().time()
                if loop_time - holder.get("fill_wake", float("-inf")) >= s.executor_poll_secs:
                    holder["fill_wake"] = loop_time
                    wake.set()
                return
            client_order_id, final = ref
            if not final:
                await read_order(fill.market, client_order_id)

    def on_ws_state(up: bool) -> None:
        holder["ws_up"] = up
        metrics.account_ws.set(1 if up else 0)
        service.report_health("account_ws", up)
        if not up:
            wake.set()

    async def account() -> None:
        m = manager()
        stream = AccountStream(
            s.bitvavo_ws_url, api_key=s.bitvavo_api_key.get_secret_value() if s.bitvavo_api_key else "",
            api_secret=s.bitvavo_api_secret.get_secret_value() if s.bitvavo_api_secret else "",
            on_order=lambda st: holder["events"].put_nowait(st), on_fill=lambda f: holder["events"].put_nowait(f),
            markets=sorted(m.catalog), on_connected=wake.set, on_state=on_ws_state)
        events: asyncio.Queue[OrderState | Fill] = asyncio.Queue()
        holder["events"] = events

        async def pump() -> None:
            while not service.stop.is_set():
                try:
                    event = await asyncio.wait_for(events.get(), 0.5)
                except TimeoutError:
                    continue
                if isinstance(event, Fill):
                    await on_account_fill(event)
                else:
                    await on_account_order(event)

        pumper = asyncio.create_task(pump(), name="account_events")
        try:
            await stream.run(service.stop)
        finally:
            pumper.cancel()

    def refresh_metrics() -> list[Effect]:
        m = manager()
        now = service.clock.now_ms()
        if m.changes != holder.get("metrics_at_change"):  # the views only change with a step that did something
            holder["metrics_at_change"] = m.changes
            views = m.positions().values()
            held = [v for v in views if v.held > 0]
            bare = {v.position_id for v in held if v.stop_status not in ("new", "awaitingTrigger", "partiallyFilled")}
            metrics.positions.set(len(held))
            metrics.unprotected.set(len(bare))
            metrics.halted.set(sum(1 for v in views if v.halted))
            for pid in list(unprotected_since):
                if pid not in bare:
                    del unprotected_since[pid]
            for pid in bare:
                unprotected_since.setdefault(pid, now)
        metrics.unprotected_seconds.set(max((now - t for t in unprotected_since.values()), default=0) / 1000)
        for scope, left in budget.remaining.items():
            metrics.ratelimit_remaining.labels(scope=scope).set(left)
        # The counters follow the budget's own counts (what grew since the last refresh).
        for scope, n in budget.bans.items():
            metrics.ratelimit_bans.labels(scope=scope).inc(n - exported[("ban", scope)])
            exported[("ban", scope)] = n
        for priority, n in budget.waits.items():
            metrics.ratelimit_waits.labels(priority=priority).inc(n - exported[("wait", priority)])
            exported[("wait", priority)] = n
        return []

    service.use_lease()
    service.on_start(start)
    reads: list[str] = [streams.ORDERS_SHADOW] + ([streams.BOOK] if mode == "paper" else [])
    service.consume(reads, handle, stateful=True)
    service.archive([streams.ORDERS_EXECUTED])
    service.every(s.executor_commit_secs, flush_pending, name="exchange_events")
    service.every(1.0, refresh_metrics, name="metrics")
    service.every(0.25, poll, name="poll")
    if mode != "paper":
        service.add_task("account_ws", account)
    else:
        metrics.account_ws.set(1)
    service.summary = lambda: orjson.dumps(manager().summary() if "manager" in holder else {},
                                           default=str).decode()


def main() -> int:
    return run_service(NAME, Settings, METRICS_PREFIX, setup, metrics=Metrics)
