"""Initial schema: bots, chat configs, user links, config version.

Written by hand to match ``store.models`` exactly (constraint names follow the metadata's naming
convention); ``tests/test_store_migrations.py`` proves there is no drift on SQLite and PostgreSQL.

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _timestamps() -> list[sa.Column]:
    return [
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    ]


def upgrade() -> None:
    op.create_table(
        "wa_bot",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("phone_number_id", sa.String(32), nullable=False),
        sa.Column("waba_id", sa.String(32), nullable=True),
        sa.Column("display_phone_number", sa.String(32), nullable=True),
        sa.Column("access_token", sa.String(2048), nullable=False),
        sa.Column("app_secret", sa.String(1024), nullable=False),
        sa.Column("verify_token", sa.String(1024), nullable=False),
        sa.Column("answer_backend", sa.String(16), nullable=False),
        sa.Column("onyx_base_url", sa.String(500), nullable=True),
        sa.Column("onyx_api_key", sa.String(1024), nullable=True),
        sa.Column("default_persona_id", sa.Integer(), nullable=True),
        sa.Column("throughput_per_s", sa.Float(), nullable=False),
        sa.Column("user_questions_per_minute", sa.Integer(), nullable=True),
        sa.Column("tenant_questions_per_minute", sa.Integer(), nullable=True),
        sa.Column("tenant_questions_per_day", sa.Integer(), nullable=True),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_wa_bot"),
        sa.CheckConstraint(
            "answer_backend IN ('local', 'onyx')", name="ck_wa_bot_answer_backend_known"
        ),
        sa.CheckConstraint("throughput_per_s > 0", name="ck_wa_bot_throughput_positive"),
        sa.UniqueConstraint("phone_number_id", name="uq_wa_bot_phone_number_id"),
    )
    op.create_index("ix_wa_bot_tenant_id", "wa_bot", ["tenant_id"])

    op.create_table(
        "wa_config_version",
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("scope", name="pk_wa_config_version"),
    )

    op.create_table(
        "wa_chat_config",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("bot_id", sa.Integer(), nullable=False),
        sa.Column("match_kind", sa.String(16), nullable=False),
        sa.Column("match_value", sa.String(128), nullable=True),
        sa.Column("persona_id", sa.Integer(), nullable=True),
        sa.Column("document_sets", JSON, nullable=False),
        sa.Column("respond_tag_only", sa.Boolean(), nullable=False),
        sa.Column("allowed_senders", JSON, nullable=True),
        sa.Column("answer_filters", JSON, nullable=False),
        sa.Column("follow_up_contacts", JSON, nullable=False),
        sa.Column("show_sources", sa.Boolean(), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_wa_chat_config"),
        sa.CheckConstraint(
            "match_kind IN ('wa_id', 'group', 'default')",
            name="ck_wa_chat_config_match_kind_known",
        ),
        sa.CheckConstraint(
            "(match_kind = 'default' AND match_value IS NULL AND is_default) OR "
            "(match_kind <> 'default' AND match_value IS NOT NULL AND NOT is_default)",
            name="ck_wa_chat_config_default_matches_kind",
        ),
        sa.UniqueConstraint(
            "bot_id",
            "match_kind",
            "match_value",
            name="uq_wa_chat_config_bot_id_match_kind_match_value",
        ),
        sa.ForeignKeyConstraint(
            ["bot_id"],
            ["wa_bot.id"],
            name="fk_wa_chat_config_bot_id_wa_bot",
            ondelete="CASCADE",
        ),
    )
    # At most one default config per bot: a partial unique index (SQLite and PostgreSQL).
    op.create_index(
        "uq_wa_chat_config_one_default",
        "wa_chat_config",
        ["bot_id"],
        unique=True,
        sqlite_where=sa.text("is_default"),
        postgresql_where=sa.text("is_default"),
    )

    op.create_table(
        "wa_user_link",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("bot_id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("onyx_user_email", sa.String(320), nullable=True),
        sa.Column("language", sa.String(16), nullable=True),
        sa.Column("sources_on", sa.Boolean(), nullable=False),
        sa.Column("opted_out", sa.Boolean(), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_wa_user_link"),
        sa.UniqueConstraint("bot_id", "user_id", name="uq_wa_user_link_bot_id_user_id"),
        sa.ForeignKeyConstraint(
            ["bot_id"], ["wa_bot.id"], name="fk_wa_user_link_bot_id_wa_bot", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_wa_user_link_tenant_id", "wa_user_link", ["tenant_id"])


def downgrade() -> None:
    op.drop_index("ix_wa_user_link_tenant_id", table_name="wa_user_link")
    op.drop_table("wa_user_link")
    op.drop_index("uq_wa_chat_config_one_default", table_name="wa_chat_config")
    op.drop_table("wa_chat_config")
    op.drop_table("wa_config_version")
    op.drop_index("ix_wa_bot_tenant_id", table_name="wa_bot")
    op.drop_table("wa_bot")
