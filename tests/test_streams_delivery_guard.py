"""The delivery guard: no commit over an output the broker refused (``streams/delivery_guard.py``).

On the session broker, a Faust app forwards 30 records from one topic to another and the
broker refuses one output, injected under the app's aiokafka producer. With the guards, the
commit is refused, the app crashes, and a second app in the same group, the "restarted
worker", redoes the work from the last commit, so the output holds all 30. The same run with
Faust's own producer and consumer commits 30 over the lost output, which shows the test can
fail. A crashed app then ends the worker process (``Worker.run_until``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaTimeoutError

from onyx_wa.kafka import committed_offsets, start_producer
from onyx_wa.prometheus_helpers import sum_samples
from streams import delivery_guard, offset_guard
from streams.delivery_guard import GuardedProducer, RecordsNotDelivered

pytestmark = pytest.mark.timeout(150)
N = 30
REFUSED = b"13"


async def read_values(bootstrap: str, topic: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        values: list[bytes] = []
        while batch := await consumer.getmany(timeout_ms=500):
            values += [r.value for records in batch.values() for r in records]
        return values
    finally:
        await consumer.stop()


def forwarding_app(kafka: Any, name: str, source: str, sink: str, guard: bool) -> faust.App:
    app = kafka.faust_app(name)
    if guard:
        offset_guard.install(app)
        delivery_guard.install(app)
    topic = app.topic(source, key_serializer="raw", value_serializer="raw", partitions=1)

    @app.agent(topic)
    async def forward(stream: Any) -> None:
        async for event in stream.events():
            await app.producer.send(sink, b"k", event.value, 0, None, None)

    if guard:
        delivery_guard.guard_agents(app)
    return app


def refuse_once(app: faust.App, value: bytes, how: str) -> list[bytes]:
    """The first send of ``value`` fails and writes nothing. ``delivery``: its delivery future
    fails (an outage past the producer's retries); ``raise``: the send itself raises (aiokafka
    gave up waiting for the topic's metadata)."""
    producer = app.producer._ensure_producer()
    real_send = producer.send
    refused: list[bytes] = []

    async def send(topic: str, value_: Any = None, *args: Any, **kwargs: Any) -> Any:
        if value_ == value and not refused:
            refused.append(value_)
            if how == "raise":
                raise KafkaTimeoutError()
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(KafkaTimeoutError())
            return fut
        return await real_send(topic, value_, *args, **kwargs)

    producer.send = send
    return refused


async def run_refused_output(
    kafka: Any, guard: bool, how: str = "delivery", redo: bool = True
) -> tuple[int | None, list[bytes], bool]:
    """Returns the committed offset after the first app, the sink's values at the end, and
    whether the first app crashed. ``redo``: with the guard, start the "restarted worker" (the
    slow part: it waits out the crashed member's session)."""
    label = f"{how}-{'guarded' if guard else 'plain'}"
    settings = kafka.settings()
    source = f"{settings.topic_prefix}.dg-{label}-in"
    sink = f"{settings.topic_prefix}.dg-{label}-out"
    await kafka.create_topics({source: 1, sink: 1})
    group = f"{settings.topic_prefix}-dg-{label}"
    producer = await start_producer(settings)
    try:
        for i in range(N):
            await producer.send_and_wait(source, f"{i}".encode(), key=b"k")
    finally:
        await producer.stop()

    app = forwarding_app(kafka, group, source, sink, guard)
    await app.start()
    try:
        refused = refuse_once(app, REFUSED, how)
        deadline = asyncio.get_running_loop().time() + 60
        while not refused and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        assert refused, "the refused record never came"
        await asyncio.sleep(1.0)  # the rest is forwarded
        await app.consumer.commit()
        crashed = app.crashed
    finally:
        await app.stop()
    [committed] = (
        await committed_offsets(kafka.bootstrap_servers, group, [TopicPartition(source, 0)])
    ).values()

    if guard and redo:  # the restarted worker: same group, resumes from the last good commit
        again = forwarding_app(kafka, group, source, sink, guard)
        await again.start()
        try:
            deadline = asyncio.get_running_loop().time() + 60
            while asyncio.get_running_loop().time() < deadline:
                if REFUSED in await read_values(kafka.bootstrap_servers, sink):
                    break
        finally:
            await again.stop()
    return committed, await read_values(kafka.bootstrap_servers, sink), crashed


async def test_a_refused_output_is_never_committed_over_and_is_redone(kafka):
    before = sum_samples_of_failures()
    committed, out, crashed = await run_refused_output(kafka, guard=True)
    assert crashed, "the guarded app went on after a refused delivery"
    assert committed is None or committed <= int(REFUSED), committed
    assert {int(v) for v in out} == set(range(N)), sorted(int(v) for v in out)
    assert sum_samples_of_failures() == before + 1
    # the control: Faust's own producer and consumer commit over the lost record
    committed, out, crashed = await run_refused_output(kafka, guard=False)
    assert committed == N and REFUSED not in out and not crashed


async def test_a_send_that_raises_crashes_the_app_and_is_never_committed_over(kafka):
    committed, out, crashed = await run_refused_output(kafka, guard=True, how="raise", redo=False)
    assert crashed, "the guarded app went on after a send raised"
    # not committed past: the restarted worker redoes it (shown by the test above)
    assert committed is None or committed <= int(REFUSED), committed
    assert REFUSED not in out
    # the control: Faust restarts the actor and commits over the event it was handling
    committed, out, crashed = await run_refused_output(kafka, guard=False, how="raise")
    assert committed == N and REFUSED not in out and not crashed, (committed, crashed)


def sum_samples_of_failures() -> float:
    from prometheus_client import REGISTRY, generate_latest

    return sum_samples(generate_latest(REGISTRY).decode(), "onyx_wa_produce_failures_total")


async def test_the_guarded_producer_counts_failed_and_cancelled_deliveries(tmp_path):
    from onyx_wa.settings import load_settings
    from streams.app import build_app

    app, _ = build_app(load_settings(data_dir=tmp_path))
    producer = app.producer
    assert isinstance(producer, GuardedProducer)
    assert delivery_guard.undelivered(app) is None
    loop = asyncio.get_running_loop()
    ok, failed, cancelled = loop.create_future(), loop.create_future(), loop.create_future()
    ok.set_result(None)
    failed.set_exception(KafkaTimeoutError())
    cancelled.cancel()
    for fut in (ok, failed, cancelled):
        producer._delivered("t", fut)
    assert producer.failed_deliveries == 2
    error = delivery_guard.undelivered(app)
    assert isinstance(error, RecordsNotDelivered) and "2 record(s)" in str(error)
    assert "KafkaTimeoutError" in str(error)


async def test_a_crashed_app_ends_the_worker(kafka, tmp_path):
    from cryptography.fernet import Fernet

    from streams.worker import Worker, WorkerCrashed

    settings = kafka.settings(data_dir=tmp_path, encryption_key=Fernet.generate_key().decode())
    from store.migrate import upgrade

    await asyncio.to_thread(upgrade, settings.sqlalchemy_url)
    worker = Worker(settings, ["egress"])
    await worker.start()
    try:
        stop = asyncio.Event()
        running = asyncio.ensure_future(worker.run_until(stop))
        await asyncio.sleep(0.2)
        assert not running.done()
        await worker.app.crash(RecordsNotDelivered("1 record(s) not delivered"))
        with pytest.raises(WorkerCrashed, match="not delivered"):
            await asyncio.wait_for(running, 10)
    finally:
        await worker.stop()


async def test_every_pipeline_agent_is_guarded_and_other_errors_keep_fausts_handling(tmp_path):
    from types import SimpleNamespace

    from aiokafka.errors import KafkaConnectionError
    from faust.exceptions import ProducerSendError

    from onyx_wa.settings import load_settings
    from streams.app import build_app

    app, _ = build_app(load_settings(data_dir=tmp_path))
    assert len(app.agents) >= 6
    assert all(getattr(a._on_error, "guarded", False) for a in app.agents.values())
    faust_default: list[BaseException] = []
    crashes: list[BaseException] = []

    async def previous(agent: Any, exc: BaseException) -> None:  # Faust's: commit, restart
        faust_default.append(exc)

    async def crash(exc: BaseException) -> None:
        crashes.append(exc)

    handler = delivery_guard._guarded_handler(previous)
    agent = SimpleNamespace(name="a", app=SimpleNamespace(crashed=False, crash=crash))
    bug = ValueError("a bug outside the catch-all")
    await handler(agent, bug)
    broker = [ProducerSendError("send"), KafkaConnectionError(), RecordsNotDelivered("x")]
    for exc in broker:
        await handler(agent, exc)
    assert faust_default == [bug] and crashes == broker
