"""Workloads, their labels, events and idempotency keys.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from corral.store.migrations import columns

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workloads",
        sa.Column("id", columns.id_text(), primary_key=True),
        sa.Column("name", sa.Text),
        sa.Column("command", columns.json_text(), nullable=False),  # JSON list
        sa.Column("env", columns.json_text(), nullable=False),  # JSON object
        sa.Column("cwd", sa.Text),
        sa.Column("cpus", sa.Float, nullable=False),
        sa.Column("memory_mb", sa.BigInteger, nullable=False),
        sa.Column("gpus", sa.Integer, nullable=False),
        # JSON object, also in workload_labels
        sa.Column("labels", columns.json_text(), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("timeout_seconds", sa.Float),
        # Changed only by Store.update_workload_status.
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("exit_code", sa.Integer),
        sa.Column("signal", sa.String(16)),
        sa.Column("reason", sa.Text),
        sa.Column("created_at", columns.timestamp(), nullable=False),
        sa.Column("updated_at", columns.timestamp(), nullable=False),
        sa.Column("started_at", columns.timestamp()),
        sa.Column("finished_at", columns.timestamp()),
    )
    op.create_index("ix_workloads_status_id", "workloads", ["status", "id"])
    op.create_table(
        "workload_labels",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, primary_key=True),
        sa.Column(
            "workload_id",
            columns.id_text(),
            sa.ForeignKey("workloads.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "events",
        sa.Column("id", columns.serial_id(), primary_key=True, autoincrement=True),
        sa.Column(
            "workload_id",
            columns.id_text(),
            sa.ForeignKey("workloads.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("from_status", sa.String(16)),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("at", columns.timestamp(), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("actor", sa.Text),
        sa.UniqueConstraint("workload_id", "seq", name="uq_events_workload_seq"),
    )
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


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("events")
    op.drop_table("workload_labels")
    op.drop_index("ix_workloads_status_id", table_name="workloads")
    op.drop_table("workloads")
