"""The exception tree: the class of an error decides what happens to the message in hand.

- ConfigError: exit at start with one clear line (exit code 2).
- PoisonMessage: the message can never be handled: dead-letter it, ack, count.
  ``bitvavo.parse.ParseError`` (an exchange answer of the wrong shape) is one.
- TransientError (``bitvavo.rest.RestUnavailable``: timeouts, 5xx; and Redis/OS connection
  errors and timeouts raised in a handler): leave it pending; it is retried after the claim
  idle time, and dead-lettered past the delivery-count limit.
- FatalError: a broken invariant: log, exit non-zero without acking; systemd restarts
  the process, which rebuilds its state, reconciles and replays. ``lease.LeaseLost`` is one.
- Any other exception in a handler is a bug: dead-lettered at once (``bug: ...``), counted,
  logged with its traceback; a stateful loop then stops the process (bus.py).
- ``bitvavo.rest.RestError`` (4xx) is the exchange refusing a request: the caller decides
  (an order rejected is a report, not a retry).
"""

from __future__ import annotations


class TradestackError(Exception):
    """Base of every error the stack raises on purpose."""


class ConfigError(TradestackError):
    """Settings are missing or invalid; the process cannot start."""


class PoisonMessage(TradestackError):
    """A message that will never be handled (malformed, unknown type, failed validation)."""


class TransientError(TradestackError):
    """A failure worth retrying later (timeouts, 5xx, rate limits, Redis away)."""


class FatalError(TradestackError):
    """A broken invariant: stop without acking so a restart reconciles and replays."""
