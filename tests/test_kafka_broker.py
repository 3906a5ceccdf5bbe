"""The embedded broker and the kafka module: start, topics, quirks, clean stop, no orphans."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from onyx_wa.broker import BrokerError, EmbeddedBroker, free_port
from onyx_wa.kafka import (
    BrokerUnavailable,
    end_offsets,
    ensure_pipeline_topics,
    ensure_topics,
    planned_topics,
    producer_kwargs,
    wait_for_broker,
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): look at its state
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def test_pipeline_topics_created_with_configured_partitions(kafka):
    settings = kafka.settings(partitions=3)
    created = await ensure_pipeline_topics(settings)
    assert set(created) == set(planned_topics(settings))
    assert all(name.startswith(kafka.prefix + ".") for name in created)
    # idempotent
    await ensure_pipeline_topics(settings)
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics(sorted(created))
    finally:
        await admin.close()
    assert {t["topic"]: len(t["partitions"]) for t in described} == {n: 3 for n in created}


async def test_partition_mismatch_is_a_clear_error(kafka):
    name = f"{kafka.prefix}.mismatch"
    await ensure_topics(kafka.bootstrap_servers, {name: 2})
    with pytest.raises(RuntimeError, match="has 2 partitions, expected 5"):
        await ensure_topics(kafka.bootstrap_servers, {name: 5})


async def test_unreachable_broker_is_one_line():
    port = free_port()
    with pytest.raises(BrokerUnavailable) as err:
        await wait_for_broker(f"127.0.0.1:{port}", timeout_s=1.0)
    message = str(err.value)
    assert "\n" not in message and f"127.0.0.1:{port}" in message and "onyx-wa broker" in message


def test_port_in_use_is_refused_before_spawning():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        broker = EmbeddedBroker(port=port)
        with pytest.raises(BrokerError, match="already in use"):
            broker.spawn()
        assert broker.pid is None


async def test_end_offsets_are_exact_for_multi_record_batches(kafka):
    """Tansu reports a batch's base offset + 1; the kafka module must find the real end."""
    name = f"{kafka.prefix}.offsets"
    await ensure_topics(kafka.bootstrap_servers, {name: 1})
    producer = AIOKafkaProducer(**producer_kwargs(kafka.settings(), linger_ms=50))
    await producer.start()
    try:
        futures = [await producer.send(name, b"x%d" % i, partition=0) for i in range(25)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    tp = TopicPartition(name, 0)
    ends = await end_offsets(kafka.bootstrap_servers, [tp], embedded=kafka.embedded)
    assert ends[tp] == 25


def test_broker_dies_with_its_parent(tmp_path):
    """kill -9 of the process that started the broker must not leave Tansu running."""
    port = free_port()
    script = textwrap.dedent(
        f"""
        import asyncio, sys, time
        from onyx_wa.broker import EmbeddedBroker
        b = EmbeddedBroker(port={port})
        asyncio.run(b.start())
        print(b.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline()
        broker_pid = int(line.strip())
        assert _alive(broker_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(broker_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(broker_pid), "Tansu outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()


async def test_start_stop_releases_the_port():
    broker = EmbeddedBroker(port=free_port())
    await broker.start()
    pid = broker.pid
    assert pid and _alive(pid)
    await wait_for_broker(broker.bootstrap_servers, timeout_s=5)
    broker.stop()
    assert not _alive(pid)
    from onyx_wa.broker import port_is_free

    assert port_is_free(broker.host, broker.port)
