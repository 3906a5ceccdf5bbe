"""All configuration in one place: ``ONYX_WA_*`` environment variables and ``.env``.

Why one module: every process (ingress, workers, egress, admin, CLI) reads the same settings, so
a typo is caught once, at start, with a message that names the variable and the fix.
The embedded default needs no variables at all.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    """Where the embedded default keeps its SQLite file, encryption key and RocksDB state."""
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "onyx-wa"


class Settings(BaseSettings):
    """Process settings. Field names map to ``ONYX_WA_<NAME>`` unless an alias says otherwise."""

    model_config = SettingsConfigDict(
        env_prefix="ONYX_WA_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    # --- where things live -------------------------------------------------------------------
    data_dir: Path = Field(default_factory=default_data_dir)
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "ONYX_WA_KAFKA_BOOTSTRAP_SERVERS"),
        description="Unset: the embedded Tansu broker is used.",
    )
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "ONYX_WA_DATABASE_URL"),
        description="Unset: SQLite in data_dir. postgresql+asyncpg://... for PostgreSQL.",
    )
    encryption_key: str | None = Field(
        default=None,
        description="Fernet key(s), comma-separated, newest first; generated when embedded.",
    )
    hash_secret: str | None = Field(
        default=None,
        description="Secret for user/chat pseudonyms (analytics, logs); default: derived from "
        "the oldest encryption key. See docs/privacy.md.",
    )

    # --- kafka -------------------------------------------------------------------------------
    topic_prefix: str = ""
    partitions: int = Field(default=8, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1, le=16)
    broker_host: str = "127.0.0.1"
    broker_port: int = Field(default=19092, ge=1, le=65535)
    kafka_client_id: str = "onyx-wa"
    broker_flavor: Literal["auto", "kafka", "tansu"] = Field(
        default="auto", description="auto: Tansu when embedded, Apache Kafka otherwise."
    )
    kafka_session_timeout_s: float = Field(
        default=10.0, ge=6.0, le=300.0, description="Consumer group session timeout (see kafka.py)."
    )
    # retention (docs/privacy.md): applied when a topic is created; change existing topics
    # with kafka-configs --alter (see the doc)
    raw_retention_hours: float = Field(
        default=7 * 24, gt=0, description="wa.webhook.raw / unrouted: raw payloads (retention.ms)."
    )
    event_retention_hours: float = Field(
        default=7 * 24, gt=0, description="Every other pipeline topic (retention.ms)."
    )
    forget_retention_hours: float = Field(
        default=24, gt=0, description="wa.forget: forget requests (they name the user)."
    )
    state_compaction_lag_hours: float = Field(
        default=24,
        gt=0,
        description="Changelogs: longest time a deleted (tombstoned) state stays readable before "
        "compaction removes it (max.compaction.lag.ms, segment.ms).",
    )

    # --- processes ---------------------------------------------------------------------------
    ingress_host: str = "127.0.0.1"
    ingress_port: int = Field(default=8080, ge=0, le=65535)
    admin_host: str = Field(
        default="127.0.0.1", description="Where the admin API listens; 0.0.0.0 in containers."
    )
    admin_port: int = Field(default=8081, ge=0, le=65535)
    sim_port: int = Field(default=8090, ge=0, le=65535)
    worker_web_port: int = Field(default=6066, ge=0, le=65535)
    public_ingress_url: str | None = Field(
        default=None, description="Where the simulator posts webhooks; default the local ingress."
    )

    # --- ingress -----------------------------------------------------------------------------
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    publish_timeout_s: float = Field(default=5.0, gt=0)
    tenant_flood_ceiling_per_s: float = Field(default=500.0, gt=0)
    bot_cache_ttl_s: float = Field(default=30.0, ge=0)

    # --- streams -----------------------------------------------------------------------------
    store: Literal["memory", "rocksdb"] = "memory"
    dedupe_ttl_s: float = Field(default=7 * 24 * 3600, gt=0)
    conversation_idle_ttl_s: float = Field(default=30 * 24 * 3600, gt=0)
    conversation_sweep_interval_s: float = Field(
        default=600.0, gt=0, description="How often idle conversations are expired (tombstoned)."
    )
    history_turns: int = Field(default=6, ge=0, le=50)
    user_questions_per_minute: int = Field(default=10, ge=1)
    tenant_questions_per_minute: int = Field(default=600, ge=1)
    tenant_questions_per_day: int = Field(default=50_000, ge=1)

    # --- answers -----------------------------------------------------------------------------
    corpus_dir: Path | None = Field(default=None, description="Local answer backend documents.")
    answer_concurrency_per_tenant: int = Field(default=32, ge=1)
    answer_concurrency_per_worker: int = Field(
        default=512, ge=1, description="Answers in flight per worker across all its tenants."
    )
    onyx_connect_timeout_s: float = Field(default=5.0, gt=0)
    onyx_first_byte_timeout_s: float = Field(default=60.0, gt=0)
    onyx_total_timeout_s: float = Field(default=120.0, gt=0)
    onyx_max_retries: int = Field(default=3, ge=0)

    # --- egress ------------------------------------------------------------------------------
    graph_api_url: str | None = Field(
        default=None,
        description="Graph API base; default the local simulator in the embedded stack.",
    )
    graph_api_version: str = "v25.0"
    sources_top_n: int = Field(default=5, ge=0, le=10)
    send_concurrency: int = Field(default=64, ge=1)
    send_throttle: bool = Field(
        default=True, description="Per-number and per-recipient pacing; off only for benchmarks."
    )
    send_max_attempts: int = Field(default=6, ge=1, le=50)
    pause_recheck_s: float = Field(
        default=30.0, gt=0, description="How often a paused bot (stop-and-alert code) is re-probed."
    )
    uncertain_sends: Literal["reconcile", "dlq"] = Field(
        default="reconcile",
        description="A send a crash left without its response: reconcile (wait for its status "
        "webhook, resend only if none comes) or dlq (never resend; surface it on the DLQ).",
    )
    send_reconcile_s: float = Field(
        default=20.0,
        gt=0,
        description="How long an uncertain send waits for a status before it is resent.",
    )
    send_drain_s: float = Field(
        default=10.0,
        ge=0,
        description="How long a stopping or rebalancing sender waits for its sends in flight "
        "before it cancels them (their durable marks make the next owner reconcile them).",
    )

    # --- process ---------------------------------------------------------------------------
    gc_young_threshold: int = Field(
        default=20_000,
        ge=0,
        description="Workers: freeze start-up objects out of the garbage collector's sight and "
        "collect the young generation every N net allocations (Python's default: 700); 0 keeps "
        "Python's settings. See onyx_wa/gc_tuning.py.",
    )

    # --- observability -----------------------------------------------------------------------
    log_level: str = "INFO"
    log_format: Literal["json", "console"] | None = Field(
        default=None,
        description="json (one JSON object per line) or console; unset: console on a terminal, "
        "else json.",
    )
    log_json: bool = Field(default=False, description="Deprecated: same as log_format=json.")
    admin_tokens: str | None = Field(
        default=None, description="token=role[:tenant], comma-separated (operator|tenant)."
    )

    @field_validator(
        "kafka_bootstrap_servers",
        "database_url",
        "encryption_key",
        "graph_api_url",
        "public_ingress_url",
        "admin_tokens",
        "corpus_dir",
        "hash_secret",
        "log_format",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``VAR=`` in a shell or compose file means "not set", not "the empty string"."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_topic_safe(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(value) <= allowed:
            raise ValueError("may contain only letters, digits, '.', '_' and '-'")
        return value

    # --- derived -----------------------------------------------------------------------------
    @property
    def embedded(self) -> bool:
        """True when no external broker is configured: the embedded Tansu broker is used."""
        return not self.kafka_bootstrap_servers

    @property
    def tansu(self) -> bool:
        """True when the broker is Tansu, whose quirks ``onyx_wa.kafka`` works around."""
        return self.broker_flavor == "tansu" or (self.broker_flavor == "auto" and self.embedded)

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap_servers or f"{self.broker_host}:{self.broker_port}"

    @property
    def sqlalchemy_url(self) -> str:
        """The async SQLAlchemy URL; plain ``postgresql://`` is upgraded to asyncpg."""
        url = self.database_url
        if not url:
            return f"sqlite+aiosqlite:///{self.data_dir / 'onyx-wa.sqlite3'}"
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://") :]
        if url.startswith("postgresql://"):
            url = "postgresql+asyncpg://" + url[len("postgresql://") :]
        if url.startswith("sqlite://") and not url.startswith("sqlite+aiosqlite://"):
            url = "sqlite+aiosqlite://" + url[len("sqlite://") :]
        return url

    @property
    def graph_base_url(self) -> str:
        return (self.graph_api_url or f"http://127.0.0.1:{self.sim_port}").rstrip("/")

    @property
    def ingress_url(self) -> str:
        return self.public_ingress_url or f"http://127.0.0.1:{self.ingress_port}/webhooks/whatsapp"


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce ``settings`` in a child process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        key = {
            "kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
            "database_url": "DATABASE_URL",
        }.get(name, f"ONYX_WA_{name.upper()}")
        env[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


class SettingsError(RuntimeError):
    """Raised with a one-line, human message when settings do not validate."""


def load_settings(**overrides: object) -> Settings:
    """Build settings, turning pydantic's report into one line per bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = "_".join(str(p) for p in err["loc"]).upper()
            problems.append(f"ONYX_WA_{name}: {err['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded once."""
    return load_settings()
