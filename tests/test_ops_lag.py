"""Consumer lag: exact figures on known offsets, Burrow-style statuses, discovery, the exporter."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from onyx_wa import topics as t
from onyx_wa.kafka import producer_kwargs
from ops import lag as lag_mod
from ops.lag import (
    LagEvaluator,
    LagStatus,
    Sample,
    collect_lag,
    evaluate,
    known_groups,
    render_table,
)
from ops.lag_exporter import LagExporter

BASE_MS = 1_700_000_000_000


async def _produce(settings, topic: str, per_partition: int, partitions: int) -> None:
    """``per_partition`` records to each partition, record i at BASE_MS + i s (batched)."""
    producer = AIOKafkaProducer(**producer_kwargs(settings, linger_ms=50))
    await producer.start()
    try:
        futures = []
        for p in range(partitions):
            for i in range(per_partition):
                futures.append(
                    await producer.send(
                        topic,
                        f"v{p}-{i}".encode(),
                        key=f"k{i}".encode(),
                        partition=p,
                        timestamp_ms=BASE_MS + i * 1000,
                    )
                )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _commit(settings, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit known offsets for ``group`` without joining it (manual assignment)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


@pytest.fixture
async def inbound(kafka):
    """Pipeline topics with 2 partitions and 30 records on the inbound topic (15 + 15)."""
    settings = kafka.settings(partitions=2)
    await kafka.create_pipeline_topics(settings)
    topic = t.full_name(t.INBOUND, settings.topic_prefix)
    await _produce(settings, topic, per_partition=15, partitions=2)
    return settings, topic


async def test_lag_figures_are_exact_on_known_offsets(kafka, inbound):
    settings, topic = inbound
    group = kafka.group("lag")
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    await _commit(settings, group, {p0: 5, p1: 15})
    now = BASE_MS / 1000 + 100.0
    report = await collect_lag(settings, [group], now=now)
    [g] = report.groups
    assert g.group == group and g.error is None
    rows = {(p.topic, p.partition): p for p in g.partitions}
    assert set(rows) == {(topic, 0), (topic, 1)}
    first, second = rows[(topic, 0)], rows[(topic, 1)]
    assert (first.committed, first.end, first.lag) == (5, 15, 10)
    # the oldest unconsumed record is #5, stamped BASE + 5 s
    assert first.lag_seconds == pytest.approx(100.0 - 5.0, abs=1e-3)
    assert (second.committed, second.end, second.lag, second.lag_seconds) == (15, 15, 0, 0.0)
    assert g.lag == 10 and g.lag_seconds == pytest.approx(95.0, abs=1e-3)
    assert g.status is LagStatus.OK  # one sample shows no movement: OK or ERR only

    doc = json.loads(report.to_json())
    assert doc["groups"][0]["partitions"][0]["lag"] == 10
    assert doc["groups"][0]["status"] == "OK"
    table = render_table(report)
    assert group in table and "95.0" in table and table.splitlines()[0].startswith("GROUP")


async def test_known_group_without_commits_lags_from_log_start(kafka, inbound):
    settings, topic = inbound
    group = lag_mod.known_groups(settings)
    answers_group = next(g for g in group if g.endswith("-answers"))
    requests = t.full_name(t.ANSWER_REQUESTS, settings.topic_prefix)
    await _produce(settings, requests, per_partition=3, partitions=1)
    report = await collect_lag(settings, [answers_group], now=BASE_MS / 1000 + 10)
    [g] = report.groups
    rows = {(p.topic, p.partition): p for p in g.partitions}
    feedback = t.full_name(t.FEEDBACK, settings.topic_prefix)  # the group's other topic
    assert set(rows) == {(requests, 0), (requests, 1), (feedback, 0), (feedback, 1)}
    assert rows[(feedback, 0)].lag == 0
    assert rows[(requests, 0)].committed is None and rows[(requests, 0)].lag == 3
    assert rows[(requests, 0)].lag_seconds == pytest.approx(10.0, abs=1e-3)
    assert rows[(requests, 1)].lag == 0


async def test_committed_past_end_is_err_and_never_negative(kafka, inbound):
    settings, topic = inbound
    group = kafka.group("ahead")
    await _commit(settings, group, {TopicPartition(topic, 0): 40})
    report = await collect_lag(settings, [group])
    row, other = report.groups[0].partitions
    assert (row.partition, row.committed, row.lag, row.status) == (0, 40, 0, LagStatus.ERR)
    # the partition the group never committed on is read from the log start: 15 behind
    assert (other.partition, other.committed, other.lag) == (1, None, 15)
    assert report.groups[0].status is LagStatus.ERR


async def test_discovery_finds_pipeline_groups_only(kafka, inbound):
    settings, topic = inbound
    answers_group = next(g for g in known_groups(settings) if g.endswith("-answers"))
    requests = t.full_name(t.ANSWER_REQUESTS, settings.topic_prefix)
    await _produce(settings, requests, per_partition=4, partitions=2)
    await _commit(settings, answers_group, {TopicPartition(requests, 0): 1})
    await _commit(settings, kafka.group("other-app"), {TopicPartition(topic, 0): 1})
    report = await collect_lag(settings)
    assert [g.group for g in report.groups] == [answers_group]
    lags = {p.partition: p.lag for p in report.groups[0].partitions if p.topic == requests}
    assert lags == {0: 3, 1: 4}


async def test_window_statuses_over_live_collections(kafka, inbound):
    """Same evaluator across collections: a backlog with no commits and no traffic is STOP."""
    settings, topic = inbound
    group = kafka.group("stopped")
    await _commit(settings, group, {TopicPartition(topic, 0): 2})
    evaluator = LagEvaluator(window=3)
    statuses = []
    for _ in range(3):
        report = await collect_lag(settings, [group], evaluator=evaluator)
        statuses.append(report.groups[0].status)
    assert statuses == [LagStatus.OK, LagStatus.STOP, LagStatus.STOP]
    await _produce(settings, topic, per_partition=1, partitions=1)
    report = await collect_lag(settings, [group], evaluator=evaluator)
    by_partition = {p.partition: p.status for p in report.groups[0].partitions}
    # partition 0: records arrive, nobody commits; partition 1 (never committed): frozen
    assert by_partition == {0: LagStatus.STALL, 1: LagStatus.STOP}
    assert report.groups[0].status is LagStatus.STOP  # the group shows its worst partition


async def test_group_read_failure_is_err_not_a_crash(kafka, inbound, monkeypatch):
    settings, _ = inbound

    async def broken(*args, **kwargs):
        raise ConnectionError("coordinator gone")

    monkeypatch.setattr(lag_mod, "committed_offsets", broken)
    monkeypatch.setattr(lag_mod, "_committed_admin", broken)
    report = await collect_lag(settings, [kafka.group("x")])
    [g] = report.groups
    assert g.status is LagStatus.ERR and "coordinator gone" in (g.error or "")
    assert "ERR" in render_table(report)


def test_known_groups_match_the_faust_apps():
    """ROLE_TOPICS must follow the stages' agents: build each app and compare its sources; the
    egress sender's loop has a group of its own for the outbound topic."""
    from onyx_wa.settings import load_settings
    from streams.app import build_app

    settings = load_settings(topic_prefix="lagcheck", kafka_bootstrap_servers="127.0.0.1:1")
    expected = {}
    for roles in lag_mod.ROLE_SETS:
        app, ctx = build_app(settings, roles)
        expected[app.conf.id] = sorted({n for a in app.agents.values() for n in a.channel.topics})
        loop = ctx.resources.get("sender_loop")
        if loop is not None:
            expected[loop.group] = [loop.topic]
    assert known_groups(settings) == expected
    assert any(group.endswith(".sender") for group in expected)


# --- the evaluator, with synthetic samples ----------------------------------------------------


def _s(committed, end, error=False):
    return Sample(committed=committed, end=end, lag=max(0, end - (committed or 0)), error=error)


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([], LagStatus.OK),
        ([_s(5, 10)], LagStatus.OK),
        ([_s(5, 10), _s(10, 10)], LagStatus.OK),  # caught up
        ([_s(1, 10), _s(5, 12), _s(9, 13)], LagStatus.OK),  # consuming, lag shrinking
        ([_s(1, 10), _s(2, 12), _s(3, 15)], LagStatus.WARN),  # consuming, falling behind
        ([_s(1, 10), _s(2, 11), _s(3, 12)], LagStatus.OK),  # keeping pace: lag flat
        ([_s(1, 10), _s(2, 12), _s(3, 13)], LagStatus.WARN),  # never decreased, ended higher
        ([_s(4, 10), _s(4, 12), _s(4, 15)], LagStatus.STALL),  # no commits, records arrive
        ([_s(4, 10), _s(4, 10), _s(4, 10)], LagStatus.STOP),  # no commits, no records
        ([_s(None, 10), _s(None, 10)], LagStatus.STOP),  # never committed
        ([_s(4, 10), _s(12, 10)], LagStatus.ERR),  # committed past the end
        ([_s(4, 10), _s(5, 10, error=True)], LagStatus.ERR),  # fetch error
        ([_s(4, 10, error=True), _s(5, 10)], LagStatus.OK),  # recovered
    ],
)
def test_evaluate_rules(samples, expected):
    assert evaluate(samples) is expected


def test_evaluator_keeps_a_sliding_window_per_partition():
    ev = LagEvaluator(window=3)
    for committed, end in [(0, 10), (0, 10), (0, 10)]:
        status = ev.observe("g", "t", 0, _s(committed, end))
    assert status is LagStatus.STOP
    # the consumer resumes: once the frozen samples leave the window it is OK again
    assert ev.observe("g", "t", 0, _s(5, 10)) is LagStatus.OK
    assert ev.observe("g", "t", 1, _s(0, 10)) is LagStatus.OK  # other partition, own window
    assert len(ev.samples("g", "t", 0)) == 3
    ev.forget_except([("g", "t", 1)])
    assert ev.samples("g", "t", 0) == [] and len(ev.samples("g", "t", 1)) == 1
    with pytest.raises(ValueError):
        LagEvaluator(window=1)


# --- exporter ---------------------------------------------------------------------------------


async def test_exporter_serves_gauges_and_health(kafka, inbound):
    settings, topic = inbound
    group = kafka.group("exp")
    await _commit(settings, group, {TopicPartition(topic, 0): 5, TopicPartition(topic, 1): 15})
    exporter = LagExporter(settings, interval_s=0.5, groups=[group])
    port = await exporter.start("127.0.0.1", 0)
    try:
        deadline = time.monotonic() + 15
        while exporter.collector.report is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 200
                text = await resp.text()
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200
    finally:
        await exporter.stop()
    labels = f'group="{group}",partition="0",topic="{topic}"'
    assert f"onyx_wa_consumer_lag_messages{{{labels}}} 10.0" in text
    assert f"onyx_wa_consumer_committed_offset{{{labels}}} 5.0" in text
    assert f'onyx_wa_topic_end_offset{{partition="0",topic="{topic}"}} 15.0' in text
    assert f"onyx_wa_consumer_group_status{{{labels}}} 0.0" in text
    assert f'onyx_wa_consumer_group_status{{group="{group}",partition="*",topic="*"}} 0.0' in text
    lag_s = [line for line in text.splitlines() if line.startswith("onyx_wa_consumer_lag_seconds{")]
    assert any(labels in line and float(line.rsplit(" ", 1)[1]) > 1e6 for line in lag_s)


async def test_exporter_unhealthy_when_collection_fails(kafka):
    from onyx_wa.broker import free_port

    settings = kafka.settings(kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
    exporter = LagExporter(settings, interval_s=0.2)
    port = await exporter.start("127.0.0.1", 0)
    try:
        assert await exporter.refresh() is None
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 503
                assert (await resp.json())["status"] == "stale"
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
    finally:
        await exporter.stop()
    assert exporter.collector.refresh_errors >= 1
    assert "onyx_wa_lag_exporter_refresh_errors_total" in text
    assert "onyx_wa_consumer_lag_messages{" not in text
