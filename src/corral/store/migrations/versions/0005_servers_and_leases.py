"""Several servers on one database: who they are, who schedules, shared settings.

``servers``: one row per server name (``instance`` changes with every process),
``last_seen`` refreshed by the database clock. ``leases``: one row, ``scheduler``,
created expired (epoch 0); taking it bumps the epoch, the fence of every claim.
``meta``: one value per key for the whole database (the Ray namespace).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from corral.store.migrations.columns import json_text, timestamp

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TIME = timestamp()
JSON = json_text()


def upgrade() -> None:
    op.create_table(
        "servers",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("instance", sa.Text, nullable=False),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("url", sa.Text),
        sa.Column("capacity", JSON),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("last_seen", TIME, nullable=False),
    )
    leases = op.create_table(
        "leases",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("holder", sa.Text),
        sa.Column("instance", sa.Text),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("renewed_at", TIME),
        sa.Column("expires_at", TIME, nullable=False),
    )
    long_ago = "1970-01-01T00:00:00.000000Z"
    if op.get_bind().dialect.name == "postgresql":
        op.execute("INSERT INTO leases (name, epoch, expires_at) VALUES ('scheduler', 0, 'epoch')")
    else:
        op.bulk_insert(leases, [{"name": "scheduler", "epoch": 0, "expires_at": long_ago}])
    op.create_table(
        "meta",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("meta")
    op.drop_table("leases")
    op.drop_table("servers")
