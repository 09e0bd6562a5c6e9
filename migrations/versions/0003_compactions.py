"""Context lifecycle: compactions, and the compaction in force on conversations and turns.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Types are spelled out here rather than imported from convostore._sql so this revision
# keeps meaning what it meant when it was written.
ID = (
    sa.String(200)
    .with_variant(postgresql.VARCHAR(200, collation="C"), "postgresql")
    .with_variant(mysql.VARCHAR(200, charset="ascii", collation="ascii_bin"), "mysql")
)
DOCUMENT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql")
TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql")
TABLE_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def upgrade() -> None:
    for table in ("conversations", "turns"):
        op.add_column(
            table,
            sa.Column("context_epoch", sa.Integer(), nullable=False, server_default=sa.text("0")),
        )
    op.create_table(
        "compactions",
        sa.Column("conversation_id", ID, nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("last_turn", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("data", DOCUMENT, nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_compactions_conversation_id",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("conversation_id", "epoch", name="pk_compactions"),
        **TABLE_OPTIONS,
    )


def downgrade() -> None:
    # the covered steps were never removed: dropping the compactions loses only the views
    op.drop_table("compactions")
    for table in ("turns", "conversations"):
        op.drop_column(table, "context_epoch")
