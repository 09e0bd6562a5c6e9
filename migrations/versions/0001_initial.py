"""Initial schema: conversations, turns, steps.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Types are spelled out here rather than imported from convostore._sql so this revision
# keeps meaning what it meant when it was written.
ID = (
    sa.String(200)
    .with_variant(postgresql.VARCHAR(200, collation="C"), "postgresql")
    .with_variant(mysql.VARCHAR(200, charset="ascii", collation="ascii_bin"), "mysql")
)
KEY = sa.String(200).with_variant(
    mysql.VARCHAR(200, charset="utf8mb4", collation="utf8mb4_bin"), "mysql"
)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql")
TABLE_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", ID, nullable=False),
        sa.Column("tenant", ID, nullable=False),
        sa.Column("user", ID, nullable=True),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("head_interaction_id", sa.Text(), nullable=True),
        sa.Column("head_created_at", TIMESTAMP, nullable=True),
        sa.Column("head_model", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("turn_count", sa.Integer(), nullable=False),
        sa.Column("step_count", sa.Integer(), nullable=False),
        sa.Column("last_turn_hash", sa.Text(), nullable=True),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_conversations"),
        **TABLE_OPTIONS,
    )
    op.create_index(
        "ix_conversations_tenant_created_at_id", "conversations", ["tenant", "created_at", "id"]
    )
    op.create_index(
        "ix_conversations_tenant_user_created_at_id",
        "conversations",
        ["tenant", "user", "created_at", "id"],
    )
    op.create_index("ix_conversations_created_at_id", "conversations", ["created_at", "id"])
    op.create_index("ix_conversations_expires_at", "conversations", ["expires_at"])
    op.create_index("ix_conversations_updated_at", "conversations", ["updated_at"])

    op.create_table(
        "turns",
        sa.Column("conversation_id", ID, nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("interaction_id", sa.Text(), nullable=True),
        sa.Column("previous_interaction_id", sa.Text(), nullable=True),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("mode_used", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("usage", JSON, nullable=True),
        sa.Column("idempotency_key", KEY, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("audit_hash", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_turns_conversation_id",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("conversation_id", "seq", name="pk_turns"),
        sa.UniqueConstraint(
            "conversation_id", "idempotency_key", name="uq_turns_conversation_id_idempotency_key"
        ),
        **TABLE_OPTIONS,
    )

    op.create_table(
        "steps",
        sa.Column("conversation_id", ID, nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("turn_seq", sa.Integer(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("payload", JSON, nullable=True),
        sa.Column("payload_text", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_steps_conversation_id",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("conversation_id", "seq", name="pk_steps"),
        **TABLE_OPTIONS,
    )
    op.create_index(
        "ix_steps_conversation_id_turn_seq_seq", "steps", ["conversation_id", "turn_seq", "seq"]
    )


def downgrade() -> None:
    # dropping a table drops its indexes and constraints with it
    op.drop_table("steps")
    op.drop_table("turns")
    op.drop_table("conversations")
