"""Children's output, line by line, prefixed with the process's name (coloured on a terminal):
``trading_core       | {"event": "decision_made", ...}``. One thread per pipe; a line is written
whole, under a lock, so lines of two processes never interleave."""

from __future__ import annotations

import sys
import threading
from typing import IO, Any

COLOURS = ["36", "32", "33", "35", "34", "96", "92", "93", "95", "94", "31"]
RESET = "\x1b[0m"


class LogPrefixer:
    def __init__(self, names: list[str], colour: bool | None = None) -> None:
        self.width = max((len(n) for n in names), default=8)
        self.colours = {name: COLOURS[i % len(COLOURS)] for i, name in enumerate(names)}
        self.colour = colour
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def prefix(self, name: str, out: Any) -> bytes:
        label = f"{name:<{self.width}} | "
        colour = self.colour if self.colour is not None else bool(getattr(out, "isatty", lambda: False)())
        if colour:
            code = self.colours.get(name, COLOURS[len(self.colours) % len(COLOURS)])
            label = f"\x1b[{code}m{name:<{self.width}}{RESET} | "
        return label.encode()

    def attach(self, name: str, pipe: IO[bytes], out: Any = None) -> threading.Thread:
        """Forward ``pipe`` to ``out`` (default: stdout) until it closes."""
        target = out if out is not None else sys.stdout
        prefix = self.prefix(name, target)
        sink: Any = getattr(target, "buffer", target)

        def pump() -> None:
            broken = False  # our output went away (e.g. `tradestack up | head`): keep draining the child's
            for line in iter(pipe.readline, b""):  # pipe anyway, or the child would block on a full pipe
                if broken:
                    continue
                if not line.endswith(b"\n"):
                    line += b"\n"
                with self.lock:
                    try:
                        sink.write(prefix + line)
                        sink.flush()
                    except (OSError, ValueError):
                        broken = True
            pipe.close()

        thread = threading.Thread(target=pump, name=f"log:{name}", daemon=True)
        thread.start()
        self.threads.append(thread)
        return thread

    def join(self, timeout_s: float = 2.0) -> None:
        """Wait for the pipes to be drained (after the processes exited)."""
        for thread in self.threads:
            thread.join(timeout_s)
        self.threads = [t for t in self.threads if t.is_alive()]
