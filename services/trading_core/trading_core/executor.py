"""The core's last step: every decision to ``orders:signals``, accepted intents to ``orders:shadow``.

Not to be confused with the executor *process* (``services.trader_executor``), which turns
intents into exchange orders. Output ids are derived from the signal id, so a replay after a
crash writes the same ids and downstream drops the duplicates.
"""

from __future__ import annotations

from tradestack import streams
from tradestack.effects import Output
from tradestack.messages import DecisionMade, EntryIntent


class Executor:
    def outputs(self, decision: DecisionMade, intent: EntryIntent | None) -> list[Output]:
        if intent is not None and not decision.accepted:
            raise ValueError(f"decision {decision.id} is blocked but came with an intent")
        if decision.accepted and intent is None:
            raise ValueError(f"decision {decision.id} is accepted but has no intent")
        out = [Output(streams.ORDERS_SIGNALS, decision)]
        if intent is not None:
            out.append(Output(streams.ORDERS_SHADOW, intent))
        return out
