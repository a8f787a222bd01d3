"""Indexes for deleting workloads (retention, docs/operations.md "Retention").

Deleting a workload deletes its rows in every table that references it (``ON DELETE
CASCADE``), which both databases do by looking the workload's id up in each of
them. ``events`` (``uq_events_workload_seq``) and ``workload_dependencies`` (its
primary key, and ``ix_workload_dependencies_depends_on``) have an index that starts
with it; ``workload_labels`` (keyed by label first) and ``idempotency_keys`` (by
owner and key) had none, so each workload deleted scanned both tables whole. These
two indexes make it a probe; they cost a create an index entry per label, and one
per idempotency key.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_workload_labels_workload_id", "workload_labels", ["workload_id"])
    op.create_index("ix_idempotency_keys_workload_id", "idempotency_keys", ["workload_id"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_workload_id", table_name="idempotency_keys")
    op.drop_index("ix_workload_labels_workload_id", table_name="workload_labels")
