"""Where a workload runs.

``node`` names the machine a running (or ended) workload's process runs on: the
server's host for the local executor, the Ray node id for the Ray executor. It is
set by the claim pending→running and kept afterwards; NULL for a workload that
never ran and for rows from before this revision.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workloads") as batch:
        batch.add_column(sa.Column("node", sa.Text))  # ADD COLUMN: no table rebuild


def downgrade() -> None:
    with op.batch_alter_table("workloads") as batch:
        batch.drop_column("node")
