"""Floors for ``bench egress``: the fastest a sender *without this project's logic* goes here.

Why: the goal compares the egress worker with a bare aiohttp client that posts JSON it holds in
memory. A sender must also consume the outbound topic, decode each record's Avro and
acknowledge it, which the bare client never does. Three floors measure that minimum in the same
run, on the same backlog (each in its own consumer group, from the earliest offset), against
the same simulator:

- ``faust``: one Faust agent with the sender's skeleton (``egress.stage``: a ``noack`` stream,
  a task per message within a window, HTTP slots, the ack after the post) and nothing else:
  no durable marks, no results, no table, no retries, no throttle, no chat locks. Stock Faust.
- ``faust_eager``: the same on the worker's consumer, which delivers records to the stream
  eagerly (``streams.eager_delivery``).
- ``aiokafka``: the same without Faust: a plain consumer's ``getmany``, a task per record,
  offsets auto-committed every second (Faust's commit interval here).

Each decodes the record and posts its ``payload_json`` as the worker does, and reads the answer's
JSON (the wamid the worker keeps). None is durable or exactly-once: they are lower bounds on the
cost, not senders. If a floor's ratio to the bare client is below the goal, no sender built
on that floor can reach the goal on this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

Count = Callable[[], Awaitable[int]]
Post = Callable[[bytes], Awaitable[None]]

READY_TIMEOUT_S = 60.0


def poster(
    http: aiohttp.ClientSession, base: str, version: str, token: str, concurrency: int
) -> Post:
    """Decode one OutboundMessage and post its JSON, at most ``concurrency`` at once."""
    from schemas.codec import get_codec

    decode = get_codec().decode
    slots = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def post(value: bytes) -> None:
        record = decode(value)
        url = f"{base}/{version}/{record['phone_number_id']}/messages"
        async with (
            slots,
            http.post(url, data=record["payload_json"].encode(), headers=headers) as r,
        ):
            body = json.loads(await r.read())
            if r.status >= 400 or "messages" not in body:
                raise RuntimeError(f"simulator refused a floor send: {r.status} {body}")

    return post


async def until_sent(n: int, count: Count) -> None:
    """Until the simulator has counted ``n`` messages."""
    while await count() < n:
        await asyncio.sleep(0.02)


async def wait_ready(ready: Callable[[], bool], what: str) -> None:
    """Until ``ready()`` (a consumer has its partitions): where a sender's clock starts."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not assigned within {READY_TIMEOUT_S:.0f} s")
        await asyncio.sleep(0.005)


async def faust_floor(
    settings: Any, topic: str, n: int, post: Post, count: Count, window: int, *, eager: bool = False
) -> float:
    """Sends/s of a bare Faust agent shaped like the sender (see the module docstring)."""
    from bench.bare_faust import bare_app
    from streams.worker import app_ready

    app = bare_app(
        settings, f"bench-egress-floor-{uuid.uuid4().hex[:8]}", "faust-floor", eager=eager
    )
    source = app.topic(
        topic, key_serializer="raw", value_serializer="raw", partitions=settings.partitions
    )
    errors: list[BaseException] = []

    @app.agent(source, name="floor")
    async def floor(stream: Any) -> None:
        slots = asyncio.Semaphore(window)
        pending: set[asyncio.Task[None]] = set()

        async def run(event: Any) -> None:
            try:
                await post(event.value)
            except Exception as exc:  # reported after the run: a floor must not hide errors
                errors.append(exc)
            finally:
                slots.release()
                await stream.ack(event)

        async for event in stream.noack().events():
            await slots.acquire()
            task = asyncio.ensure_future(run(event))
            pending.add(task)
            task.add_done_callback(pending.discard)

    await app.start()
    try:
        await wait_ready(lambda: app_ready(app), "the Faust floor")
        started = time.perf_counter()
        await until_sent(n, count)
        rate = n / (time.perf_counter() - started)
    finally:
        with contextlib.suppress(Exception):
            await app.stop()
    if errors:
        raise RuntimeError(f"Faust floor: {len(errors)} send(s) failed, first: {errors[0]!r}")
    return rate


async def aiokafka_floor(
    settings: Any, topic: str, n: int, post: Post, count: Count, window: int
) -> float:
    """Sends/s of a plain aiokafka consumer loop (see the module docstring)."""
    from aiokafka import AIOKafkaConsumer

    from onyx_wa.kafka import consumer_kwargs

    group = f"bench-egress-floor-{uuid.uuid4().hex[:8]}"
    consumer = AIOKafkaConsumer(
        topic,
        **consumer_kwargs(settings, group, enable_auto_commit=True, auto_commit_interval_ms=1000),
    )
    slots = asyncio.Semaphore(window)
    pending: set[asyncio.Task[None]] = set()
    errors: list[BaseException] = []

    async def run(value: bytes) -> None:
        try:
            await post(value)
        except Exception as exc:
            errors.append(exc)
        finally:
            slots.release()

    async def consume() -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=100)
            for records in batches.values():
                for record in records:
                    await slots.acquire()
                    task = asyncio.ensure_future(run(record.value))
                    pending.add(task)
                    task.add_done_callback(pending.discard)

    await consumer.start()
    loop = asyncio.ensure_future(consume())
    try:
        await wait_ready(lambda: bool(consumer.assignment()), "the aiokafka floor")
        started = time.perf_counter()
        await until_sent(n, count)
        rate = n / (time.perf_counter() - started)
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await loop
        await consumer.stop()
    if errors:
        raise RuntimeError(f"aiokafka floor: {len(errors)} send(s) failed, first: {errors[0]!r}")
    return rate
