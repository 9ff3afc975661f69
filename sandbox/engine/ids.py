"""Deterministic UUIDs: hash of (seed, kind, counter), so ids repeat with the seed and never
collide after a restart (the counters are persisted)."""

from __future__ import annotations

import hashlib

_VARIANT = "89ab"


class IdGenerator:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.counters: dict[str, int] = {}

    def next(self, kind: str) -> str:
        n = self.counters.get(kind, 0) + 1
        self.counters[kind] = n
        h = hashlib.blake2b(f"{self.seed}:{kind}:{n}".encode(), digest_size=16).hexdigest()
        # RFC 4122 version 4 layout (formatted by hand: uuid.UUID is slow on hot paths).
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}"
