"""Settings from the environment and `.env`, built once in each process's entry point.

Every process shares ``CommonSettings``; a service subclasses it to add its own fields and
its default metrics port. Nothing else reads ``os.environ``.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tradestack.errors import ConfigError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
BITVAVO_REST_URL = "https://api.bitvavo.com/v2"
BITVAVO_WS_URL = "wss://ws.bitvavo.com/v2/"

def split_csv(value: Any) -> Any:
    """``"BTC-EUR, ETH-EUR"`` → ``["BTC-EUR", "ETH-EUR"]``; lists pass through."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# A list setting written comma-separated in the environment (not JSON).
CsvList = Annotated[list[str], NoDecode, BeforeValidator(split_csv)]


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Redis: REDIS_URL may carry a user, password, db index, and rediss:// for TLS.
    redis_url: str = DEFAULT_REDIS_URL
    redis_socket_timeout_s: float = Field(5.0, gt=0)

    dry_run: bool = True
    log_level: str = "INFO"

    metrics_addr: str = "127.0.0.1"
    metrics_port: int = Field(0, ge=0, le=65535)  # each service sets its DESIGN §1 default

    heartbeat_every_s: float = Field(5.0, gt=0)
    heartbeat_ttl_s: int = Field(15, gt=0)
    kill_poll_ms: int = Field(50, ge=10, le=100)  # the kill switch must act within 100 ms

    # The consumer loop
    read_count: int = Field(256, ge=1, le=10_000)
    block_ms: int = Field(1000, ge=1, le=4000)  # bounded so SIGTERM is seen within the 5 s budget
    claim_idle_ms: int = Field(30_000, ge=10)
    claim_every_s: float = Field(5.0, gt=0)
    max_deliveries: int = Field(5, ge=1)
    dedupe_ttl_s: int = Field(86_400, ge=0)  # 0 disables the duplicate filter on inputs
    stream_maxlen: dict[str, int] = Field(default_factory=dict)  # JSON: {"bitvavo:book": 100000}
    # Order, execution, signal and event streams: trimmed by age (tradestack/trim.py), never past an entry a
    # consumer group has not read and acked. 0 never trims. A stream no group reads is trimmed only when allowed.
    stream_max_age_days: float = Field(30.0, ge=0)
    stream_trim_ungrouped: bool = False

    # One active instance (core, executor): the lease's TTL, and how often a standby looks.
    lease_ttl_ms: int = Field(3000, ge=500, le=60_000)
    lease_poll_ms: int = Field(250, ge=10, le=10_000)

    parquet_dir: str = "./data/parquet"
    parquet_retention_days: int = Field(0, ge=0)  # 0 keeps every day; give every process the same value
    parquet_compact_every_s: float = Field(60.0, gt=0)  # the trading archive's compaction round

    # Exchange (DESIGN §3)
    bitvavo_api_key: SecretStr | None = None
    bitvavo_api_secret: SecretStr | None = None
    bitvavo_operator_id: int | None = None
    bitvavo_rest_url: str = BITVAVO_REST_URL
    bitvavo_ws_url: str = BITVAVO_WS_URL
    enable_live_trading: bool = False
    live_allowed_markets: CsvList = Field(default_factory=list)
    # Bitvavo's rate limit (1000 points/min per key, per IP unsigned), one budget per key and per IP shared
    # in Redis by every process (tradestack/ratelimit.py): at most this many points a minute, of which the
    # last RESERVE only protective orders (stops, exits, emergency closes) may spend.
    ratelimit_limit_points: int = Field(900, ge=1, le=1000)
    ratelimit_protective_reserve_points: int = Field(200, ge=0, le=999)

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @property
    def mode(self) -> str:
        """The mode orders are made in: paper, sandbox or live (DESIGN §3)."""
        if self.dry_run:
            return "paper"
        # Pointing at the real API asks for live; the executor still checks every live gate.
        return "live" if self.bitvavo_rest_url.rstrip("/") == BITVAVO_REST_URL else "sandbox"


S = TypeVar("S", bound=BaseSettings)


def format_validation_error(exc: ValidationError) -> str:
    """One line naming each bad variable, its value, and what is wrong."""
    parts = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err.get("loc", ())) or "settings"
        value = err.get("input")
        shown = "" if isinstance(value, dict) or value is None else f"={value!r}"
        if "secret" in name.lower() or "key" in name.lower():
            shown = ""
        parts.append(f"{name.upper()}{shown}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build settings or raise ConfigError with one clear line."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"config error: {format_validation_error(exc)}") from None


def load_settings_or_exit(cls: type[S], **overrides: Any) -> S:
    """For entry points: on bad settings print one line to stderr and exit 2."""
    try:
        return load_settings(cls, **overrides)
    except ConfigError as exc:
        print(f"tradestack: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
