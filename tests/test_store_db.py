"""Engines and the reachability check: SQLite pragmas, one-line errors with masked passwords."""

from __future__ import annotations

import socket

import pytest

from store.db import DatabaseUnavailable, check_database, make_engine, mask_url, to_async_url


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_unreachable_postgres_is_one_line_with_masked_password() -> None:
    port = _closed_port()
    url = f"postgresql://app:s3cretpw@127.0.0.1:{port}/onyx"
    with pytest.raises(DatabaseUnavailable) as info:
        await check_database(url, timeout_s=3)
    message = str(info.value)
    assert "\n" not in message
    assert "s3cretpw" not in message
    assert f"127.0.0.1:{port}" in message and "***" in message
    assert "DATABASE_URL" in message


async def test_sqlite_in_missing_directory_is_unavailable(tmp_path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'db.sqlite3'}"
    with pytest.raises(DatabaseUnavailable, match="directory exists"):
        await check_database(url)


async def test_reachable_database_passes(db) -> None:
    await check_database(db.url)


async def test_sqlite_engine_uses_wal_and_foreign_keys(sqlite_db) -> None:
    engine = make_engine(sqlite_db.url)
    try:
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 5000
    finally:
        await engine.dispose()


def test_url_normalisation_and_masking() -> None:
    assert to_async_url("postgres://u@h/d") == "postgresql+asyncpg://u@h/d"
    assert to_async_url("postgresql://u@h/d") == "postgresql+asyncpg://u@h/d"
    assert to_async_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert to_async_url("postgresql+asyncpg://u@h/d") == "postgresql+asyncpg://u@h/d"
    assert "pw" not in mask_url("postgresql+asyncpg://u:pw@h/d")
    assert mask_url("::not a url::") == "<unparsable database URL>"


async def test_db_fixture_gives_a_fresh_empty_database(db, each_db) -> None:
    from sqlalchemy import inspect

    assert db.url != each_db.url and db.kind in ("postgresql", "sqlite")
    for database in (db, each_db):
        engine = make_engine(database.url)
        try:
            async with engine.connect() as conn:
                assert await conn.run_sync(lambda c: inspect(c).get_table_names()) == []
        finally:
            await engine.dispose()
