"""One column says what an API key may do: ``api_keys.role``.

``role`` is ``user``, ``admin`` or ``metrics`` (a scraper's key: ``GET /metrics``
only); it replaces the ``admin`` flag, which the code derives from it (``role =
'admin'``). Existing keys get ``admin`` or ``user`` from their flag. The flag is
dropped rather than kept beside it: a server of an older corral reading a metrics key
as a plain user key would let it submit workloads; without the column its key lookups
fail instead (as they fail closed).

The downgrade brings the flag back from the role; a metrics key, which 0005 cannot
express, is revoked (kept listed, never a user key).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from corral.ids import now_rfc3339

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ROLES = "role IN ('user', 'admin', 'metrics')"


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("role", sa.Text))
    op.execute("UPDATE api_keys SET role = CASE WHEN admin THEN 'admin' ELSE 'user' END")
    # SQLite: the table is rebuilt (a handful of rows); PostgreSQL: ALTERs in place.
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("role", existing_type=sa.Text, nullable=False)
        batch.create_check_constraint("ck_api_keys_role", ROLES)
        batch.drop_column("admin")


def downgrade() -> None:
    revoke = "UPDATE api_keys SET revoked_at = {} WHERE role = 'metrics' AND revoked_at IS NULL"
    if op.get_bind().dialect.name == "postgresql":
        op.execute(revoke.format("now()"))
    else:
        op.execute(sa.text(revoke.format(":now")).bindparams(now=now_rfc3339()))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("admin", sa.Boolean))
    op.execute("UPDATE api_keys SET admin = (role = 'admin')")
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("admin", existing_type=sa.Boolean, nullable=False)
        batch.drop_constraint("ck_api_keys_role", type_="check")
        batch.drop_column("role")
