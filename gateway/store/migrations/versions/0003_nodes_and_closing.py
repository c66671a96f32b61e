"""Gateway nodes announce where they listen; a profile being deleted is
marked closing first.

Revision ID: 0003_nodes_and_closing
Revises: 0002_credit_history_tokens
Create Date: 2026-12-02

Written out by hand, like 0001 and 0002.  ``profiles.closing_since`` is a
plain nullable column, which SQLite can add in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_nodes_and_closing"
down_revision: str | Sequence[str] | None = "0002_credit_history_tokens"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("profiles", sa.Column("closing_since", _TIMESTAMP, nullable=True))
    op.create_table(
        "gateway_nodes",
        sa.Column("node_id", sa.String(128), nullable=False),
        sa.Column("sip_addresses", sa.String(2048), nullable=False),
        sa.Column("transports", sa.String(64), nullable=False),
        sa.Column("http_address", sa.String(53), nullable=True),
        sa.Column("started_at", _TIMESTAMP, nullable=False),
        sa.Column("seen_at", _TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("node_id", name=op.f("pk_gateway_nodes")),
    )
    op.create_index(op.f("ix_gateway_nodes_seen_at"), "gateway_nodes", ["seen_at"])


def downgrade() -> None:
    op.drop_index("ix_gateway_nodes_seen_at", table_name="gateway_nodes")
    op.drop_table("gateway_nodes")
    op.drop_column("profiles", "closing_since")
