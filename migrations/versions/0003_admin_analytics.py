"""Audit log, analytics facts, and the linked user's own Onyx key.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("wa_user_link") as batch:
        batch.add_column(sa.Column("onyx_api_key", sa.String(1024), nullable=True))
    op.create_table(
        "wa_audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("object_type", sa.String(32), nullable=False),
        sa.Column("object_id", sa.String(128), nullable=True),
        sa.Column("changes", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_wa_audit_log"),
    )
    op.create_index("ix_wa_audit_log_at", "wa_audit_log", ["at"])
    op.create_index("ix_wa_audit_log_tenant_id", "wa_audit_log", ["tenant_id"])
    op.create_table(
        "wa_question_fact",
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("phone_number_id", sa.String(32), nullable=False),
        sa.Column("user_hash", sa.String(64), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("asked_at", sa.BigInteger(), nullable=False),
        sa.Column("question", sa.String(1000), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("answered_at", sa.BigInteger(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("citations", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("request_id", name="pk_wa_question_fact"),
    )
    op.create_index("ix_wa_question_fact_tenant_day", "wa_question_fact", ["tenant_id", "day"])
    op.create_index("ix_wa_question_fact_user_hash", "wa_question_fact", ["user_hash"])
    op.create_table(
        "wa_feedback_fact",
        sa.Column("feedback_id", sa.String(128), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("user_hash", sa.String(64), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("is_positive", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("feedback_id", name="pk_wa_feedback_fact"),
    )
    op.create_index("ix_wa_feedback_fact_tenant_day", "wa_feedback_fact", ["tenant_id", "day"])
    op.create_index("ix_wa_feedback_fact_request_id", "wa_feedback_fact", ["request_id"])
    op.create_index("ix_wa_feedback_fact_user_hash", "wa_feedback_fact", ["user_hash"])


def downgrade() -> None:
    op.drop_table("wa_feedback_fact")
    op.drop_table("wa_question_fact")
    op.drop_index("ix_wa_audit_log_tenant_id", table_name="wa_audit_log")
    op.drop_index("ix_wa_audit_log_at", table_name="wa_audit_log")
    op.drop_table("wa_audit_log")
    with op.batch_alter_table("wa_user_link") as batch:
        batch.drop_column("onyx_api_key")
