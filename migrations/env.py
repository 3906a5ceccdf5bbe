"""Alembic environment: async engines, URL from the caller or onyx_wa settings.

Why async: the project only ships async drivers (aiosqlite, asyncpg), so migrations run through
``AsyncConnection.run_sync``. ``render_as_batch`` lets SQLite alter tables by copy-and-move.
The URL comes, in order, from ``config.attributes["url"]`` (store.migrate), ``-x url=...``
(the alembic command line), then ``onyx_wa.settings`` (DATABASE_URL or the embedded SQLite).
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from store.db import make_engine, mask_url, to_async_url
from store.models import Base

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        from onyx_wa.settings import load_settings

        url = load_settings().sqlalchemy_url
    return to_async_url(url)


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
        **kwargs,  # type: ignore[arg-type]
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade --sql``) without connecting."""
    _configure(url=database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = make_engine(url, null_pool=True)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # a caller lent us a sync connection (e.g. run_sync)
        _run_sync(connection)
        return
    url = database_url()
    context.config.attributes.setdefault("masked_url", mask_url(url))
    asyncio.run(_run_async(url))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
