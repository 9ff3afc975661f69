"""The notifier's metrics, ``trader_notifier_*``, on top of the kernel's standard set."""

from __future__ import annotations

from tradestack.metrics import ServiceMetrics

METRICS_PREFIX = "trader_notifier"


class Metrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__(METRICS_PREFIX)
        self.enabled = self.gauge("enabled", "1 when a bot token and chat ids are configured; 0: idle", [])
        self.notes = self.counter("notes_total", "Notes queued for Telegram, by kind (position_opened, "
                                  "position_closed, event:<kind>, kill_switch, reply, ...)", ["kind"])
        self.skipped = self.counter("events_skipped_total", "trading:events not worth a message, by kind", ["kind"])
        self.telegram = self.counter("telegram_messages_total", "Telegram sendMessage calls, by outcome (sent; "
                                     "retried: 429 or network, the batch goes back to the outbox; failed: "
                                     "refused, its notes are dropped)", ["outcome"])
        self.dropped = self.counter("notes_dropped_total", "Notes never sent, by reason (outbox_full: the oldest "
                                    "made room; refused: Telegram refused the message; stopped: pending at exit)",
                                    ["reason"])
        self.outbox = self.gauge("outbox_notes", "Notes waiting in the outbox (all chats)", [])
        self.commands = self.counter("commands_total", "Bot commands, by command (status, kill, help, other) and "
                                     "outcome (ok, unauthorized, stale, error)", ["command", "outcome"])
        self.telegram_ok = self.gauge("telegram_ok", "1 when the last Telegram API call succeeded", [])
