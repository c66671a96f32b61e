"""Credit per profile, call records, the rate table and API tokens.

Revision ID: 0002_credit_history_tokens
Revises: 0001_initial
Create Date: 2026-11-25

Written out by hand, like 0001.  SQLite cannot add a table-level CHECK to
an existing table, and recreating ``profiles`` (Alembic's batch mode) would
fight the foreign keys that point at it, so there the credit column
carries its CHECK as a column constraint; PostgreSQL gets the same named
constraint added to the table.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_credit_history_tokens"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MONEY = sa.Numeric(14, 4).with_variant(sa.BigInteger(), "sqlite")
_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "ALTER TABLE profiles ADD COLUMN credit BIGINT NOT NULL DEFAULT 0"
            " CONSTRAINT ck_profiles_credit CHECK (credit >= 0)"
        )
    else:
        op.add_column(
            "profiles", sa.Column("credit", _MONEY, nullable=False, server_default=sa.text("0"))
        )
        op.create_check_constraint(op.f("ck_profiles_credit"), "profiles", "credit >= 0")
    op.create_table(
        "call_records",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("record_key", sa.String(32), nullable=False),
        sa.Column("profile_id", sa.Integer(), nullable=False),
        sa.Column("call_id", sa.String(255), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("caller", sa.String(128), nullable=False),
        sa.Column("callee", sa.String(128), nullable=False),
        sa.Column("started_at", _TIMESTAMP, nullable=False),
        sa.Column("answered_at", _TIMESTAMP, nullable=True),
        sa.Column("ended_at", _TIMESTAMP, nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("final_status", sa.Integer(), nullable=False),
        sa.Column("cost", _MONEY, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_call_records")),
        sa.ForeignKeyConstraint(
            ["profile_id"],
            ["profiles.id"],
            name=op.f("fk_call_records_profile_id_profiles"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("record_key", name=op.f("uq_call_records_record_key")),
        sa.CheckConstraint(
            "direction IN ('outbound', 'inbound')", name=op.f("ck_call_records_direction")
        ),
        sa.CheckConstraint("duration_ms >= 0", name=op.f("ck_call_records_duration_ms")),
        sa.CheckConstraint("cost >= 0", name=op.f("ck_call_records_cost")),
        sa.CheckConstraint(
            "final_status BETWEEN 100 AND 699", name=op.f("ck_call_records_final_status")
        ),
    )
    op.create_index(op.f("ix_call_records_profile_id"), "call_records", ["profile_id"])
    op.create_index(op.f("ix_call_records_started_at"), "call_records", ["started_at"])
    op.create_table(
        "rates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prefix", sa.String(15), nullable=False),
        sa.Column("price_per_minute", _MONEY, nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rates")),
        sa.UniqueConstraint("prefix", name=op.f("uq_rates_prefix")),
        sa.CheckConstraint("price_per_minute >= 0", name=op.f("ck_rates_price_per_minute")),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_api_tokens_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("name", name=op.f("uq_api_tokens_name")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_api_tokens_token_sha256")),
        sa.CheckConstraint(
            "(role = 'operator' AND account_id IS NULL)"
            " OR (role = 'account' AND account_id IS NOT NULL)",
            name=op.f("ck_api_tokens_role"),
        ),
    )
    op.create_index(op.f("ix_api_tokens_account_id"), "api_tokens", ["account_id"])


def downgrade() -> None:
    op.drop_index("ix_api_tokens_account_id", table_name="api_tokens")
    op.drop_table("api_tokens")
    op.drop_table("rates")
    op.drop_index("ix_call_records_started_at", table_name="call_records")
    op.drop_index("ix_call_records_profile_id", table_name="call_records")
    op.drop_table("call_records")
    if op.get_bind().dialect.name == "sqlite":
        # SQLite (3.35+) drops a column together with its own CHECK.
        op.execute("ALTER TABLE profiles DROP COLUMN credit")
    else:
        op.drop_constraint("ck_profiles_credit", "profiles", type_="check")
        op.drop_column("profiles", "credit")
