"""The skip guard's decisions on a real Faust app's assignment signal.

The end-to-end proof is the chaos ``rebalance`` scenario (tests/test_chaos.py runs it): without
the guard, about one run in four lost questions to records skipped across a rebalance. Here:
when it seeks, where to, and when it must not (a partition that was away and came back).
"""

from __future__ import annotations

from dataclasses import dataclass

import faust
import pytest
from faust.types import TP

from onyx_wa.metrics import SKIPPED_RECORDS
from streams.skipguard import SkipGuard

P0 = TP("wa.inbound", 0)
P1 = TP("wa.inbound", 1)


@dataclass
class Message:
    tp: TP
    offset: int


@pytest.fixture
def app_and_seeks(monkeypatch):
    app = faust.App("skipguard-test", broker="kafka://127.0.0.1:1")
    seeks: list[tuple[TP, int]] = []

    async def seek(tp: TP, offset: int) -> None:
        seeks.append((tp, offset))

    monkeypatch.setattr(app.consumer, "seek", seek)
    return app, seeks


async def offsets(guard: SkipGuard, tp: TP, *values: int) -> list[bool]:
    return [await guard.check(Message(tp, v)) for v in values]


async def test_a_jump_on_a_kept_partition_seeks_back_to_the_first_missing(app_and_seeks):
    app, seeks = app_and_seeks
    guard = SkipGuard(app, "test-jump")
    before = SKIPPED_RECORDS.labels("test-jump")._value.get()
    await app.on_partitions_assigned.send({P0, P1})
    assert await offsets(guard, P0, 0, 1, 2) == [False, False, False]
    await app.on_partitions_assigned.send({P0})  # a rebalance that kept P0
    assert await offsets(guard, P0, 5) == [True]  # 3 and 4 were skipped
    assert seeks == [(P0, 3)]
    assert SKIPPED_RECORDS.labels("test-jump")._value.get() - before == 2
    # what was already buffered comes first, then the records sought back to: no second seek
    assert await offsets(guard, P0, 6, 3, 4, 5, 6, 7) == [False] * 6
    assert seeks == [(P0, 3)]
    assert await offsets(guard, P0, 9) == [True]  # and checking resumed after the refill
    assert seeks[-1] == (P0, 8)


async def test_a_partition_that_was_away_starts_fresh(app_and_seeks):
    """Another worker consumed it meanwhile: a jump there is legitimate."""
    app, seeks = app_and_seeks
    guard = SkipGuard(app, "test-away")
    await app.on_partitions_assigned.send({P0, P1})
    await offsets(guard, P0, 0, 1)
    await app.on_partitions_assigned.send({P1})
    await app.on_partitions_assigned.send({P0, P1})
    assert await offsets(guard, P0, 40, 41) == [False, False]
    assert seeks == []


async def test_redeliveries_and_other_partitions_are_not_skips(app_and_seeks):
    app, seeks = app_and_seeks
    guard = SkipGuard(app, "test-redelivery")
    await app.on_partitions_assigned.send({P0, P1})
    assert await offsets(guard, P0, 10, 11, 12, 11, 12, 13) == [False] * 6  # a seek by Faust
    assert await offsets(guard, P1, 100, 101) == [False, False]  # first record of P1
    assert seeks == []
