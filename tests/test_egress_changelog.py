"""The sender's fast write path: the bytes Faust would write, and batches in order.

The sender bypasses Faust's per-record machinery for the ``sent`` table's changelog and the
results (see ``egress/stage.py``). A restarted worker recovers the table from those records, so
they must be byte-compatible with Faust's own codecs (a raw key once made recovery fail on every
record), and "sending" then "sent" of one id must reach the changelog in that order.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from aiokafka.errors import KafkaError
from cryptography.fernet import Fernet

from egress.stage import RecordBatches, _json_bytes
from onyx_wa.settings import load_settings
from streams.app import build_app


def test_changelog_bytes_match_fausts_codecs(tmp_path) -> None:
    settings = load_settings(data_dir=tmp_path, encryption_key=Fernet.generate_key().decode())
    app, ctx = build_app(settings, ["egress"])
    table = app.tables["sent"]
    changelog = table.changelog_topic
    assert (changelog.key_serializer, changelog.value_serializer) == ("json", "json")
    assert ctx.resources["sender"].app is app  # bound: the fast path is on
    key, value = "req-1:0", {"state": "sent", "wamid": "wamid.X", "at": 1, "é": "✓"}
    faust_key = app.serializers.dumps_key(changelog.key_type, key, serializer="json")
    faust_value = app.serializers.dumps_value(changelog.value_type, value, serializer="json")
    assert _json_bytes(key) == faust_key
    assert app.serializers.loads_value(None, _json_bytes(value), serializer="json") == value
    assert app.serializers.loads_value(None, faust_value, serializer="json") == value


def test_changelog_bytes_for_what_orjson_refuses_come_from_json() -> None:
    """A non-string key or an integer over 64 bits still gives the bytes Faust reads back."""
    assert _json_bytes({1: "x"}) == b'{"1":"x"}'
    assert _json_bytes({"n": 2**70}) == b'{"n":1180591620717411303424}'
    assert _json_bytes({"state": "sent", "at": 1}) == b'{"state":"sent","at":1}'


@dataclass
class FakeBuilder:
    capacity: int
    records: list[tuple[bytes, bytes]] = field(default_factory=list)

    def append(self, *, timestamp, key, value):
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value))
        return SimpleNamespace(offset=len(self.records) - 1)

    def record_count(self) -> int:
        return len(self.records)

    def close(self) -> None:
        self.capacity = len(self.records)


class FakeProducer:
    """``send_batch`` returns once the previous batch of the partition is on the wire; the
    broker acknowledges a batch when the test says so."""

    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self.log: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {}
        self.in_flight: dict[tuple[str, int], asyncio.Future] = {}
        self.submitted: list[tuple[tuple[str, int], int]] = []
        self.fail_next = False

    def create_batch(self) -> FakeBuilder:
        return FakeBuilder(self.capacity)

    async def send_batch(self, builder, topic, *, partition):
        tp = (topic, partition)
        previous = self.in_flight.get(tp)
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("producer closed")
        self.submitted.append((tp, builder.record_count()))
        acked = asyncio.get_running_loop().create_future()
        self.in_flight[tp] = acked
        out = asyncio.get_running_loop().create_future()

        def ack(acked: asyncio.Future) -> None:
            if acked.cancelled():  # the producer dropped the batch
                out.cancel()
                return
            log = self.log.setdefault(tp, [])
            base = len(log)
            log.extend(builder.records)
            out.set_result(SimpleNamespace(topic=topic, partition=partition, offset=base))

        acked.add_done_callback(ack)
        return out

    def ack_all(self) -> None:
        for fut in self.in_flight.values():
            if not fut.done():
                fut.set_result(None)


async def _settle(producer: FakeProducer, rounds: int = 20) -> None:
    for _ in range(rounds):
        producer.ack_all()
        await asyncio.sleep(0)


async def test_batches_keep_order_and_fill_while_one_is_in_flight() -> None:
    producer = FakeProducer()
    delivered: list[tuple[str, int, int]] = []
    batches = RecordBatches(producer, lambda t, p, o: delivered.append((t, p, o)))
    first = batches.append("cl", 0, b"a", b"sending")
    await asyncio.sleep(0)  # the writer submits the first batch alone
    later = [batches.append("cl", 0, f"k{i}".encode(), b"v") for i in range(5)]
    other = batches.append("results", 3, b"chat", b"r")
    assert not first.done()
    await _settle(producer)
    await asyncio.wait_for(asyncio.gather(first, *later, other), 1)
    assert producer.log[("cl", 0)] == [(b"a", b"sending")] + [
        (f"k{i}".encode(), b"v") for i in range(5)
    ]
    # the five records after the first went in one batch, filled while the first was out
    assert [n for tp, n in producer.submitted if tp == ("cl", 0)] == [1, 5]
    assert ("cl", 0, 5) in delivered and ("results", 3, 0) in delivered
    assert later[0] is later[4]  # one future per batch, not per record
    await batches.aclose()


async def test_a_full_batch_goes_first_and_order_holds() -> None:
    producer = FakeProducer(capacity=2)
    batches = RecordBatches(producer)
    futs = [batches.append("cl", 1, f"k{i}".encode(), b"v") for i in range(5)]
    await _settle(producer)
    await asyncio.wait_for(asyncio.gather(*futs), 1)
    assert [k for k, _ in producer.log[("cl", 1)]] == [f"k{i}".encode() for i in range(5)]
    assert all(n <= 2 for _, n in producer.submitted)
    await batches.aclose()


async def test_a_failed_submit_fails_its_waiters_and_the_writer_goes_on() -> None:
    producer = FakeProducer()
    batches = RecordBatches(producer)
    producer.fail_next = True
    failed = batches.append("cl", 0, b"a", b"v")
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(failed, 1)
    ok = batches.append("cl", 0, b"b", b"v")
    await _settle(producer)
    await asyncio.wait_for(ok, 1)
    assert producer.log[("cl", 0)] == [(b"b", b"v")]
    await batches.aclose()


async def test_closing_fails_unwritten_records_with_a_kafka_error() -> None:
    """A record still waiting when the batches close (the app's producer was replaced, or the
    worker stops) fails with a KafkaError: its message is retried or left for redelivery. A
    cancellation here was caught nowhere and let the message be acknowledged unwritten."""
    producer = FakeProducer()
    batches = RecordBatches(producer)
    in_flight = batches.append("cl", 0, b"a", b"v")
    await asyncio.sleep(0)  # submitted, never acknowledged
    queued = batches.append("cl", 0, b"b", b"v")  # still in the open batch
    await batches.aclose()
    with pytest.raises(KafkaError):
        await asyncio.wait_for(queued, 1)
    producer.ack_all()  # the batch already on the wire is written, and its waiter told so
    await asyncio.wait_for(in_flight, 1)
    assert producer.log[("cl", 0)] == [(b"a", b"v")]


async def test_a_batch_the_producer_drops_fails_its_waiters_with_a_kafka_error() -> None:
    producer = FakeProducer()
    batches = RecordBatches(producer)
    waiter = batches.append("cl", 0, b"a", b"v")
    await asyncio.sleep(0)
    [delivery] = producer.in_flight.values()
    delivery.cancel()  # aiokafka cancels the batches it drops while it stops
    with pytest.raises(KafkaError):
        await asyncio.wait_for(waiter, 1)
    await batches.aclose()


async def test_a_batch_goes_out_without_the_producers_linger(kafka) -> None:
    """The app's producer lingers (Faust's ``producer_linger_ms``: 10 ms here, 1 s in this
    test); a batch of marks is already a group commit, and each "sending" mark holds a send
    back until the broker has it, so a submitted batch is closed and goes with the next
    request instead of waiting out the linger."""
    from aiokafka import AIOKafkaProducer

    topic = f"{kafka.prefix}.batches-linger"
    await kafka.create_topics({topic: 1})
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, linger_ms=1000)
    await producer.start()
    delivered: list[tuple[str, int, int]] = []
    batches = RecordBatches(producer, lambda t, p, o: delivered.append((t, p, o)))
    try:
        await producer.send_and_wait(topic, b"warm-up", partition=0)  # metadata, connection
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(batches.append(topic, 0, b"k", b"sending"), 5)
        assert loop.time() - started < 0.5
        assert delivered == [(topic, 0, 1)]  # offset 0 was the warm-up
    finally:
        await batches.aclose()
        await producer.stop()
