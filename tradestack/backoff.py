"""Capped exponential backoff with jitter, for reconnects to Redis and the exchange.

Not "full jitter" (uniform in [0, ceiling]): the delay never drops below ``base/2``, so a burst of
failures cannot turn into a tight retry loop, and it still spreads reconnecting clients apart."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, base_s: float = 0.1, cap_s: float = 5.0, rng: random.Random | None = None) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError("backoff needs 0 < base_s <= cap_s")
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """A uniform delay in [base/2, ceiling], ceiling = min(cap, base * 2^attempt); then attempt += 1."""
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return self._rng.uniform(min(self.base_s / 2, ceiling), ceiling)

    def reset(self) -> None:
        self.attempt = 0
