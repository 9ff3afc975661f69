"""JSON logs on stdout, one object per line (journald and `jq` friendly).

Modules log through the standard library: ``log = get_logger(__name__)`` then
``log.info("order_sent", market="BTC-EUR", amount="0.1")``. The first argument is a
snake_case past-tense event name; keyword arguments become JSON fields.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from typing import Any, MutableMapping

import orjson

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _default(obj: Any) -> str:
    return str(obj)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: ts, level, logger, event, then the bound fields."""

    def __init__(self, service: str | None = None) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": int(record.created * 1000),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        if self.service:
            out["service"] = self.service
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key != "fields" and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return orjson.dumps(out, default=_default).decode()


class KVLogger(logging.LoggerAdapter):
    """A logger whose keyword arguments become JSON fields: ``log.info("evt", k=v)``."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        std: dict[str, Any] = {k: kwargs.pop(k) for k in ("exc_info", "stack_info", "stacklevel") if k in kwargs}
        fields = dict(self.extra or {})
        fields.update(kwargs)
        std["extra"] = {"fields": fields}
        return msg, std

    def bind(self, **fields: Any) -> "KVLogger":
        merged = dict(self.extra or {})
        merged.update(fields)
        return KVLogger(self.logger, merged)


def get_logger(name: str, **bound: Any) -> KVLogger:
    return KVLogger(logging.getLogger(name), bound)


def configure_logging(level: str = "INFO", service: str | None = None, stream: Any = None) -> None:
    """Route every logger (ours and libraries') to one JSON handler on stdout."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter stays at warning unless we ask for debug.
    for noisy in ("asyncio", "aiohttp.access", "urllib3", "websocket"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level.upper() != "DEBUG" else logging.DEBUG)
    logging.Formatter.converter = time.gmtime
