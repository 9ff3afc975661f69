"""Notifier process: Telegram messages and commands (docs/notifier.md)."""
