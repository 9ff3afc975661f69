"""Process settings of the sandbox exchange (env prefix ``SANDBOX_``, CLI flags override)."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Fixed defaults so that a stack started without configuration can talk to its own sandbox
# without passing credentials around; both are printed on start (this is not a secret).
DEFAULT_API_KEY = hashlib.sha256(b"tradestack-sandbox-api-key").hexdigest()
DEFAULT_API_SECRET = hashlib.sha256(b"tradestack-sandbox-api-secret").hexdigest() * 2


class SandboxSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="0 = pick a free port")
    markets: str = Field("", description="comma-separated market ids, 'all', or empty for the engine default")
    seed: int = 1
    faults: str = Field("", description="fault spec: JSON text or @path to a JSON file")
    state: Path | None = None
    replay: Path | None = None
    history_hours: float = Field(24.0, ge=0)
    api_key: str = DEFAULT_API_KEY
    api_secret: SecretStr = SecretStr(DEFAULT_API_SECRET)
    eur: Decimal = Field(Decimal("10000"), ge=0)
    log_level: str = "INFO"
    # bench knob: multiplies the simulated aggressive-trade rate of every market
    activity: float = Field(1.0, gt=0, le=1000)

    # market loop cadence
    step_ms: int = Field(50, ge=1)
    book_flush_ms: int = Field(0, ge=0, description="0 = a book event per change, as Bitvavo; N = batch changes per N ms")
    ticker24h_ms: int = Field(1000, ge=1)
    # websocket
    ws_queue_max: int = Field(20000, ge=1, description="outbound frames buffered per socket before it is dropped")
    ws_heartbeat_secs: float = Field(50.0, gt=0)
    # rate limits
    ratelimit_points_per_min: int = Field(1000, ge=1)
    ban_key_secs: int = Field(60, ge=1)
    ban_ip_secs: int = Field(900, ge=1)
    shutdown_timeout_secs: float = Field(4.0, gt=0)

    @field_validator("api_key")
    @classmethod
    def _key_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("api_key must not be blank")
        if len(v.strip()) != 64:  # as on Bitvavo; a client could never authenticate with it (301)
            raise ValueError(f"api_key must be 64 characters (Bitvavo's key length), got {len(v.strip())}")
        return v.strip()

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {v!r}")
        return v.upper()

    def market_list(self) -> list[str] | None:
        """None = engine default; ['all'] = every market; else the listed ids."""
        items = [m.strip() for m in self.markets.split(",") if m.strip()]
        if not items:
            return None
        if any(m.lower() == "all" for m in items):
            return ["all"]
        return [m.upper() for m in items]

    def fault_text(self) -> str | None:
        """The fault spec as JSON text (reads @file), or None."""
        spec = self.faults.strip()
        if not spec:
            return None
        if spec.startswith("@"):
            return Path(spec[1:]).read_text()
        return spec
