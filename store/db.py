"""Async engines and sessions for SQLite (embedded default) and PostgreSQL (production).

Why here: SQLite needs per-connection pragmas (WAL for concurrent readers while the admin writes,
foreign keys, a busy timeout) and PostgreSQL needs pool hygiene (pre-ping, recycle); every
process gets the same engine shape from one function.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

SQLITE_BUSY_TIMEOUT_MS = 5000


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached; the message is one line naming the URL and the fix."""


def is_transient_db_error(exc: BaseException) -> bool:
    """A failure of the database, not of the request: worth retrying the same work later.

    SQLAlchemy's ``OperationalError`` (connection refused or lost, the server shutting down, a
    locked SQLite file) and ``InterfaceError`` (a closed connection), timeouts and socket errors.
    Errors about the statement or the data (``IntegrityError``, ``ProgrammingError``) are not.
    """
    from sqlalchemy.exc import InterfaceError, OperationalError

    return isinstance(
        exc,
        OperationalError | InterfaceError | DatabaseUnavailable | ConnectionError | TimeoutError,
    )


def to_async_url(url: str) -> str:
    """Normalise ``postgres://``, ``postgresql://`` and ``sqlite://`` to their async drivers."""
    for plain, driver in (
        ("postgres://", "postgresql+asyncpg://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def mask_url(url: str | URL) -> str:
    """The URL with its password hidden, for logs and error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL must still never leak a password
        return "<unparsable database URL>"


def _is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Per-connection SQLite settings; WAL lets readers proceed while a writer commits."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def make_engine(url: str, *, null_pool: bool = False, echo: bool = False) -> AsyncEngine:
    """An async engine for ``url``; ``null_pool`` for one-shot tools such as migrations."""
    parsed = make_url(to_async_url(url))
    kwargs: dict[str, Any] = {"echo": echo}
    if null_pool:
        kwargs["poolclass"] = NullPool
    elif not _is_sqlite(parsed):
        kwargs.update(pool_size=5, max_overflow=10, pool_pre_ping=True, pool_recycle=1800)
    if _is_sqlite(parsed):
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    engine = create_async_engine(parsed, **kwargs)
    if _is_sqlite(parsed):
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions whose flushes bump the config version when bots or chat configs change."""
    from store.models import ConfigSession

    return async_sessionmaker(engine, expire_on_commit=False, sync_session_class=ConfigSession)


def _fix_hint(url: URL) -> str:
    if _is_sqlite(url):
        return "check that the directory exists and is writable, or set DATABASE_URL"
    return "start the database server or point DATABASE_URL at a reachable one"


async def check_database(url: str, timeout_s: float = 5.0) -> None:
    """Connect once and run ``SELECT 1``; raise :class:`DatabaseUnavailable` on any failure."""
    parsed = make_url(to_async_url(url))
    engine = make_engine(str(parsed.render_as_string(hide_password=False)), null_pool=True)
    try:
        async with asyncio.timeout(timeout_s):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    except TimeoutError:
        raise DatabaseUnavailable(
            f"database at {mask_url(parsed)} did not answer within {timeout_s:g} s: "
            f"{_fix_hint(parsed)}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - every driver error becomes one clear line
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split()) or type(exc).__name__
        if parsed.password:
            reason = reason.replace(parsed.password, "***")
        raise DatabaseUnavailable(
            f"database at {mask_url(parsed)} is unreachable ({reason[:200]}): {_fix_hint(parsed)}"
        ) from None
    finally:
        await engine.dispose()
