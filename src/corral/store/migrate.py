"""Apply the Alembic migrations in ``store/migrations`` to a database.

Servers call ``upgrade(url)`` on start; it is a no-op when the schema is current.
A PostgreSQL URL (``postgresql://…``, as the store takes it) is handed to SQLAlchemy
with psycopg 3 as its driver (``postgresql+psycopg://…``).
"""

from __future__ import annotations

from pathlib import Path

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def sqlalchemy_url(url: str) -> str:
    """``url`` with the driver SQLAlchemy must use: psycopg 3 for PostgreSQL."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url.removeprefix(scheme)
    return url


def _config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's config is a ConfigParser: a % in the URL (an escaped password) is doubled.
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision``."""
    from alembic import command

    command.upgrade(_config(url), revision)


def upgrade_on(connection: object, revision: str = "head") -> None:
    """Migrate through an open SQLAlchemy ``Connection`` up to ``revision``, inside the
    transaction the caller began (and commits): PostgreSQL's DDL is transactional, so
    a lock taken in it first serialises servers migrating one database at once."""
    from alembic import command

    cfg = _config("")
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


def downgrade(url: str, revision: str) -> None:
    """Migrate the database at ``url`` down to ``revision`` (``base`` drops everything)."""
    from alembic import command

    command.downgrade(_config(url), revision)


def head_revision() -> str:
    """The newest revision shipped with this corral."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_config("sqlite://")).get_current_head()
    assert head is not None
    return str(head)


def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at (None when unmigrated)."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            rev = MigrationContext.configure(conn).get_current_revision()
            return None if rev is None else str(rev)
    finally:
        engine.dispose()
