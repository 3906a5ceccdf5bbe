"""EagerDelivery: the drain loop's ``wait_first`` without tasks, same outcomes as mode's.

The pipeline-level behaviour (every record delivered once per fetch, rebalances, kill -9) is
covered by the streams, chaos and rebalance tests, which all run on this consumer class.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from typing import Any

import pytest
from mode import Service
from mode.utils.locks import Event

from streams.eager_delivery import EagerDelivery


class Drainer(EagerDelivery, Service):
    """A mode service with the consumer's ``suspend_flow`` event, like Faust's Consumer."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = Event()


def _closed_cleanly() -> None:
    """Every coroutine left unstarted was closed (else: 'coroutine ... was never awaited')."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        gc.collect()


async def test_a_callback_that_does_not_suspend_runs_inline() -> None:
    drainer = Drainer()
    caller = asyncio.current_task()
    ran_in: list[Any] = []

    async def callback() -> str:
        ran_in.append(asyncio.current_task())
        return "delivered"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = await drainer.wait_first(callback(), drainer.suspend_flow.wait())
        gc.collect()
    assert ran_in == [caller]  # no task of its own
    assert result.results == ["delivered"] and not result.stopped
    assert not [w for w in caught if "never awaited" in str(w.message)]


async def test_a_callback_that_suspends_finishes_with_what_it_waited_for() -> None:
    drainer = Drainer()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.05, ready.set_result, "room on the queue")

    async def callback() -> str:
        got = await ready  # a full queue: the first step suspends here
        await asyncio.sleep(0)  # and a bare yield after it
        return f"put after {got}"

    result = await drainer.wait_first(callback(), drainer.suspend_flow.wait())
    assert result.results == ["put after room on the queue"] and not result.stopped


async def test_a_suspended_callback_is_cancelled_when_the_flow_is_suspended() -> None:
    """A rebalance sets ``suspend_flow``: a put blocked on a full queue must give up."""
    drainer = Drainer()
    blocked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seen: list[str] = []

    async def callback() -> None:
        try:
            await blocked
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    asyncio.get_running_loop().call_later(0.05, drainer.suspend_flow.set)
    result = await asyncio.wait_for(
        drainer.wait_first(callback(), drainer.suspend_flow.wait()), timeout=5
    )
    await asyncio.sleep(0)  # let the losing task run its cancellation
    assert seen == ["cancelled"]
    assert result.results == [True]  # the winner: the suspend event's wait (mode returns True)
    _closed_cleanly()


async def test_an_error_in_the_first_step_propagates_and_leaves_nothing_unclosed() -> None:
    drainer = Drainer()

    async def callback() -> None:
        raise ValueError("cannot decode")

    with pytest.raises(ValueError, match="cannot decode"):
        await drainer.wait_first(callback(), drainer.suspend_flow.wait())
    _closed_cleanly()


async def test_nothing_changes_once_the_flow_is_suspended() -> None:
    """With ``suspend_flow`` already set, mode decides, running the callback in a task."""
    drainer = Drainer()
    drainer.suspend_flow.set()
    caller = asyncio.current_task()
    ran_in: list[Any] = []

    async def callback() -> None:
        ran_in.append(asyncio.current_task())

    await drainer.wait_first(callback(), drainer.suspend_flow.wait())
    await asyncio.sleep(0)
    assert ran_in and ran_in[0] is not caller


# --- the real broker ----------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_a_full_stream_buffer_still_delivers_every_record_once_in_order(kafka, monkeypatch):
    """A slow agent behind a 4-event buffer: the conductor's put suspends on a full queue, so
    the drain loop's callback takes the fallback path (resumed in a task, racing the events)
    again and again; every record must still reach the agent once, in offset order. (That a
    resumed callback runs to its end is proven above: Faust's conductor schedules the blocked
    put in a task of its own, so this test alone would not see a callback cut short.)"""

    from onyx_wa.kafka import start_producer
    from streams import eager_delivery, offset_guard

    resumed = 0

    class CountingResume(eager_delivery._Resume):
        def __init__(self, coro: Any, first: Any) -> None:
            nonlocal resumed
            resumed += 1
            super().__init__(coro, first)

    monkeypatch.setattr(eager_delivery, "_Resume", CountingResume)
    settings = kafka.settings()
    topic_name = f"{settings.topic_prefix}.eager-backpressure"
    await kafka.create_topics({topic_name: 1})
    app = kafka.faust_app(f"{settings.topic_prefix}-eager", stream_buffer_maxsize=4)
    offset_guard.install(app)
    eager_delivery.install(app)
    assert isinstance(app.consumer, EagerDelivery)
    topic = app.topic(topic_name, key_serializer="raw", value_serializer="raw", partitions=1)
    total = 150
    seen: list[int] = []
    done = asyncio.Event()

    @app.agent(topic)
    async def consume(stream: Any) -> None:
        async for event in stream.events():
            await asyncio.sleep(0.002)  # slower than the fetch: the buffer stays full
            seen.append(int(event.value))
            if len(seen) >= total:
                done.set()

    producer = await start_producer(settings)
    try:
        for i in range(total):
            await producer.send(topic_name, f"{i}".encode(), key=b"k")
        await producer.flush()
        await app.start()
        await asyncio.wait_for(done.wait(), 60)
        await asyncio.sleep(0.3)  # nothing more may arrive
    finally:
        await producer.stop()
        await app.stop()
    assert seen == list(range(total))
    assert resumed > 0, resumed  # the fallback path ran (and the test exercised it)


async def test_an_abandoned_resume_closes_its_coroutine() -> None:
    """A fallback awaitable dropped before it finished (its task destroyed) must close the
    callback's coroutine, not leave it suspended forever."""
    from streams.eager_delivery import _Resume

    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    closed: list[bool] = []

    async def callback() -> None:
        try:
            await never
        finally:
            closed.append(True)

    coro = callback()
    first = coro.send(None)  # suspended on the future, as a blocked put would be
    waiter = _Resume(coro, first).__await__()
    assert next(waiter) is first
    waiter.close()
    assert closed == [True]
