"""Token bucket accuracy and pacing (real time, short windows)."""

from __future__ import annotations

import asyncio
import time

import pytest

from egress.throttle import RecipientPacer, TokenBucket


async def test_bucket_holds_the_rate_within_five_percent():
    """Never faster than the rate (Meta's limit); at most 5% slower even on a busy machine,
    because each caller reserves an absolute slot and sleep overshoot does not accumulate."""
    bucket = TokenBucket(rate=400, burst=1)
    started = time.monotonic()
    await asyncio.gather(*(bucket.acquire() for _ in range(801)))
    achieved = 800 / (time.monotonic() - started)
    assert achieved <= 400 * 1.005
    assert achieved >= 400 * 0.95


async def test_burst_is_served_at_once_then_paced():
    bucket = TokenBucket(rate=10, burst=5)
    waits = [await bucket.acquire() for _ in range(6)]
    assert max(waits[:5]) < 0.01
    assert waits[5] == pytest.approx(0.1, abs=0.03)


def test_try_acquire_does_not_block():
    bucket = TokenBucket(rate=1, burst=2)
    assert bucket.try_acquire() and bucket.try_acquire()
    assert not bucket.try_acquire()


def test_rate_must_be_positive():
    with pytest.raises(ValueError):
        TokenBucket(rate=0)


async def test_pacer_is_per_recipient():
    pacer = RecipientPacer(per_message_s=10, burst=1)
    assert await pacer.acquire("a") < 0.01
    assert await pacer.acquire("b") < 0.01  # another recipient is not slowed
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(pacer.acquire("a"), timeout=0.2)
