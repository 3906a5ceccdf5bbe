"""The ``db`` fixture: a fresh, empty database per test, PostgreSQL when one answers.

Which server, in order: ``DATABASE_URL`` if set (its database is only used to create others);
else PostgreSQL on 127.0.0.1:5432 (database ``test``, user ``postgres`` then the current user) if
it answers within a second; else SQLite in ``tmp_path``. Isolation comes from a new database per
test (``CREATE DATABASE``, dropped with ``FORCE`` afterwards), never from cleaning up leftovers.
``sqlite_db`` and ``postgres_db`` pin one engine so migration tests can run on both; ``store``
is ``db`` migrated to head with repositories and a fresh key, for tests that need bots.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import getpass
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from store.crypto import SecretBox
from store.db import mask_url, to_async_url
from store.repo import BotRepository, ChatConfigRepository, UserLinkRepository

PROBE_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class DatabaseForTest:
    """What a test gets: an async SQLAlchemy URL of an empty database, and its kind."""

    url: str
    kind: str  # "postgresql" | "sqlite"
    name: str

    def __repr__(self) -> str:
        return f"DatabaseForTest(kind={self.kind!r}, url={mask_url(self.url)!r})"


@dataclass
class _Probe:
    server: URL | None = None  # maintenance-database URL of a reachable PostgreSQL
    reason: str = ""
    done: bool = False


_PROBE = _Probe()


def _candidates() -> list[URL]:
    env = os.environ.get("DATABASE_URL")
    if env:
        url = make_url(to_async_url(env))
        return [url] if url.get_backend_name() == "postgresql" else []
    users = ["postgres", getpass.getuser()]
    return [
        URL.create(
            "postgresql+asyncpg", username=user, host="127.0.0.1", port=5432, database="test"
        )
        for user in dict.fromkeys(users)
    ]


async def _connect(url: URL):  # type: ignore[no-untyped-def]
    import asyncpg

    return await asyncio.wait_for(
        asyncpg.connect(
            host=url.host or "127.0.0.1",
            port=url.port or 5432,
            user=url.username,
            password=url.password,
            database=url.database or "postgres",
        ),
        PROBE_TIMEOUT_S * 3,
    )


async def _probe_async() -> _Probe:
    if _PROBE.done:
        return _PROBE
    reason = "no PostgreSQL reachable"
    if os.environ.get("DATABASE_URL") and not _candidates():
        reason = "DATABASE_URL is not PostgreSQL"
    for url in _candidates():
        try:
            conn = await asyncio.wait_for(_connect(url), PROBE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
            reason = f"no PostgreSQL reachable ({type(exc).__name__})"
            continue
        await conn.close()
        _PROBE.server = url
        break
    _PROBE.reason = reason
    _PROBE.done = True
    return _PROBE


def _probe_sync() -> _Probe:
    """Probe from a thread: asyncio.run on the main thread would reset its current loop."""
    if not _PROBE.done:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, _probe_async()).result()
    return _PROBE


def pytest_report_header(config: pytest.Config) -> str:
    probe = _probe_sync()
    if probe.server is not None:
        return f"database: postgresql at {probe.server.host}:{probe.server.port} (reachable)"
    return f"database: sqlite ({probe.reason})"


def _sqlite(tmp_path: Path) -> DatabaseForTest:
    path = tmp_path / f"onyxwa-{uuid.uuid4().hex[:8]}.sqlite3"
    return DatabaseForTest(url=f"sqlite+aiosqlite:///{path}", kind="sqlite", name=path.name)


async def _postgres(server: URL) -> AsyncIterator[DatabaseForTest]:
    name = f"onyxwa_test_{uuid.uuid4().hex[:16]}"
    admin = await _connect(server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        yield DatabaseForTest(url=url, kind="postgresql", name=name)
    finally:
        admin = await _connect(server)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> DatabaseForTest:
    """A fresh SQLite database file in the test's tmp_path."""
    return _sqlite(tmp_path)


@pytest.fixture
async def postgres_db() -> AsyncIterator[DatabaseForTest]:
    """A fresh PostgreSQL database (created and dropped around the test), or a skip."""
    probe = await _probe_async()
    if probe.server is None:
        pytest.skip(f"PostgreSQL not available: {probe.reason} (set DATABASE_URL)")
    async for db in _postgres(probe.server):
        yield db


@pytest.fixture(params=["sqlite", "postgresql"])
async def each_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DatabaseForTest]:
    """Parametrizes a test over both engines (the PostgreSQL case skips when none answers)."""
    if request.param == "sqlite":
        yield _sqlite(tmp_path)
        return
    probe = await _probe_async()
    if probe.server is None:
        pytest.skip(f"PostgreSQL not available: {probe.reason} (set DATABASE_URL)")
    async for database in _postgres(probe.server):
        yield database


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[DatabaseForTest]:
    """A fresh database: PostgreSQL when reachable, else SQLite."""
    probe = await _probe_async()
    if probe.server is None:
        yield _sqlite(tmp_path)
        return
    async for database in _postgres(probe.server):
        yield database


@dataclass
class StoreForTest:
    """A migrated database with its engine, session factory, key and repositories."""

    db: DatabaseForTest
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    key: str
    box: SecretBox
    bots: BotRepository
    chats: ChatConfigRepository
    users: UserLinkRepository


async def _make_store(db: DatabaseForTest) -> AsyncIterator[StoreForTest]:
    from cryptography.fernet import Fernet

    from store.db import make_engine, session_factory
    from store.migrate import upgrade

    upgrade(db.url)
    engine = make_engine(db.url)
    sessions = session_factory(engine)
    key = Fernet.generate_key().decode()
    box = SecretBox(key)
    try:
        yield StoreForTest(
            db=db,
            engine=engine,
            sessions=sessions,
            key=key,
            box=box,
            bots=BotRepository(sessions, box),
            chats=ChatConfigRepository(sessions),
            users=UserLinkRepository(sessions),
        )
    finally:
        await engine.dispose()


@pytest.fixture
async def store(db: DatabaseForTest) -> AsyncIterator[StoreForTest]:
    """``db`` migrated to head, with repositories ready (a fresh Fernet key per test)."""
    async for ready in _make_store(db):
        yield ready


@pytest.fixture
async def each_store(each_db: DatabaseForTest) -> AsyncIterator[StoreForTest]:
    """Like ``store``, parametrized over SQLite and PostgreSQL."""
    async for ready in _make_store(each_db):
        yield ready
