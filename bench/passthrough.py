"""A pass-through service on the real runtime and consumer loop (for bench/loop.py and the tests).

Reads ``test:in``, writes each message again (new id derived from the input's) to ``test:out``.
Env: ``HANG_ON`` = a message id on which the handler blocks forever (to be killed mid-message);
``SLOW_MS`` = time the handler spends per message; ``STATE_WRITES=1`` = also one hash write per
message (committed with the output and the ack); ``CLAIM_IDLE_MS`` etc. as usual. With
``HANG_ON`` set, the handler records the id in hand in ``test:in_handler`` so tests can wait on it.
"""

from __future__ import annotations

import asyncio
import os
import sys

from tradestack.bus import Delivery
from tradestack.config import CommonSettings
from tradestack.effects import Effect, HashSet, Output
from tradestack.messages import Message, TradingEvent, derive_id
from tradestack.service import Service, run_service


class Settings(CommonSettings):
    hang_on: str = ""
    slow_ms: int = 0
    state_writes: bool = False


def setup(service: Service[Settings]) -> None:
    settings = service.settings

    async def handle(msg: Message, delivery: Delivery) -> list[Effect]:
        if settings.hang_on:
            await service.redis.set("test:in_handler", msg.id)
        if msg.id == settings.hang_on:
            await asyncio.Event().wait()  # blocks until the process is killed
        if settings.slow_ms:
            await asyncio.sleep(settings.slow_ms / 1000)  # simulated work, not synchronisation
        assert isinstance(msg, TradingEvent)
        out = msg.model_copy(update={"id": derive_id(msg.id, "out"), "src": "passthrough"})
        if settings.state_writes:
            return [Output("test:out", out), HashSet("test:state", {msg.details.get("market", "?"): msg.id})]
        return [Output("test:out", out)]

    service.consume(["test:in"], handle)


if __name__ == "__main__":
    sys.exit(run_service(os.environ.get("SERVICE_NAME", "passthrough"), Settings, "test_passthrough", setup))
