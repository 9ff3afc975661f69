"""The strategy registry: name → class, and ``build_strategies`` for the ``SIGNAL_STRATEGIES`` config.

Adding a strategy is one new module in this package (a ``Strategy`` subclass, exported as
``STRATEGY``) and one line in ``STRATEGY_MODULES`` below; see docs/strategies.md.

Config: an ordered JSON list of ``{"method": <registry name>, ...params}``, optionally with
``"name"`` to run one method twice with different parameters (signal ids are derived from the
name, so names must be unique). An unknown method, an unknown or bad parameter, or a duplicate
name raises ``ConfigError`` with one line naming the strategy and the parameter.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from tradestack.errors import ConfigError

from .base import Bar, SignalCall, Strategy, StrategyParams

# One line per strategy module of this package: its ``STRATEGY`` class is registered under its ``method``.
STRATEGY_MODULES: tuple[str, ...] = (
    "momentum",
    "mean_reversion",
)

# The service's default SIGNAL_STRATEGIES (docs/strategies.md explains the values).
DEFAULT_STRATEGIES = ('[{"method":"momentum","fast":5,"slow":13,"trend":50},'
                      '{"method":"mean_reversion","window":20,"z":2.0,"rsi":7,"rsi_low":30,"rsi_high":70}]')


def load_registry(modules: Sequence[str] = STRATEGY_MODULES, package: str = __name__) -> dict[str, type[Strategy[Any, Any]]]:
    """method → class from each module's ``STRATEGY`` (modules named relative to ``package``)."""
    registry: dict[str, type[Strategy[Any, Any]]] = {}
    for module_name in modules:
        module = importlib.import_module(f"{package}.{module_name}")
        cls = getattr(module, "STRATEGY", None)
        if not (isinstance(cls, type) and issubclass(cls, Strategy) and cls.method):
            raise TypeError(f"strategy module {module_name!r} must export STRATEGY, a Strategy subclass with a method")
        if cls.method in registry:
            raise TypeError(f"strategy method {cls.method!r} registered twice")
        registry[cls.method] = cls
    return registry


REGISTRY: dict[str, type[Strategy[Any, Any]]] = load_registry()


def build_strategies(config: Sequence[Mapping[str, Any]] | str,
                     registry: Mapping[str, type[Strategy[Any, Any]]] | None = None) -> list[Strategy[Any, Any]]:
    """Strategies from the config (a list of dicts, or its JSON text), validated; ConfigError otherwise."""
    if registry is None:
        registry = REGISTRY
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError as exc:
            raise ConfigError(f"strategies: not valid JSON ({exc})") from None
    if not isinstance(config, (list, tuple)) or not config:
        raise ConfigError("strategies: expected a non-empty JSON list of {\"method\": name, ...params}")
    strategies: list[Strategy[Any, Any]] = []
    names: set[str] = set()
    for index, entry in enumerate(config, 1):
        where = f"strategy #{index}"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: expected an object such as {{\"method\": \"momentum\"}}, got {entry!r}")
        params = dict(entry)
        method = params.pop("method", None)
        if not isinstance(method, str) or not method:
            raise ConfigError(f"{where}: missing \"method\" (one of {', '.join(sorted(registry))})")
        cls = registry.get(method)
        if cls is None:
            raise ConfigError(f"{where}: unknown method {method!r} (known: {', '.join(sorted(registry))})")
        name = params.pop("name", None)
        if name is not None and (not isinstance(name, str) or not name.strip() or "/" in name):
            raise ConfigError(f"{where} ({method}): parameter 'name' must be a non-empty string without '/'")
        label = f"{where} ({name or method})"
        try:
            strategy = cls.from_config(name=name, **params)
        except ValidationError as exc:
            raise ConfigError(f"{label}: {_describe(exc)}") from None
        if strategy.name in names:
            raise ConfigError(f"{label}: the name {strategy.name!r} is used twice; give one of them a \"name\"")
        names.add(strategy.name)
        strategies.append(strategy)
    return strategies


def _describe(exc: ValidationError) -> str:
    """The first problem, on one line, naming the parameter."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = str(err["msg"]).replace("\n", " ")
    if err["type"] == "extra_forbidden":
        return f"unknown parameter {loc!r}"
    if not loc:  # a check across parameters: its message names them
        return msg.removeprefix("Value error, ")
    return f"parameter {loc!r}: {msg} (got {err.get('input')!r})"


__all__ = [
    "load_registry",
    "DEFAULT_STRATEGIES",
    "REGISTRY",
    "STRATEGY_MODULES",
    "Bar",
    "SignalCall",
    "Strategy",
    "StrategyParams",
    "build_strategies",
]
