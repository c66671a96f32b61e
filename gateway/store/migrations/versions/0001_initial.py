"""Initial schema: accounts, profiles, numbers and the directory version.

Revision ID: 0001_initial
Revises:
Create Date: 2024-06-01

Written out by hand rather than from the models, so that this revision
stays what it was when the models change.  Constraint names follow
``gateway.store.models.NAMING_CONVENTION``; ``op.f()`` marks them as final, so
the convention is not applied a second time.  Money is ``NUMERIC(14, 4)`` on
PostgreSQL and an integer count of 1/10,000 units on SQLite (see
``gateway.store.models.Money``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MONEY = sa.Numeric(14, 4).with_variant(sa.BigInteger(), "sqlite")
_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("balance", _MONEY, nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("name", name=op.f("uq_accounts_name")),
        sa.CheckConstraint("balance >= 0", name=op.f("ck_accounts_balance")),
    )
    op.create_table(
        "profiles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("auth_mode", sa.String(16), nullable=False),
        sa.Column("sip_username", sa.String(64), nullable=False),
        sa.Column("password_encrypted", sa.String(512), nullable=True),
        sa.Column("realm", sa.String(128), nullable=True),
        sa.Column("ha1_md5", sa.String(32), nullable=True),
        sa.Column("ha1_sha256", sa.String(64), nullable=True),
        sa.Column("ip_address", sa.String(45), nullable=True),
        sa.Column("udp_port", sa.Integer(), nullable=True),
        sa.Column("channel_limit", sa.Integer(), nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_profiles")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_profiles_account_id_accounts")
        ),
        sa.UniqueConstraint("account_id", "name", name=op.f("uq_profiles_account_id_name")),
        sa.UniqueConstraint("ip_address", "udp_port", name=op.f("uq_profiles_ip_address_udp_port")),
        sa.UniqueConstraint("id", "account_id", name=op.f("uq_profiles_id_account_id")),
        sa.UniqueConstraint("sip_username", name=op.f("uq_profiles_sip_username")),
        sa.CheckConstraint(
            "auth_mode IN ('registration', 'ip')", name=op.f("ck_profiles_auth_mode")
        ),
        sa.CheckConstraint(
            "channel_limit BETWEEN 1 AND 300", name=op.f("ck_profiles_channel_limit")
        ),
        sa.CheckConstraint(
            "udp_port IS NULL OR udp_port BETWEEN 1 AND 65535", name=op.f("ck_profiles_udp_port")
        ),
        sa.CheckConstraint(
            "(auth_mode = 'ip' AND ip_address IS NOT NULL AND udp_port IS NOT NULL"
            " AND password_encrypted IS NULL AND ha1_md5 IS NULL AND ha1_sha256 IS NULL)"
            " OR (auth_mode = 'registration' AND ip_address IS NULL AND udp_port IS NULL"
            " AND password_encrypted IS NOT NULL AND realm IS NOT NULL"
            " AND ha1_md5 IS NOT NULL AND ha1_sha256 IS NOT NULL)",
            name=op.f("ck_profiles_credentials"),
        ),
    )
    op.create_index(op.f("ix_profiles_account_id"), "profiles", ["account_id"])
    op.create_table(
        "numbers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("e164", sa.String(16), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("profile_id", sa.Integer(), nullable=True),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_numbers")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_numbers_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["profile_id", "account_id"],
            ["profiles.id", "profiles.account_id"],
            name=op.f("fk_numbers_profile_id_account_id_profiles"),
        ),
        sa.UniqueConstraint("e164", name=op.f("uq_numbers_e164")),
        sa.CheckConstraint(
            "e164 LIKE '+%' AND length(e164) BETWEEN 9 AND 16", name=op.f("ck_numbers_e164")
        ),
    )
    op.create_index(op.f("ix_numbers_account_id"), "numbers", ["account_id"])
    op.create_index(op.f("ix_numbers_profile_id"), "numbers", ["profile_id"])
    directory_version = op.create_table(
        "directory_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_directory_version")),
        sa.CheckConstraint("id = 1", name=op.f("ck_directory_version_single_row")),
    )
    op.bulk_insert(directory_version, [{"id": 1, "version": 0}])


def downgrade() -> None:
    op.drop_table("directory_version")
    op.drop_index("ix_numbers_profile_id", table_name="numbers")
    op.drop_index("ix_numbers_account_id", table_name="numbers")
    op.drop_table("numbers")
    op.drop_index("ix_profiles_account_id", table_name="profiles")
    op.drop_table("profiles")
    op.drop_table("accounts")
