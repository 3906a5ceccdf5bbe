"""Per-tenant question quotas (per minute and per day), exact across worker processes.

Why the database and leases: a tenant's chats are spread over every partition, so no single
Faust table owner sees all of a tenant's questions. Counting in the configuration database gives
one shared number per window without a new service, and leasing small blocks of the budget
(one conditional ``UPDATE`` per block, not per question) keeps the database off the hot path.
The limit is never exceeded; at worst ``block × workers`` questions of a window go unused when a
window ends with leases outstanding.

A lost lease (crash) only wastes budget, never grants extra. Quotas are admission control at the
moment a question arrives, so a state rebuild by replay does not re-apply them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import update

from store.models import TenantUsage

WINDOWS = {"minute": 60, "day": 86_400}


def lease_block(limit: int) -> int:
    """Units taken per database round trip: ~2% of the window's limit, between 1 and 1,000."""
    return max(1, min(1000, limit // 50))


@dataclass
class TenantQuota:
    """``allow(tenant, now_ms, per_minute=, per_day=)`` → False when the tenant is over a limit."""

    sessions: Any  # async_sessionmaker
    _leases: dict[tuple[str, str, int], int] = field(default_factory=dict)
    _exhausted: set[tuple[str, str, int]] = field(default_factory=set)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def allow(self, tenant_id: str, now_ms: int, *, per_minute: int, per_day: int) -> bool:
        """Take one question from both windows; False (and nothing taken) if either is spent."""
        spent = await self.over_limit(tenant_id, now_ms, per_minute=per_minute, per_day=per_day)
        return spent is None

    async def over_limit(
        self, tenant_id: str, now_ms: int, *, per_minute: int, per_day: int
    ) -> str | None:
        """Like :meth:`allow`, but names the spent window ("minute" or "day"), None if allowed."""
        now_s = now_ms // 1000
        windows = [
            ((tenant_id, window, now_s - now_s % seconds), limit)
            for (window, seconds), limit in zip(WINDOWS.items(), (per_minute, per_day), strict=True)
        ]
        leases = self._leases
        if all(leases.get(key, 0) > 0 for key, _ in windows):
            # the common case, without the lock: nothing is awaited between the check and the
            # take, and the locked path below awaits only while one of these leases is empty
            for key, _ in windows:
                leases[key] -= 1
            return None
        lock = self._locks.get(tenant_id)
        if lock is None:
            lock = self._locks[tenant_id] = asyncio.Lock()
        async with lock:
            self._forget_old_windows(now_s)
            for (tenant, window, start), limit in windows:
                if not await self._ensure_lease(tenant, window, start, limit):
                    return window
            for key, _ in windows:
                leases[key] -= 1
            return None

    async def _ensure_lease(self, tenant: str, window: str, start: int, limit: int) -> bool:
        key = (tenant, window, start)
        if self._leases.get(key, 0) > 0:
            return True
        if key in self._exhausted:
            return False
        granted = await self._lease(tenant, window, start, limit)
        if granted == 0:
            self._exhausted.add(key)
            return False
        self._leases[key] = self._leases.get(key, 0) + granted
        return True

    async def _lease(self, tenant: str, window: str, start: int, limit: int) -> int:
        """Atomically add up to a block to the window's count; returns how many were granted."""
        row = TenantUsage.__table__
        where = (row.c.tenant_id == tenant) & (row.c.window == window)
        where &= row.c.window_start == start
        async with self.sessions() as session, session.begin():
            # one writing statement first (no read-then-write upgrade: SQLite would answer
            # "database is locked" to concurrent workers instead of waiting)
            await session.execute(_insert_window(session, tenant, window, start))
            for size in dict.fromkeys((lease_block(limit), 1)):
                result = await session.execute(
                    update(row)
                    .where(where & (row.c.used + size <= limit))
                    .values(used=row.c.used + size)
                )
                if result.rowcount:
                    return size
        return 0

    def _forget_old_windows(self, now_s: int) -> None:
        """Drop leases of windows that ended (they are memory, not budget)."""
        for bucket in (self._leases, self._exhausted):
            for key in [k for k in bucket if k[2] + WINDOWS[k[1]] <= now_s]:
                if isinstance(bucket, dict):
                    del bucket[key]
                else:
                    bucket.discard(key)

    async def aclose(self) -> None:
        return None


def _insert_window(session: Any, tenant: str, window: str, start: int) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING`` for the window's row, in the session's dialect."""
    if session.bind.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    values = {"tenant_id": tenant, "window": window, "window_start": start, "used": 0}
    return insert(TenantUsage.__table__).values(**values).on_conflict_do_nothing()
