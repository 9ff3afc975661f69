"""Deterministic UUIDs: hash of (seed, kind, counter), so ids repeat with the seed and never
collide after a restart (the counters are persisted)."""

from __future__ import annotations

import hashlib
import uuid


class IdGenerator:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.counters: dict[str, int] = {}

    def next(self, kind: str) -> str:
        n = self.counters.get(kind, 0) + 1
        self.counters[kind] = n
        digest = hashlib.blake2b(f"{self.seed}:{kind}:{n}".encode(), digest_size=16).digest()
        return str(uuid.UUID(bytes=digest, version=4))
