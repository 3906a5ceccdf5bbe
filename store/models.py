"""Tenant configuration tables: bots (numbers), chat configs, user links, config version.

Why this shape: it mirrors Onyx's SlackBot / SlackChannelConfig so operators find the same ideas
(one bot per business number, per-chat overrides with one default per bot). Types are portable
between SQLite and PostgreSQL, and constraint names come from a naming convention so the
hand-written migration and the models agree exactly.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    event,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from store.crypto import EncryptedString

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSON on SQLite, JSONB on PostgreSQL (indexable, compact, equality works).
PortableJSON = JSON().with_variant(JSONB(), "postgresql")

ANSWER_BACKENDS = ("local", "onyx")
MATCH_KINDS = ("wa_id", "group", "default")
GLOBAL_SCOPE = "global"


class Base(DeclarativeBase):
    """Declarative base with deterministic constraint names."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Timestamps:
    """created_at / updated_at, set by the database on insert and by the ORM on update."""

    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )


class WhatsAppBot(Timestamps, Base):
    """One tenant's WhatsApp business number and how it answers."""

    __tablename__ = "wa_bot"
    __table_args__ = (
        CheckConstraint("answer_backend IN ('local', 'onyx')", name="answer_backend_known"),
        CheckConstraint("throughput_per_s > 0", name="throughput_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    phone_number_id: Mapped[str] = mapped_column(String(32), nullable=False, unique=True)
    waba_id: Mapped[str | None] = mapped_column(String(32))
    display_phone_number: Mapped[str | None] = mapped_column(String(32))
    access_token: Mapped[str] = mapped_column(EncryptedString(2048), nullable=False)
    app_secret: Mapped[str] = mapped_column(EncryptedString(1024), nullable=False)
    verify_token: Mapped[str] = mapped_column(EncryptedString(1024), nullable=False)
    answer_backend: Mapped[str] = mapped_column(String(16), nullable=False, default="local")
    onyx_base_url: Mapped[str | None] = mapped_column(String(500))
    onyx_api_key: Mapped[str | None] = mapped_column(EncryptedString(1024))
    default_persona_id: Mapped[int | None] = mapped_column(Integer)
    throughput_per_s: Mapped[float] = mapped_column(Float, nullable=False, default=80.0)
    user_questions_per_minute: Mapped[int | None] = mapped_column(Integer)
    tenant_questions_per_minute: Mapped[int | None] = mapped_column(Integer)
    tenant_questions_per_day: Mapped[int | None] = mapped_column(Integer)

    chat_configs: Mapped[list[WhatsAppChatConfig]] = relationship(
        back_populates="bot", cascade="all, delete-orphan", passive_deletes=True
    )


class WhatsAppChatConfig(Timestamps, Base):
    """Per-chat behaviour of a bot: an exact wa_id / group match, or the bot's default."""

    __tablename__ = "wa_chat_config"
    __table_args__ = (
        CheckConstraint("match_kind IN ('wa_id', 'group', 'default')", name="match_kind_known"),
        CheckConstraint(
            "(match_kind = 'default' AND match_value IS NULL AND is_default) OR "
            "(match_kind <> 'default' AND match_value IS NOT NULL AND NOT is_default)",
            name="default_matches_kind",
        ),
        UniqueConstraint("bot_id", "match_kind", "match_value"),
        # At most one default per bot, enforced by the database on SQLite and PostgreSQL alike.
        Index(
            "uq_wa_chat_config_one_default",
            "bot_id",
            unique=True,
            sqlite_where=text("is_default"),
            postgresql_where=text("is_default"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # No separate index on bot_id: the unique (bot_id, match_kind, match_value) one leads with it.
    bot_id: Mapped[int] = mapped_column(ForeignKey("wa_bot.id", ondelete="CASCADE"), nullable=False)
    match_kind: Mapped[str] = mapped_column(String(16), nullable=False)
    match_value: Mapped[str | None] = mapped_column(String(128))
    persona_id: Mapped[int | None] = mapped_column(Integer)
    document_sets: Mapped[list[str]] = mapped_column(PortableJSON, nullable=False, default=list)
    respond_tag_only: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    allowed_senders: Mapped[list[str] | None] = mapped_column(PortableJSON)
    answer_filters: Mapped[dict[str, Any]] = mapped_column(
        PortableJSON, nullable=False, default=dict
    )
    follow_up_contacts: Mapped[list[str]] = mapped_column(
        PortableJSON, nullable=False, default=list
    )
    show_sources: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    is_default: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)

    bot: Mapped[WhatsAppBot] = relationship(back_populates="chat_configs")


class WhatsAppUserLink(Timestamps, Base):
    """A WhatsApp user (BSUID when known, else wa_id) linked to an Onyx user and preferences."""

    __tablename__ = "wa_user_link"
    __table_args__ = (UniqueConstraint("bot_id", "user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bot_id: Mapped[int] = mapped_column(ForeignKey("wa_bot.id", ondelete="CASCADE"), nullable=False)
    tenant_id: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    user_id: Mapped[str] = mapped_column(String(128), nullable=False)
    onyx_user_email: Mapped[str | None] = mapped_column(String(320))
    # the linked user's own Onyx API key: answers then run with that user's document access
    onyx_api_key: Mapped[str | None] = mapped_column(EncryptedString(1024))
    language: Mapped[str | None] = mapped_column(String(16))
    sources_on: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    opted_out: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class TenantUsage(Base):
    """Questions a tenant used in one quota window, shared by every worker process.

    Workers lease blocks of the window's budget with a conditional ``UPDATE`` (see
    ``streams/quota.py``), so the limit holds across processes without a lock or a new service.
    """

    __tablename__ = "wa_tenant_usage"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    window: Mapped[str] = mapped_column(String(8), primary_key=True)  # "minute" | "day"
    window_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # epoch seconds
    used: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class AuditLogEntry(Base):
    """One change made through the admin API: who, what, when; secrets appear only masked."""

    __tablename__ = "wa_audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False, index=True
    )
    actor: Mapped[str] = mapped_column(String(128), nullable=False)  # token name, never the token
    role: Mapped[str] = mapped_column(String(16), nullable=False)  # operator | tenant
    tenant_id: Mapped[str | None] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(64), nullable=False)  # e.g. bot.update
    object_type: Mapped[str] = mapped_column(String(32), nullable=False)
    object_id: Mapped[str | None] = mapped_column(String(128))
    changes: Mapped[dict[str, Any]] = mapped_column(PortableJSON, nullable=False, default=dict)


class QuestionFact(Base):
    """One answered (or failed) question, materialized from the topics for analytics.

    Keyed by the deterministic request id, so replaying the topics upserts the same row instead
    of counting twice. Users appear only as salted hashes (no phone numbers in analytics).
    """

    __tablename__ = "wa_question_fact"
    __table_args__ = (Index("ix_wa_question_fact_tenant_day", "tenant_id", "day"),)

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), nullable=False)
    phone_number_id: Mapped[str] = mapped_column(String(32), nullable=False)
    user_hash: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    day: Mapped[str] = mapped_column(String(10), nullable=False)  # YYYY-MM-DD (UTC)
    asked_at: Mapped[int] = mapped_column(BigInteger, nullable=False)  # epoch ms
    question: Mapped[str] = mapped_column(String(1000), nullable=False)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)  # pending|ok|failed|unanswered
    answered_at: Mapped[int | None] = mapped_column(BigInteger)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64))
    citations: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class FeedbackFact(Base):
    """One 👍/👎 on an answer; keyed by the WhatsApp message id of the tap or reaction."""

    __tablename__ = "wa_feedback_fact"
    __table_args__ = (Index("ix_wa_feedback_fact_tenant_day", "tenant_id", "day"),)

    feedback_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), nullable=False)
    request_id: Mapped[str | None] = mapped_column(String(64), index=True)
    user_hash: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    day: Mapped[str] = mapped_column(String(10), nullable=False)
    at: Mapped[int] = mapped_column(BigInteger, nullable=False)
    is_positive: Mapped[bool] = mapped_column(Boolean, nullable=False)
    source: Mapped[str] = mapped_column(String(16), nullable=False)  # button | reaction


class ForgottenUser(Base):
    """A user whose data was deleted (``/forget`` or the admin API), as a pseudonym and a time.

    Kafka topics still hold the user's earlier events until retention removes them; the
    analytics agent skips facts of this user whose event time is at or before ``forgotten_at``,
    so replaying those topics cannot re-create what was deleted. One row per ``user_hash`` under
    every configured key (like the deletion); no phone number, only the keyed pseudonym.
    """

    __tablename__ = "wa_forgotten_user"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    forgotten_at: Mapped[int] = mapped_column(BigInteger, nullable=False)  # epoch ms, latest


class ConfigVersion(Base):
    """A counter bumped by every bot / chat-config write, so caches elsewhere notice cheaply."""

    __tablename__ = "wa_config_version"

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


_VERSIONED = (WhatsAppBot, WhatsAppChatConfig, WhatsAppUserLink)


class ConfigSession(Session):
    """The session class used by :func:`store.db.session_factory` (see the flush hook below)."""


def bump_statement(dialect_name: str) -> Any:
    """An atomic upsert incrementing the global config version (one row, no race)."""
    table = ConfigVersion.__table__
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect_name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise NotImplementedError(f"unsupported database dialect {dialect_name!r}")
    stmt = insert(table).values(scope=GLOBAL_SCOPE, version=1)
    return stmt.on_conflict_do_update(
        index_elements=[table.c.scope], set_={"version": table.c.version + 1}
    )


@event.listens_for(ConfigSession, "before_flush")
def _bump_on_config_change(session: Session, _context: Any, _instances: Any) -> None:
    """Any ORM write to a bot or chat config bumps the version in the same transaction."""
    changed = (
        *session.new,
        *session.deleted,
        *(obj for obj in session.dirty if session.is_modified(obj)),
    )
    if not any(isinstance(obj, _VERSIONED) for obj in changed):
        return
    connection = session.connection()
    connection.execute(bump_statement(connection.dialect.name))
