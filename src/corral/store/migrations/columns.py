"""Column types of the migrations, per dialect: one schema serves SQLite and PostgreSQL.

SQLite keeps what it always had (RFC 3339 text, JSON text). On PostgreSQL:

- ``timestamp()`` is ``timestamptz``; the store reads it back as the same RFC 3339
  string SQLite stores (``corral.store.postgres``);
- ``json_text()`` is ``jsonb``;
- ``id_text()`` (every workload, batch and key id) is ``varchar(26) COLLATE "C"``:
  keyset pagination and id-prefix ranges compare ids byte by byte (``id < cursor``,
  ``id < prefix[:-1] + chr(ord(prefix[-1]) + 1)``, which may end in ``:`` or ``{``),
  and a database created with a linguistic collation (``en_US.UTF-8``) would order
  them otherwise; as the column's own collation, its indexes serve those ranges;
- ``serial_id()`` is a ``bigint`` identity (an ``INTEGER PRIMARY KEY`` on SQLite,
  which is 64 bits there).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


def timestamp() -> sa.types.TypeEngine[str]:
    return sa.String(32).with_variant(postgresql.TIMESTAMP(timezone=True), "postgresql")


def json_text() -> sa.types.TypeEngine[str]:
    return sa.Text().with_variant(postgresql.JSONB(), "postgresql")


def id_text() -> sa.types.TypeEngine[str]:
    return sa.String(26).with_variant(sa.String(26, collation="C"), "postgresql")


def serial_id() -> sa.types.TypeEngine[int]:
    return sa.Integer().with_variant(sa.BigInteger(), "postgresql")
