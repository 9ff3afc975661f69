"""Every dashboard panel and every alert rule against a real Prometheus scraping a real stack.

``tradestack up --mode sandbox`` runs every process on an embedded Redis and the sandbox exchange,
with ``METRICS_PORT=0`` (each process picks a free port and writes it into its heartbeat, so this
test never collides with a stack already running here). Debian's ``prometheus`` scrapes all eight
every second and loads deploy/prometheus/alerts.yml. Once the stack has traded (an entry filled),
each panel query of deploy/grafana/dashboards/*.json (Grafana's variables substituted) and each
alert expression is checked:

(a) Prometheus parses and evaluates it (``/api/v1/query``);
(b) every metric it names has series (``/api/v1/label/__name__/values``), a ``__name__`` regex
    matches at least one; a metric with no series yet must be declared by a scraped process
    (``/api/v1/metadata``: a labelled counter has no series before its first event) and be listed
    in ``NO_SERIES_IN_A_HEALTHY_RUN`` with the reason;
(c) every label it matches on or groups by is a label of those series (for a metric without
    series: of its declaration in the process's ``Metrics`` class);
(d) it returns data, or it is listed below as quiet with the reason. An alert listed as quiet is
    also asserted quiet (it would be firing in a healthy run), unless listed in ``MAY_FIRE``.

Bounded: three eager strategies (EMA crosses of 1/2 and 2/3 candles, a loose mean reversion, no
trend filter, the gates open) all but surely call a buy on the first closed 1m candle of nine markets,
so an entry fills within about a minute of the start (the next minute's close); closed candles of any
age may signal (``SIGNAL_MAX_CANDLE_AGE_MS=0``), so when the candle backfill at start reaches the
engine after the markets' first book tops (about every other run), it fills within seconds. The
whole test takes 20-70 s; skipped when Prometheus is not installed (``./dev test`` installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson
import pytest
import yaml

from tests.conftest import ROOT
from tests.stack_helpers import RunningStack, run_stack
from tests.test_deploy_files import dashboard_panels, dashboards, grafana_variables, service_metrics, substitute
from tradestack import streams
from tradestack.embedded_redis import free_port
from tradestack.ops.processes import NAMES, UNITS

PROMETHEUS_BIN = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

pytestmark = pytest.mark.skipif(PROMETHEUS_BIN is None,
                                reason="prometheus not installed (Debian: apt-get install prometheus)")

STACK_START_S = 60.0  # stack.json and every heartbeat with its metrics port
FILLED_S = 90.0  # the first entry filled, as Prometheus scraped it: the next minute's close, and then some
EAGER_STRATEGIES = ('[{"method": "momentum", "fast": 1, "slow": 2, "trend": 0},'
                    ' {"method": "momentum", "name": "momentum_2_3", "fast": 2, "slow": 3, "trend": 0},'
                    ' {"method": "mean_reversion", "window": 3, "z": 0.5, "rsi": 2, "rsi_low": 49, "rsi_high": 51}]')
CHECKS_S = 30.0  # every check passing (series of late events, e.g. the stop's histogram, arrive)

# Grafana's built-in variables, as Grafana would set them for a 1 s scrape and a short range.
GRAFANA_BUILTINS = {"__rate_interval": "15s", "__interval": "2s", "__interval_ms": "2000", "__range": "1h",
                    "__range_s": "3600", "__range_ms": "3600000"}
TARGET_LABELS = {"job", "instance", "service", "unit"}  # what the scrape adds to every series

# Metrics that have no series in a healthy run: labelled counters before their first event. Each must
# still be declared by a scraped process (HELP/TYPE in its /metrics). Key: metric name or __name__ regex.
NO_SERIES_IN_A_HEALTHY_RUN = {
    '{__name__=~"trader_.+_dlq_total"}': "nothing is dead-lettered",
    '{__name__=~"trader_.+_claimed_total"}': "no consumer dies, nothing is claimed",
    "trader_executor_rejects_total": "the sandbox accepts every order the executor sends",
    "trader_executor_ratelimit_bans_total": "no 105 ban: the stack stays inside the budget",
    "trader_executor_ratelimit_waits_total": "no request waits: a short run spends far less than a minute's budget",
    "trader_pnl_breaker_trips_total": "no loss limit is reached",
}

# Panels that return nothing in a healthy run: (dashboard file, panel title) → why.
QUIET_PANELS = {
    ("tradestack.json", "Dead-lettered"): "nothing is dead-lettered",
    ("tradestack.json", "Claimed from idle consumers"): "no consumer dies, nothing is claimed",
    ("trading.json", "Executor critical events since start"): "no critical event in a healthy run",
    ("trading.json", "Exchange rejects by errorCode"): "the sandbox accepts every order",
    ("trading.json", "Waits for the budget by priority"): "no request waits for the rate-limit budget",
    ("trading.json", "Bans (105) since start"): "no ban",
    ("trading.json", "Loss breaker trips since start"): "no loss limit is reached",
}

# Alert expressions that return nothing in a healthy run, and why: the condition does not hold.
QUIET_ALERTS = {
    "TradestackProcessDown": "every process is up",
    "TradestackProcessFaulted": "no process is faulted",
    "TradestackProcessDegraded": "no process is degraded once running (Redis and the exchange WS are up)",
    "TradestackProcessStuckStarting": "every process reached running",
    "TradestackRedisErrors": "Redis does not drop connections",
    "TradestackKillSwitchOn": "the kill switch is off",
    "TradestackDryRunMismatch": "every process runs with DRY_RUN=false (sandbox mode)",
    "TradestackPnlDrawdown": "the drawdown is a fraction of a percent",
    "TradestackPositionUnprotected": "every stop rests within a moment of its fill",
    "TradestackPositionHalted": "no position is halted",
    "TradestackExecutorCriticalEvent": "no critical event",
    "TradestackExecutorRejects": "no reject (trader_executor_rejects_total has no series)",
    "TradestackRateLimitLow": "the budget is far from the protective reserve",
    "TradestackRateLimitBanned": "no ban (no series)",
    "TradestackNoDecisions": "every signal gets a decision",
    "TradestackLeaseLost": "core, executor and PnL each hold their lease",
    "TradestackPnlDrift": "booked balances equal the sandbox's",
    "TradestackMessagesFailing": "no message is retried or dead-lettered",
    "TradestackDeadLetters": "nothing is dead-lettered",
    "TradestackStreamLag": "every group keeps up",
    "TradestackStreamLagNearTrim": "every group keeps up",
    "TradestackPendingStuck": "entries are acked within moments",
    "TradestackEntriesClaimed": "no consumer dies",
    "TradestackStaleMarketData": "market data is fresh",
    "TradestackIngestSilent": "ingest publishes continuously",
    "TradestackSlowHandler": "handlers take milliseconds",
}
# Quiet alerts that a short healthy run may still trip, so their quiet is not asserted.
MAY_FIRE = {
    "TradestackPendingStuck": "its 15m window covers only this run: a busy stream can show entries pending at "
                              "every 5 s refresh",
    "TradestackSlowHandler": "the executor's handler waits for the exchange (an order round trip), and start-up "
                             "on 2 busy cores can push a p99 over 0.5 s",
    "TradestackPnlDrift": "a drift check between a fill and its booking sees a transient drift (the rule's "
                          "`for: 10m` is what absorbs it)",
    "TradestackNoDecisions": "the core decides the start-up burst of signals within one metrics refresh, so its "
                             "decisions series appear with the burst already counted (no increase), while the "
                             "engine's were scraped mid-burst; for 5m the rates differ. In production that lasts "
                             "less than the rule's `for: 10m`: every later signal moves both.",
}


# ---------------------------------------------------------------------------------------
# PromQL: the selectors and label names of an expression (enough of the grammar for our rules)

TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<num>0x[0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^=<>@,(){}\[\]])
""", re.VERBOSE)
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = LABEL_LISTS | {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}


@dataclass
class Selector:
    name: str | None  # the metric name, or None when only a __name__ regex selects
    name_regex: str | None
    matchers: list[tuple[str, str, str]]  # (label, op, value) besides __name__

    @property
    def key(self) -> str:
        """The selector without its matchers: all series of the metric (also valid PromQL)."""
        return self.name if self.name is not None else f'{{__name__=~"{self.name_regex}"}}'


@dataclass
class Parsed:
    selectors: list[Selector] = field(default_factory=list)
    # label names grouped by / matched on, with the selectors (indexes) they must belong to
    label_uses: list[tuple[str, list[int]]] = field(default_factory=list)


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        assert m is not None, f"cannot tokenize {expr[pos:pos + 30]!r} in {expr!r}"
        kind = m.lastgroup or ""
        if kind != "ws":
            tokens.append((kind, m.group()))
        pos = m.end()
    return tokens


def _unquote(text: str) -> str:
    return json.loads(text) if text.startswith('"') else text[1:-1]


def parse(expr: str) -> Parsed:
    toks = tokenize(expr)
    out = Parsed()
    open_parens: list[tuple[int, int]] = []  # (token index of "(", selectors seen before it)
    closed: dict[int, tuple[int, int]] = {}  # token index of ")" → (selector range start, end)
    pending_by: list[tuple[list[str], int]] = []  # `by (...)` before its argument: labels, paren depth
    i = 0

    def matchers_at(j: int) -> tuple[list[tuple[str, str, str]], int]:
        """Parse {a="b", c=~"d"} starting at token j ("{"); returns the matchers and the index after "}"."""
        found = []
        j += 1
        while toks[j][1] != "}":
            label, op, value = toks[j][1], toks[j + 1][1], _unquote(toks[j + 2][1])
            found.append((label, op, value))
            j += 3
            if toks[j][1] == ",":
                j += 1
        return found, j + 1

    def label_list_at(j: int) -> tuple[list[str], int]:
        """(a, b) at token j ("("): the labels and the index after ")"."""
        labels = []
        j += 1
        while toks[j][1] != ")":
            if toks[j][1] != ",":
                labels.append(toks[j][1])
            j += 1
        return labels, j + 1

    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "ident" and text in LABEL_LISTS:
            if nxt != "(":
                i += 1
                continue
            labels, after = label_list_at(i + 1)
            if text in ("by", "without") and toks[i - 1][1] == ")":  # sum (ARG) by (labels)
                start, end = closed[i - 1]
                out.label_uses += [(label, list(range(start, end))) for label in labels]
            elif text in ("by", "without"):  # sum by (labels) (ARG): resolved when ARG closes
                pending_by.append((labels, len(open_parens)))
            else:  # on/ignoring/group_*: a label of some selector of the expression
                out.label_uses += [(label, []) for label in labels]
            i = after
            continue
        if kind == "ident" and (nxt in ("(", "by", "without") or text.lower() in KEYWORDS):  # a function, sum by
            i += 1
            continue
        if kind == "ident" or (kind == "op" and text == "{"):
            name = text if kind == "ident" else None
            j = i + 1 if kind == "ident" else i
            matchers: list[tuple[str, str, str]] = []
            if j < len(toks) and toks[j][1] == "{":
                matchers, j = matchers_at(j)
            regex = None
            for label, op, value in list(matchers):
                if label == "__name__":
                    matchers.remove((label, op, value))
                    if op == "=":
                        name = value
                    else:
                        assert op == "=~", f"{expr}: __name__ {op} is not supported here"
                        regex = value
            assert name or regex, f"{expr}: a selector without a metric name"
            out.selectors.append(Selector(name, regex, matchers))
            i = j
            continue
        if text == "(":
            open_parens.append((i, len(out.selectors)))
        elif text == ")":
            _, start = open_parens.pop()
            closed[i] = (start, len(out.selectors))
            if pending_by and pending_by[-1][1] == len(open_parens):
                labels, _ = pending_by.pop()
                out.label_uses += [(label, list(range(start, len(out.selectors)))) for label in labels]
        i += 1
    return out


def test_parse_finds_selectors_and_labels() -> None:
    p = parse('sum by (service, unit) (increase(trader_executor_rejects_total{code!=""}[10m])) > 0 '
              'or sum(rate({__name__=~"trader_.+_dlq_total", stream="x"}[5m])) by (stream) '
              'and on (instance) (up{job="tradestack"} offset 15m) or vector(0)')
    assert [s.key for s in p.selectors] == ["trader_executor_rejects_total", '{__name__=~"trader_.+_dlq_total"}', "up"]
    assert p.selectors[0].matchers == [("code", "!=", "")]
    assert p.label_uses == [("service", [0]), ("unit", [0]), ("stream", [1]), ("instance", [])]
    p = parse("histogram_quantile(0.99, sum by (le) (rate(x_bucket[15s]))) * 60 > 1e-9")
    assert [s.key for s in p.selectors] == ["x_bucket"] and p.label_uses == [("le", [0])]


# ---------------------------------------------------------------------------------------
# The queries: every panel target (Grafana's variables substituted, as Grafana would for a 1 s
# scrape) and every alert expression


@dataclass
class Query:
    where: str  # for messages: "trading.json: Mode [A]" or "alert TradestackKillSwitchOn"
    expr: str
    quiet_reason: str | None  # listed as returning nothing in a healthy run
    assert_quiet: bool = False


def dashboard_queries() -> Iterator[Query]:
    for file_name, dash in dashboards().items():
        variables = grafana_variables(dash, GRAFANA_BUILTINS)
        for panel in dashboard_panels(dash):
            quiet = QUIET_PANELS.get((file_name, panel["title"]))
            for target in panel.get("targets", []):
                yield Query(f"{file_name}: {panel['title']} [{target['refId']}]", substitute(target["expr"], variables),
                            quiet)
        for var in dash.get("templating", {}).get("list", []):
            if var.get("type") == "query":
                query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
                m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
                assert m, f"{file_name}: variable {var['name']}: only label_values(selector, label) is checked"
                # the selector must have the label: count by it
                yield Query(f"{file_name}: variable ${var['name']}", f"count by ({m.group(2)}) ({m.group(1)})", None)


def alert_queries() -> Iterator[Query]:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"] if "alert" in r]
    names = {r["alert"] for r in rules}
    assert set(QUIET_ALERTS) <= names, f"QUIET_ALERTS lists alerts that no longer exist: {sorted(set(QUIET_ALERTS) - names)}"
    assert set(MAY_FIRE) <= set(QUIET_ALERTS), "an alert that may fire in a healthy run is quiet otherwise: list it"
    for rule in rules:
        name = rule["alert"]
        yield Query(f"alert {name}", rule["expr"], QUIET_ALERTS.get(name),
                    assert_quiet=name in QUIET_ALERTS and name not in MAY_FIRE)


# ---------------------------------------------------------------------------------------
# What the processes declare (for metrics without series: their label names)


def declared_labels() -> dict[str, set[str]]:
    """Metric family name (counters without _total) → label names, from every process's Metrics."""
    from prometheus_client.metrics import MetricWrapperBase

    from tradestack.metrics import HotCounter, HotHistogram

    found: dict[str, set[str]] = {}
    for metrics in service_metrics():
        for collector in list(metrics.registry._collector_to_names):
            if isinstance(collector, MetricWrapperBase):
                found[collector._name] = set(collector._labelnames)
            elif isinstance(collector, HotCounter):
                found[collector.name] = set(collector.labels)
            elif isinstance(collector, HotHistogram):
                found[collector.name] = set()
    return found


def family_of(name: str) -> str:
    return re.sub(r"_(total|created|bucket|count|sum)$", "", name)


# ---------------------------------------------------------------------------------------
# The stack and Prometheus


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str, every_s: float = 0.2) -> object:
    """conftest's wait_until at a gentler pace: Prometheus and the stack share two cores."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)


@dataclass
class Stack:
    running: RunningStack
    ports: dict[str, int]  # process name → its metrics port


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    # METRICS_PORT=0: every process serves /metrics on a free port and names it in its heartbeat.
    env = dict(METRICS_PORT="0", UNIVERSE_REFRESH_SECS="1", UNIVERSE_STALE_AFTER_MS="5000",
               SIGNAL_STRATEGIES=EAGER_STRATEGIES, SIGNAL_MIN_VOL="0", SIGNAL_MAX_VOL="1000",
               SIGNAL_MAX_SPREAD_BPS="1000", SIGNAL_UNIVERSE_POLL_S="0.5", SIGNAL_MAX_CANDLE_AGE_MS="0",
               PNL_DRIFT_CHECK_SECS="5")
    # --for: the stack stops by itself even if this test process dies before its cleanup
    with run_stack(tmp_path, "--mode", "sandbox", "--for", "300s", env=env, start_timeout_s=STACK_START_S) as running:

        def ports() -> dict[str, int] | None:
            found = {}
            for name in NAMES:
                raw = running.client.get(streams.heartbeat(name))
                port = orjson.loads(raw).get("metrics_port") if raw else None
                if not port:
                    return None
                found[name] = int(port)
            return found

        try:
            found = wait_until(ports, timeout_s=STACK_START_S, what="every process's heartbeat with its metrics port")
        except AssertionError:
            print(running.log.read_text()[-5000:])
            raise
        assert isinstance(found, dict)
        yield Stack(running, found)


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str | list[str]) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400/422: a bad query, the body says why
            body = json.loads(exc.read())
        return body

    def query(self, expr: str) -> tuple[list[Any] | None, str | None]:
        body = self.get("/api/v1/query", query=expr)
        if body["status"] != "success":
            return None, f"{body.get('errorType')}: {body.get('error')}"
        data = body["data"]
        result = data["result"]
        return (result if data["resultType"] in ("vector", "matrix") else [result]), None

    def value(self, expr: str) -> float:
        result, error = self.query(expr)
        assert error is None, error
        return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture
def prometheus(stack: Stack, tmp_path: Path) -> Iterator[Prometheus]:
    assert PROMETHEUS_BIN is not None
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "tradestack", "static_configs": [
            {"targets": [f"127.0.0.1:{port}"], "labels": {"service": name, "unit": f"{UNITS[name]}.service"}}
            for name, port in stack.ports.items()]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([PROMETHEUS_BIN, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    prom = Prometheus(f"http://127.0.0.1:{port}")

    def ready() -> bool:
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    try:
        wait_until(ready, timeout_s=30, what="Prometheus ready")
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# ---------------------------------------------------------------------------------------
# The checks


@dataclass
class Scraped:
    names: set[str]
    families: set[str]  # declared by a scraped process (metadata), with or without series
    declared: dict[str, set[str]]
    labels: dict[str, set[str]] = field(default_factory=dict)  # selector key → label names of its series


def series_labels(prom: Prometheus, scraped: Scraped, sel: Selector) -> set[str] | None:
    """Label names of the selector's metric (all its series, whatever the matchers), or None: no series."""
    if sel.name is not None and sel.name not in scraped.names:
        return None
    if sel.name is None and not any(re.fullmatch(sel.name_regex or "", n) for n in scraped.names):
        return None
    if sel.key not in scraped.labels:
        body = prom.get("/api/v1/series", **{"match[]": sel.key})
        assert body["status"] == "success", body
        labels = {label for series in body["data"] for label in series} - {"__name__"}
        if labels:
            scraped.labels[sel.key] = labels
        else:
            return None
    return scraped.labels[sel.key]


def check(prom: Prometheus, query: Query, scraped: Scraped, outcome: dict[str, str]) -> list[str]:
    problems: list[str] = []
    result, error = prom.query(query.expr)
    if error is not None:  # (a)
        return [f"{query.where}: Prometheus cannot evaluate {query.expr!r}: {error}"]
    parsed = parse(query.expr)
    selector_labels: list[set[str]] = []
    for sel in parsed.selectors:  # (b) and (c) for matchers
        labels = series_labels(prom, scraped, sel)
        if labels is None:
            if sel.name is not None:
                declared = family_of(sel.name) in scraped.families or sel.name in scraped.families
                decl_labels = scraped.declared.get(family_of(sel.name))
            else:
                fams = [f for f in scraped.families if any(re.fullmatch(sel.name_regex or "", f + suffix)
                                                           for suffix in ("", "_total", "_bucket"))]
                declared = bool(fams)
                decl_labels = set().union(*(scraped.declared.get(f, set()) for f in fams)) if fams else None
            if not declared:
                problems.append(f"{query.where}: {sel.key} is neither scraped nor declared by any process (a typo?)")
                selector_labels.append(set())
                continue
            if sel.key not in NO_SERIES_IN_A_HEALTHY_RUN:
                problems.append(f"{query.where}: {sel.key} is declared but has no series yet (not listed in "
                                f"NO_SERIES_IN_A_HEALTHY_RUN)")
            labels = (decl_labels or set()) | TARGET_LABELS
        selector_labels.append(labels)
        for label, op, value in sel.matchers:
            if label not in labels and not (op in ("=", "!~") and value == ""):
                problems.append(f"{query.where}: {sel.key} has no label {label!r} (it has {sorted(labels)})")
    for label, indexes in parsed.label_uses:  # (c) for by/without/on/ignoring
        pool = [selector_labels[i] for i in indexes] if indexes else selector_labels
        if not any(label in labels for labels in pool):
            problems.append(f"{query.where}: grouped or matched on {label!r}, a label none of its series has")
    if result:  # (d)
        outcome[query.where] = f"data ({len(result)} series)"
        if query.assert_quiet:
            shown = ", ".join(json.dumps(r.get("metric", {}), sort_keys=True) for r in result[:3])
            problems.append(f"{query.where} holds in a healthy run (it would fire): {shown}")
    elif query.quiet_reason is not None:
        outcome[query.where] = f"quiet: {query.quiet_reason}"
    else:
        problems.append(f"{query.where}: no data for {query.expr!r} (list it as quiet, with the reason, if that "
                        f"is right in a healthy run)")
    return problems


class FakePrometheus(Prometheus):
    """Canned answers: series by metric name; every query evaluates, with data when listed."""

    def __init__(self, series: dict[str, list[dict[str, str]]], with_data: set[str]) -> None:
        super().__init__("http://fake")
        self.series = series
        self.with_data = with_data

    def get(self, path: str, **params: str | list[str]) -> Any:
        assert path == "/api/v1/series"
        return {"status": "success", "data": self.series.get(str(params["match[]"]), [])}

    def query(self, expr: str) -> tuple[list[Any] | None, str | None]:
        return ([{"metric": {}, "value": [0, "1"]}] if expr in self.with_data else []), None


def test_check_reports_typos_unknown_labels_and_silence() -> None:
    prom = FakePrometheus({"trader_executor_reports_total": [{"__name__": "trader_executor_reports_total",
                                                              "purpose": "entry", "status": "filled", "job": "t"}]},
                          with_data={"sum by (status) (trader_executor_reports_total)"})
    scraped = Scraped({"trader_executor_reports_total"}, {"trader_executor_reports", "trader_executor_rejects"},
                      {"trader_executor_rejects": {"purpose", "code"}})

    def problems(expr: str, quiet: str | None = None) -> list[str]:
        return check(prom, Query("q", expr, quiet), scraped, {})

    assert problems("sum by (status) (trader_executor_reports_total)") == []
    assert "neither scraped nor declared" in problems("sum(rate(trader_executor_report_total[1m]))", "quiet")[0]
    assert "a label none of its series has" in problems("sum by (stauts) (trader_executor_reports_total)", "q")[0]
    assert problems('sum by (code) (trader_executor_rejects_total{purpose="entry"})', "quiet") == []
    assert "has no label 'cod'" in problems('trader_executor_rejects_total{cod="216"}', "quiet")[0]
    assert "no data for" in problems('trader_executor_reports_total{status="rejected"}')[0]


def test_every_panel_and_alert_query_works_on_a_live_stack(stack: Stack, prometheus: Prometheus) -> None:
    started = time.monotonic()
    queries = [*dashboard_queries(), *alert_queries()]
    declared = declared_labels()
    try:
        wait_until(lambda: prometheus.value('count(up{job="tradestack"} == 1)') == len(NAMES), timeout_s=30,
                   what="every process scraped")
        wait_until(lambda: prometheus.value('sum(trader_executor_reports_total{purpose="entry", status="filled"})') > 0,
                   timeout_s=FILLED_S, what="an entry filled (executor reports, as scraped)")
        print(f"an entry filled {time.monotonic() - started:.1f} s after Prometheus started")
        check_all(prometheus, queries, declared, started)
    except AssertionError:
        print(stack.running.log.read_text()[-5000:])
        raise


def check_all(prometheus: Prometheus, queries: list[Query], declared: dict[str, set[str]], started: float) -> None:
    problems: list[str] = []
    outcome: dict[str, str] = {}
    deadline = time.monotonic() + CHECKS_S
    while True:
        names_body = prometheus.get("/api/v1/label/__name__/values")
        meta = prometheus.get("/api/v1/metadata")["data"]
        scraped = Scraped(set(names_body["data"]), set(meta), declared)
        outcome.clear()
        problems = [p for q in queries for p in check(prometheus, q, scraped, outcome)]
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(1.0)  # one scrape interval: late series (the stop's histogram, a drift check) arrive
    width = max(len(k) for k in outcome) if outcome else 0
    print("\n".join(f"{where:<{width}}  {what}" for where, what in outcome.items()))
    print(f"{len(queries)} queries checked {time.monotonic() - started:.1f} s after Prometheus started")
    assert not problems, "\n".join(problems)
    unused = ({k for k in NO_SERIES_IN_A_HEALTHY_RUN} - {s.key for q in queries for s in parse(q.expr).selectors})
    assert not unused, f"NO_SERIES_IN_A_HEALTHY_RUN lists metrics no query uses: {sorted(unused)}"
    stale = {f"{d}: {t}" for d, t in QUIET_PANELS} - {q.where.rsplit(" [", 1)[0] for q in queries}
    assert not stale, f"QUIET_PANELS lists panels that no longer exist: {sorted(stale)}"
