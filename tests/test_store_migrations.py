"""Migrations: up, down to base, up again, and no drift from the models (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from store.db import make_engine
from store.migrate import current, downgrade, head, migrations_dir, upgrade
from store.models import Base

TABLES = {
    "wa_bot",
    "wa_chat_config",
    "wa_user_link",
    "wa_config_version",
    "wa_tenant_usage",
    "wa_audit_log",
    "wa_question_fact",
    "wa_feedback_fact",
    "wa_forgotten_user",
}
LATEST = "0004"


async def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def _drift(url: str) -> list:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda c: compare_metadata(
                    MigrationContext.configure(
                        c, opts={"compare_type": True, "compare_server_default": False}
                    ),
                    Base.metadata,
                )
            )
    finally:
        await engine.dispose()


async def test_upgrade_downgrade_upgrade(each_db) -> None:
    db = each_db
    assert current(db.url) is None
    upgrade(db.url)  # called from a running loop: runs in a thread
    assert current(db.url) == head() == LATEST
    assert TABLES <= await _tables(db.url)
    upgrade(db.url)  # idempotent at head
    downgrade(db.url, "base")
    assert current(db.url) is None
    assert not (await _tables(db.url) & TABLES)
    upgrade(db.url, "head")
    assert current(db.url) == LATEST
    assert TABLES <= await _tables(db.url)


async def test_no_drift_between_models_and_migrations(each_db) -> None:
    db = each_db
    upgrade(db.url)
    assert await _drift(db.url) == []


async def test_drift_check_can_fail(sqlite_db) -> None:
    """The drift comparison does notice a missing table (so the test above can fail)."""
    upgrade(sqlite_db.url)
    engine = make_engine(sqlite_db.url)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("DROP TABLE wa_user_link")
    finally:
        await engine.dispose()
    diffs = await _drift(sqlite_db.url)
    assert any(d[0] == "add_table" and d[1].name == "wa_user_link" for d in diffs)


def test_migrate_outside_event_loop(tmp_path) -> None:
    """The CLI calls these synchronously, with no loop running."""
    url = f"sqlite:///{tmp_path / 'sync.sqlite3'}"  # plain URL: upgraded to aiosqlite
    upgrade(url)
    assert current(url) == LATEST
    downgrade(url, "base")
    assert current(url) is None


def test_migrations_found_through_package_not_cwd(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert (migrations_dir() / "env.py").is_file()
    url = f"sqlite+aiosqlite:///{tmp_path / 'cwd.sqlite3'}"
    upgrade(url)
    assert current(url) == LATEST


def test_unknown_revision_fails_clearly(tmp_path) -> None:
    from alembic.util.exc import CommandError

    with pytest.raises(CommandError, match="nope"):
        upgrade(f"sqlite+aiosqlite:///{tmp_path / 'x.sqlite3'}", "nope")
