"""Run Alembic migrations programmatically (``onyx-wa db upgrade``, ``onyx-wa up``, tests).

Why programmatic: no ``alembic.ini`` or working directory to get wrong; the scripts are found
through the installed ``migrations`` package. Why the thread: ``migrations/env.py`` drives the
async engine with ``asyncio.run``, which cannot nest inside a running loop and, on the main thread,
resets the thread's current event loop when done. So the work always runs in a short-lived thread
(this call blocks until it is done): callable from sync code and from inside a running loop alike,
without disturbing the caller's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

import migrations
from store.db import make_engine, to_async_url

T = TypeVar("T")


def migrations_dir() -> Path:
    """The directory holding env.py and versions/, wherever the package is installed."""
    return Path(migrations.__file__).resolve().parent


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url`` without any ini file."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("path_separator", "os")
    config.attributes["url"] = to_async_url(url)
    return config


def _off_loop(func: Callable[[], T]) -> T:
    """Run ``func`` in a fresh thread and return its result (exceptions propagate)."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="alembic") as pool:
        return pool.submit(func).result()


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision`` (idempotent at head)."""
    _off_loop(lambda: command.upgrade(alembic_config(url), revision))


def downgrade(url: str, revision: str) -> None:
    """Migrate the database at ``url`` down to ``revision`` (``base`` drops everything)."""
    _off_loop(lambda: command.downgrade(alembic_config(url), revision))


def head() -> str | None:
    """The newest revision shipped with this code."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current(url: str) -> str | None:
    """The database's revision, or None when it has never been migrated."""

    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async def run() -> str | None:
        engine = make_engine(url, null_pool=True)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(read)
        finally:
            await engine.dispose()

    return _off_loop(lambda: asyncio.run(run()))
