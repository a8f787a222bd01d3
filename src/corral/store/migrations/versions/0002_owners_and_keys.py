"""Owners, users and API keys; idempotency keys scoped per owner.

Every workload gets an ``owner``. Workloads stored before keys existed belong to the
first admin: the OS user running the migration, which is the name ``corral serve``
gives the admin key it creates on its first start (``corral.keys.default_admin``).
Idempotency keys are keyed by ``(owner, key)`` and keep the workload's id instead of
a copy of the response (so ``env`` is stored once).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from corral.keys import default_admin
from corral.store.migrations import columns

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    admin = default_admin()
    with op.batch_alter_table("workloads") as batch:
        # ALTER TABLE ... ADD COLUMN: no table rebuild, whatever the table's size.
        batch.add_column(sa.Column("owner", sa.Text, nullable=False, server_default=admin))
    # One index for every list of a user's workloads (without a status filter, a walk
    # per status, merged): a second one, (owner, id), cost each insert ~10 us.
    op.create_index("ix_workloads_owner_status_id", "workloads", ["owner", "status", "id"])
    op.create_table(
        "users",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("unix_user", sa.Text),
        sa.Column("created_at", columns.timestamp(), nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", columns.id_text(), primary_key=True),
        sa.Column("user", sa.Text, sa.ForeignKey("users.name"), nullable=False),
        sa.Column("admin", sa.Boolean, nullable=False),
        sa.Column("key_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("description", sa.Text),
        sa.Column("created_at", columns.timestamp(), nullable=False),
        sa.Column("revoked_at", columns.timestamp()),
    )
    op.rename_table("idempotency_keys", "idempotency_keys_0001")
    if op.get_bind().dialect.name == "postgresql":
        # The renamed table keeps its primary key's index name, which the new table's
        # would take (SQLite has no such name).
        op.execute("ALTER INDEX idempotency_keys_pkey RENAME TO idempotency_keys_0001_pkey")
    op.create_table(
        "idempotency_keys",
        sa.Column("owner", sa.Text, primary_key=True),
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("body_sha256", sa.String(64), nullable=False),
        sa.Column(
            "workload_id",
            columns.id_text(),
            sa.ForeignKey("workloads.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("created_at", columns.timestamp(), nullable=False),
    )
    op.execute(
        sa.text(
            "INSERT INTO idempotency_keys (owner, key, body_sha256, workload_id, created_at)"
            " SELECT :admin, key, body_sha256, workload_id, created_at FROM idempotency_keys_0001"
        ).bindparams(admin=admin)
    )
    op.drop_table("idempotency_keys_0001")


def downgrade() -> None:
    # The 0001 table kept a copy of each response, which is not stored any more: the
    # keys are dropped (a replay after the downgrade creates a new workload).
    op.drop_table("idempotency_keys")
    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("body_sha256", sa.String(64), nullable=False),
        sa.Column(
            "workload_id",
            columns.id_text(),
            sa.ForeignKey("workloads.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("created_at", columns.timestamp(), nullable=False),
    )
    op.drop_table("api_keys")
    op.drop_table("users")
    op.drop_index("ix_workloads_owner_status_id", table_name="workloads")
    # A development build of 0002 also made (owner, id); the rebuild below would fail
    # recreating it without its column.
    op.execute("DROP INDEX IF EXISTS ix_workloads_owner_id")
    with op.batch_alter_table("workloads") as batch:
        batch.drop_column("owner")
