"""Hand each fetched record to Faust's streams without four tasks per record.

Why: Faust's drain loop (``Consumer._drain_messages``, faust-streaming 0.11-0.15) delivers every
record with ``await self.wait_first(callback(message), self.suspend_flow.wait())``. mode's
``wait_first`` wraps the callback, the suspend event and the consumer's stopped and crashed
events in four tasks, waits with ``asyncio.wait`` and cancels the three losers: per record.
The callback (the conductor: decode, put the event on each stream's queue) almost never
suspends, so nearly all of that is waste. Profiled in a Faust agent that only decodes and posts
(``bench/egress_floors.py``): ~10% of the process in ``wait_first`` alone, and delivering
eagerly took that agent from 2,140 to 2,601 sends/s here (+22%; +27% in a second pair).

:class:`EagerDelivery` runs the callback's first step inline. If it finishes there, its result
is returned exactly as ``wait_first`` would return it. If it suspends (a stream's queue is full,
or the producer's buffer is above its high-water mark: backpressure), the started coroutine is
handed to mode's ``wait_first`` as before, so a rebalance (``suspend_flow``), a stop or a crash
still interrupts it. When any of those events is already set, nothing changes at all. The first
step runs in the drain loop's own task, so in its context: the conductor's callback sets no
context variables.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

from mode.services import WaitResults


class _Resume:
    """Awaitable that finishes a coroutine which already ran up to its first suspension.

    ``first`` is what the coroutine yielded there (the future it waits on, or None for a bare
    yield). The task awaiting this passes every wake-up, value or exception (a cancellation
    included) on to the coroutine, as if the task had run it from the start.
    """

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self.coro, self.first
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # noqa: BLE001 - forwarded, GeneratorExit included
                step, arg = coro.throw, exc
            else:
                step, arg = coro.send, sent
            try:
                value = step(arg)
            except StopIteration as stop:
                return stop.value


class EagerDelivery:
    """Consumer mixin: ``wait_first`` runs its first coroutine's first step inline.

    Only when the call can be decided at once: no timeout, the first argument a coroutine,
    and neither the flow suspended nor the consumer stopped or crashed.
    """

    suspend_flow: Any
    _stopped: Any
    _crashed: Any

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:  # noqa: ASYNC109 - mode's signature
        first = coros[0] if coros else None
        if (
            timeout is None
            and asyncio.iscoroutine(first)
            and not self.suspend_flow.is_set()
            and not self._stopped.is_set()
            and not self._crashed.is_set()
        ):
            try:
                yielded = first.send(None)
            except StopIteration as stop:
                _close(coros[1:])
                return WaitResults([first], [stop.value], False)
            except BaseException:
                _close(coros[1:])
                raise  # as mode's wait_first raises the first coroutine's error
            # it suspended: the rest of it races the events as before
            coros = (_Resume(first, yielded), *coros[1:])
        return await super().wait_first(*coros, timeout=timeout)  # type: ignore[misc]


def _close(coros: tuple[Any, ...]) -> None:
    for coro in coros:
        if asyncio.iscoroutine(coro):
            coro.close()  # never started: closing it is all it needs


def install(app: Any) -> None:
    """Make ``app``'s consumer class deliver eagerly (after ``offset_guard.install``)."""
    transport = app.transport
    consumer = transport.Consumer
    if not issubclass(consumer, EagerDelivery):
        transport.Consumer = type(f"Eager{consumer.__name__}", (EagerDelivery, consumer), {})
