"""The exception tree: the class of an error decides what happens to the message in hand.

- ConfigError: exit at start with one clear line (exit code 2).
- PoisonMessage: the message can never be handled: dead-letter it, ack, count.
- TransientError (and any unexpected exception in a handler): leave it pending; it is
  retried after the claim idle time, and dead-lettered past the delivery-count limit.
- FatalError: a broken invariant: log, exit non-zero without acking; systemd restarts
  the process, which reconciles and replays.
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
