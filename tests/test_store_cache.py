"""BotDirectory: no query in steady state, one cheap query per TTL, reloads on a version bump."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import event

from store.cache import BotDirectory


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class QueryCounter:
    """Counts SQL statements sent over an engine (a real engine event, not a mock)."""

    def __init__(self, engine) -> None:
        self.statements: list[str] = []
        self._engine = engine.sync_engine
        event.listen(self._engine, "before_cursor_execute", self._on)

    def _on(self, _conn, _cursor, statement, *_args) -> None:
        self.statements.append(statement)

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._on)


async def _bot(store, verify: str):
    return await store.bots.add_bot(
        tenant_id="cache",
        phone_number_id=str(uuid.uuid4().int)[:12],
        access_token="a",
        app_secret="s",
        verify_token=verify,
    )


async def test_steady_state_does_no_query_and_sees_changes(store) -> None:
    one = await _bot(store, "v1")
    clock = Clock()
    directory = BotDirectory(store.bots, ttl_s=30, clock=clock)
    assert await directory.refresh(force=True)
    counter = QueryCounter(store.engine)
    try:
        for _ in range(200):
            got = await directory.get(one.phone_number_id)
            assert got is not None and got.app_secret == "s"
            assert await directory.get("000") is None  # unknown numbers: no query either
        assert await directory.verify_tokens() == {"v1"}
        assert counter.statements == []

        clock.now += 31  # TTL passed, nothing changed: one cheap version query, no reload
        assert await directory.get(one.phone_number_id) is not None
        assert len(counter.statements) == 1
        assert "wa_config_version" in counter.statements[0]
        assert directory.reloads == 1

        two = await _bot(store, "v2")  # bumps the config version
        await store.bots.set_enabled(one.phone_number_id, False)
        counter.statements.clear()
        assert await directory.get(two.phone_number_id) is None  # within TTL: stale by design
        assert counter.statements == []
        clock.now += 31
        assert await directory.get(two.phone_number_id) is not None
        assert await directory.get(one.phone_number_id) is None  # disabled
        assert await directory.verify_tokens() == {"v2"}
        assert directory.reloads == 2
        assert directory.version == await store.bots.config_version()
    finally:
        counter.close()


async def test_an_unknown_number_rechecks_the_version_at_most_once_a_second(store) -> None:
    """A bot added a moment ago is routed within a second, not a TTL; junk numbers cost at
    most one primary-key read per second."""
    clock = Clock()
    directory = BotDirectory(store.bots, ttl_s=30, clock=clock)
    await directory.refresh(force=True)
    new = await _bot(store, "m1")
    counter = QueryCounter(store.engine)
    try:
        assert await directory.get(new.phone_number_id) is None  # checked 0 s ago: no query
        assert counter.statements == []
        clock.now += 1.5
        assert await directory.get(new.phone_number_id) is not None  # one check, one reload
        assert directory.reloads == 2
        counter.statements.clear()
        for _ in range(100):  # junk within the same second: no query at all
            assert await directory.get("999") is None
        assert counter.statements == []
        clock.now += 1.5
        assert await directory.get("999") is None
        assert len(counter.statements) == 1 and "wa_config_version" in counter.statements[0]
    finally:
        counter.close()


async def test_ttl_zero_checks_every_time_but_reloads_only_on_change(store) -> None:
    await _bot(store, "z1")
    directory = BotDirectory(store.bots, ttl_s=0)
    await directory.refresh()
    counter = QueryCounter(store.engine)
    try:
        await directory.verify_tokens()
        await directory.verify_tokens()
        assert len(counter.statements) == 2 and directory.reloads == 1
        await _bot(store, "z2")
        assert await directory.verify_tokens() == {"z1", "z2"}
        assert directory.reloads == 2
    finally:
        counter.close()


async def test_database_down_keeps_serving_the_last_snapshot(store) -> None:
    one = await _bot(store, "d1")
    clock = Clock()
    directory = BotDirectory(store.bots, ttl_s=5, clock=clock)
    await directory.refresh()

    async def broken() -> int:
        raise ConnectionError("database went away")

    store.bots.config_version = broken  # the instance attribute shadows the method
    clock.now += 6
    assert await directory.get(one.phone_number_id) is not None
    cold = BotDirectory(store.bots, ttl_s=5, clock=clock)
    store.bots.snapshot = broken
    with pytest.raises(ConnectionError):  # nothing to fall back on: the caller must know
        await cold.get(one.phone_number_id)
