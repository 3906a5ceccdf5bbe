"""Bot administration from the shell (``onyx-wa bots ...``), on top of the store.

Why a module and not code in the CLI: the demo, tests and the admin API add bots the same way,
and this is where the engine, the encryption key and the repository are wired together.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from onyx_wa.runtime import StartupError
from onyx_wa.settings import Settings


@asynccontextmanager
async def bot_repository(settings: Settings) -> AsyncIterator[Any]:
    """A BotRepository on a checked, migrated-or-not database; the engine is disposed after."""
    from store.crypto import SecretBox, resolve_encryption_key
    from store.db import check_database, make_engine, session_factory
    from store.repo import BotRepository

    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    await check_database(settings.sqlalchemy_url)
    engine = make_engine(settings.sqlalchemy_url)
    try:
        yield BotRepository(session_factory(engine), SecretBox(resolve_encryption_key(settings)))
    finally:
        await engine.dispose()


async def _ensure_schema(settings: Settings) -> None:
    import asyncio

    from store.migrate import current, head

    rev = await asyncio.to_thread(current, settings.sqlalchemy_url)
    if rev != head():
        raise StartupError("the database is not migrated: run `onyx-wa db upgrade` first")


async def add_bot(settings: Settings, **fields: Any) -> dict[str, Any]:
    """Add a bot; duplicates and invalid values become one-line errors."""
    from store.repo import DuplicateError

    await _ensure_schema_if_possible(settings)
    async with bot_repository(settings) as repo:
        try:
            summary = await repo.add_bot(**fields)
        except DuplicateError as exc:
            raise StartupError(str(exc)) from None
        except ValueError as exc:
            raise StartupError(f"invalid bot: {exc}") from None
    return summary.to_dict()


async def list_bots(settings: Settings, tenant_id: str | None = None) -> list[dict[str, Any]]:
    await _ensure_schema_if_possible(settings)
    async with bot_repository(settings) as repo:
        return [bot.to_dict() for bot in await repo.list_bots(tenant_id)]


async def _ensure_schema_if_possible(settings: Settings) -> None:
    from store.db import check_database

    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    await check_database(settings.sqlalchemy_url)
    await _ensure_schema(settings)
