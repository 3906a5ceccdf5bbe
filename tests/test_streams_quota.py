"""Tenant quotas: exact per window across workers, tenants independent, windows roll over.

Runs on SQLite and (when reachable) PostgreSQL; "workers" are independent TenantQuota objects
sharing the database, as separate processes do.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from store.models import TenantUsage
from streams.quota import TenantQuota, lease_block

T0 = 1_700_000_000_000 - 1_700_000_000_000 % 86_400_000 + 3_600_000  # 01:00 UTC on a day


async def _grants(quota: TenantQuota, tenant: str, n: int, now_ms: int, **limits: int) -> int:
    return sum([await quota.allow(tenant, now_ms, **limits) for _ in range(n)])


async def test_minute_limit_is_exact_across_workers(each_store) -> None:
    workers = [TenantQuota(each_store.sessions) for _ in range(3)]
    limits = {"per_minute": 100, "per_day": 10_000}
    results = await asyncio.gather(*(_grants(w, "acme", 60, T0, **limits) for w in workers))
    # 180 asked: never over the limit; at most one unused lease per worker at the end
    assert 100 - 3 * lease_block(100) <= sum(results) <= 100
    async with each_store.sessions() as session:
        used = (
            await session.scalars(
                select(TenantUsage.used).where(
                    TenantUsage.tenant_id == "acme", TenantUsage.window == "minute"
                )
            )
        ).all()
    assert used == [100]


async def test_next_minute_gets_a_fresh_budget_but_the_day_limit_holds(each_store) -> None:
    quota = TenantQuota(each_store.sessions)
    limits = {"per_minute": 5, "per_day": 12}
    assert await _grants(quota, "acme", 10, T0, **limits) == 5
    assert await quota.over_limit("acme", T0, **limits) == "minute"
    assert await _grants(quota, "acme", 10, T0 + 60_000, **limits) == 5
    assert await _grants(quota, "acme", 10, T0 + 120_000, **limits) == 2
    assert await quota.over_limit("acme", T0 + 180_000, **limits) == "day"
    # the next day starts over
    assert await quota.allow("acme", T0 + 86_400_000, **limits)


async def test_tenants_do_not_share_budgets(each_store) -> None:
    quota = TenantQuota(each_store.sessions)
    limits = {"per_minute": 3, "per_day": 100}
    assert await _grants(quota, "a", 5, T0, **limits) == 3
    assert await _grants(quota, "b", 5, T0, **limits) == 3


async def test_a_rejected_question_takes_nothing_from_the_other_window(each_store) -> None:
    quota = TenantQuota(each_store.sessions)
    # day first spent: minute budget is untouched by the rejections
    assert await _grants(quota, "acme", 3, T0, per_minute=10, per_day=2) == 2
    async with each_store.sessions() as session:
        rows = {
            r.window: r.used
            for r in (
                await session.scalars(select(TenantUsage).where(TenantUsage.tenant_id == "acme"))
            ).all()
        }
    assert rows["day"] == 2
    assert rows["minute"] <= lease_block(10) + 2


def test_lease_block_scales_with_the_limit() -> None:
    assert lease_block(1) == 1
    assert lease_block(600) == 12
    assert lease_block(50_000) == 1000
    assert lease_block(10**9) == 1000  # capped: a crash wastes at most one block


async def test_concurrent_questions_in_one_worker_never_overspend(each_store) -> None:
    """Questions of one tenant asked at once: the unlocked fast path (leases in hand) and the
    locked path that leases more interleave, and the limit still holds exactly."""
    quota = TenantQuota(each_store.sessions)
    limits = {"per_minute": 250, "per_day": 400}
    granted = await asyncio.gather(*(quota.allow("acme", T0, **limits) for _ in range(600)))
    assert sum(granted) == 250  # one worker: every leased unit is used before it is refused
    later = await asyncio.gather(*(quota.allow("acme", T0 + 60_000, **limits) for _ in range(600)))
    assert sum(later) == 150  # the day's 400 spent over two minutes
