"""Batches, arrays and dependencies.

Each workload gets what it depends on (``depends_on``, a JSON list of ids, read
with the row as ``labels`` is), how (``dependency_type``), its index in an array
(``array_index``), the batch request that created it (``batch_id``) and that
batch's limit of workloads running at once (``max_running``). The dependencies are
also rows of ``workload_dependencies``, indexed both ways: by workload (its primary
key) and by what it depends on.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from corral.store.migrations import columns

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workloads") as batch:
        # ALTER TABLE ... ADD COLUMN: no table rebuild, whatever the table's size.
        batch.add_column(
            sa.Column("depends_on", columns.json_text(), nullable=False, server_default="[]")
        )
        batch.add_column(
            sa.Column("dependency_type", sa.Text, nullable=False, server_default="afterok")
        )
        batch.add_column(sa.Column("array_index", sa.Integer))
        batch.add_column(sa.Column("batch_id", columns.id_text()))
        batch.add_column(sa.Column("max_running", sa.Integer))
    # Partial: a workload outside a batch (the usual create) does not touch it.
    op.create_index(
        "ix_workloads_batch_id",
        "workloads",
        ["batch_id", "id"],
        sqlite_where=sa.text("batch_id IS NOT NULL"),
        postgresql_where=sa.text("batch_id IS NOT NULL"),
    )
    op.create_table(
        "workload_dependencies",
        sa.Column(
            "workload_id",
            columns.id_text(),
            sa.ForeignKey("workloads.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "depends_on",
            columns.id_text(),
            sa.ForeignKey("workloads.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_workload_dependencies_depends_on", "workload_dependencies", ["depends_on"])


def downgrade() -> None:
    op.drop_index("ix_workload_dependencies_depends_on", table_name="workload_dependencies")
    op.drop_table("workload_dependencies")
    op.drop_index("ix_workloads_batch_id", table_name="workloads")
    with op.batch_alter_table("workloads") as batch:
        batch.drop_column("max_running")
        batch.drop_column("batch_id")
        batch.drop_column("array_index")
        batch.drop_column("dependency_type")
        batch.drop_column("depends_on")
