"""Turns in flight and the outbox: pending_turns, outbox.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision: str = "0002"
down_revision: str | None = "0001"
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
DOCUMENT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql")
TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql")
TABLE_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def upgrade() -> None:
    op.create_table(
        "pending_turns",
        sa.Column("conversation_id", ID, nullable=False),
        sa.Column("tenant", ID, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("planned_version", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", KEY, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("lease_owner", ID, nullable=False),
        sa.Column("lease_expires_at", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("interaction_id", sa.Text(), nullable=True),
        sa.Column("continuation_token", sa.Text(), nullable=True),
        sa.Column("hop_ids", DOCUMENT, nullable=False),
        sa.Column("data", DOCUMENT, nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_pending_turns_conversation_id",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("conversation_id", name="pk_pending_turns"),
        **TABLE_OPTIONS,
    )
    op.create_index(
        "ix_pending_turns_created_at_conversation_id",
        "pending_turns",
        ["created_at", "conversation_id"],
    )
    op.create_index("ix_pending_turns_lease_expires_at", "pending_turns", ["lease_expires_at"])

    op.create_table(
        "outbox",
        sa.Column("id", ID, nullable=False),
        sa.Column("tenant", ID, nullable=False),
        sa.Column("conversation_id", ID, nullable=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_outbox_next_attempt_at", "outbox", ["next_attempt_at"])
    op.create_index("ix_outbox_tenant_created_at", "outbox", ["tenant", "created_at"])


def downgrade() -> None:
    # dropping a table drops its indexes and constraints with it
    op.drop_table("outbox")
    op.drop_table("pending_turns")
