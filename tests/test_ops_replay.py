"""Replay by time range: export (JSONL, Parquet), re-publish, state rebuild, dry runs, safety."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from onyx_wa import topics as t
from onyx_wa.kafka import committed_offsets, ensure_topics, producer_kwargs
from ops.export import ExportError
from ops.replay import ReplayError, parse_time, replay, resolve_topic, tenant_matches
from schemas.codec import get_codec
from streams.addressing import request_id_for

BASE_MS = 1_700_000_000_000
N = 20  # records i = 0..19 at BASE + i s, alternating tenants and partitions


def at(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def inbound(i: int, tenant: str, chat: str, text: str, ts_ms: int) -> dict:
    return {
        "message_id": f"wamid.{tenant}.{i}",
        "delivery_id": f"d{i}",
        "tenant_id": tenant,
        "phone_number_id": "pn1",
        "waba_id": None,
        "chat_id": chat,
        "chat_type": "direct",
        "group_id": None,
        "sender_id": chat,
        "sender_phone": chat,
        "sender_bsuid": None,
        "sender_name": "Ann",
        "sender_username": None,
        "message_type": "text",
        "text": text,
        "interactive_id": None,
        "reaction_emoji": None,
        "target_message_id": None,
        "context_message_id": None,
        "forwarded": False,
        "mentions": [],
        "media": None,
        "errors": [],
        "payload_json": "{}",
        "sent_at": ts_ms,
        "received_at": ts_ms,
    }


async def _send(settings, records: list[tuple[str, int, bytes, bytes, int]]) -> None:
    """(topic, partition, key, value, timestamp_ms) in order, with a header each."""
    producer = AIOKafkaProducer(**producer_kwargs(settings, linger_ms=20))
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic, value, key=key, partition=p, timestamp_ms=ts, headers=[("src", b"test")]
            )
            for topic, p, key, value, ts in records
        ]
        for future in futures:
            await future
    finally:
        await producer.stop()


async def _read_all(settings, topic: str, partitions: int) -> list:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None)
    await consumer.start()
    out = []
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            while ends[tp] and await consumer.position(tp) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                out.extend(batch.get(tp, []))
                if not batch:
                    break
    finally:
        await consumer.stop()
    return sorted(out, key=lambda r: (r.partition, r.offset))


@pytest.fixture
async def loaded(kafka):
    """20 inbound records (acme/globex alternating, partition = i % 2) plus one garbage record."""
    settings = kafka.settings(partitions=2)
    await kafka.create_pipeline_topics(settings)
    topic = t.full_name(t.INBOUND, settings.topic_prefix)
    codec = get_codec()
    originals = []
    records = []
    for i in range(N):
        tenant = "acme" if i % 2 == 0 else "globex"
        rec = inbound(i, tenant, f"{tenant}-chat", f"question {i}", BASE_MS + i * 1000)
        originals.append(rec)
        key = f"{tenant}:{tenant}-chat".encode()
        records.append((topic, i % 2, key, codec.encode("InboundMessage", rec), BASE_MS + i * 1000))
    # not Avro, in range, keyed for acme: counted as undecodable, kept by the key's tenant
    records.append((topic, 0, b"acme:x", b"not avro", BASE_MS + 10_500))
    await _send(settings, records)
    return settings, topic, originals


def _in_range(originals, lo: int, hi: int) -> list[dict]:
    return [r for r in originals if BASE_MS + lo * 1000 <= r["sent_at"] < BASE_MS + hi * 1000]


async def test_export_jsonl_exact_range_rerun_identical_and_live_group_untouched(
    kafka, loaded, tmp_path
):
    settings, topic, originals = loaded
    group = kafka.group("live")
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    consumer.assign(tps)
    await consumer.commit({tps[0]: 3, tps[1]: 4})
    await consumer.stop()

    out = tmp_path / "inbound.jsonl"
    ticks: list[tuple[int, int]] = []
    summary = await replay(
        settings,
        topic=t.INBOUND.name,  # a base name gets the prefix
        start=at(BASE_MS + 5_000),
        end=at(BASE_MS + 15_000),
        tenant=None,
        mode="export",
        target=out,
        progress=lambda done, total: ticks.append((done, total)),
        progress_every=5,
    )
    expected = _in_range(originals, 5, 15)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    good = [r for r in rows if r["_error"] is None]
    assert sorted(r["message_id"] for r in good) == sorted(r["message_id"] for r in expected)
    by_id = {r["message_id"]: r for r in expected}
    for row in good:
        want = by_id[row["message_id"]]
        assert row["text"] == want["text"] and row["tenant_id"] == want["tenant_id"]
        assert row["sent_at"] == at(want["sent_at"]).isoformat()
        assert row["_timestamp"] == at(want["sent_at"]).isoformat()
        assert row["_topic"] == topic and row["_partition"] == int(row["delivery_id"][1:]) % 2
        assert row["_key"] == f"{want['tenant_id']}:{want['tenant_id']}-chat"
    [bad] = [r for r in rows if r["_error"] is not None]
    assert bad["_raw"] == "bm90IGF2cm8=" and bad["_key"] == "acme:x"  # base64 of b"not avro"
    assert summary.matched == summary.written == 11 and summary.undecodable == 1
    assert summary.out_of_range == N - 10
    assert ticks and ticks[-1] == (summary.scanned, summary.scanned)

    first = out.read_bytes()
    again = await replay(
        settings,
        topic=topic,  # a full name is used as is
        start=at(BASE_MS + 5_000),
        end=at(BASE_MS + 15_000),
        mode="export",
        target=out,
    )
    assert out.read_bytes() == first and again.written == summary.written
    assert [p.name for p in tmp_path.iterdir()] == ["inbound.jsonl"]  # no temp files left

    after = await committed_offsets(settings.bootstrap_servers, group, tps)
    assert after == {tps[0]: 3, tps[1]: 4}


async def test_export_parquet_with_tenant_filter_reads_back(loaded, tmp_path):
    settings, topic, originals = loaded
    out = tmp_path / "acme.parquet"
    summary = await replay(
        settings,
        topic=t.INBOUND.name,
        start=at(BASE_MS),
        end=at(BASE_MS + 60_000),
        tenant="acme",
        mode="export",
        target=out,
    )
    table = pq.read_table(out)
    rows = [r for r in table.to_pylist() if r["_error"] is None]
    expected = [r for r in originals if r["tenant_id"] == "acme"]
    assert sorted(r["message_id"] for r in rows) == sorted(r["message_id"] for r in expected)
    by_id = {r["message_id"]: r for r in expected}
    for row in rows:
        want = by_id[row["message_id"]]
        assert row["text"] == want["text"] and row["forwarded"] is False
        assert row["sent_at"] == at(want["sent_at"])
        assert json.loads(row["mentions"]) == [] and row["media"] is None
    assert str(table.schema.field("sent_at").type) == "timestamp[ms, tz=UTC]"
    assert table.num_rows == summary.written == 11  # 10 acme records + the acme-keyed garbage
    assert summary.other_tenant == 10


async def test_dry_run_writes_nothing(loaded, tmp_path):
    settings, topic, _ = loaded
    out = tmp_path / "nothing.jsonl"
    summary = await replay(
        settings,
        topic=topic,
        start=at(BASE_MS),
        end=at(BASE_MS + 60_000),
        mode="export",
        target=out,
        dry_run=True,
    )
    assert summary.matched == N + 1 and summary.written == 0
    assert not out.exists() and list(tmp_path.iterdir()) == []
    target = f"{topic}.dry"
    summary = await replay(
        settings,
        topic=topic,
        start=at(BASE_MS),
        end=at(BASE_MS + 60_000),
        mode="to_topic",
        target=target,
        dry_run=True,
    )
    assert summary.matched == N + 1 and summary.written == 0
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        assert target not in await admin.list_topics()
    finally:
        await admin.close()


async def test_to_topic_copies_bytes_keys_headers_timestamps(loaded):
    settings, topic, _ = loaded
    target = f"{topic}.copy"
    summary = await replay(
        settings,
        topic=topic,
        start=at(BASE_MS + 2_000),
        end=at(BASE_MS + 12_000),
        tenant="globex",
        mode="to_topic",
        target=target,
    )
    source = [
        r
        for r in await _read_all(settings, topic, 2)
        if BASE_MS + 2_000 <= r.timestamp < BASE_MS + 12_000 and r.key.startswith(b"globex:")
    ]
    copied = await _read_all(settings, target, 2)

    def shape(r):
        return (r.partition, r.key, r.value, tuple(r.headers), r.timestamp)

    assert len(source) == 5 and summary.written == 5
    assert [shape(r) for r in copied] == [shape(r) for r in source]


async def test_rebuild_state_is_deterministic(kafka, tmp_path):
    settings = kafka.settings(partitions=2)
    await kafka.create_pipeline_topics(settings)
    name = {s: t.full_name(s, settings.topic_prefix) for s in (t.INBOUND, *t.ALL)}
    codec = get_codec()
    key = b"acme:ann"
    question = inbound(1, "acme", "ann", "How many vacation days do I get?", BASE_MS)
    request_id = request_id_for("acme", question["message_id"])
    answer = {
        "request_id": request_id,
        "tenant_id": "acme",
        "phone_number_id": "pn1",
        "chat_id": "ann",
        "chat_type": "direct",
        "recipient": "ann",
        "recipient_kind": "phone",
        "question_message_id": question["message_id"],
        "status": "ok",
        "answer": "25 days [1]",
        "citations": [],
        "top_documents": [],
        "onyx_message_id": 42,
        "onyx_chat_session_id": "sess-1",
        "latency_ms": 120,
        "error_code": None,
        "error_message": None,
        "show_sources": True,
        "language": None,
        "finished_at": BASE_MS + 1_000,
    }
    sent = {
        "outbound_id": f"{request_id}:0",
        "request_id": request_id,
        "tenant_id": "acme",
        "phone_number_id": "pn1",
        "chat_id": "ann",
        "status": "sent",
        "wamid": "wamid.bot.1",
        "error_code": None,
        "error_subcode": None,
        "error_message": None,
        "error_class": None,
        "attempts": 1,
        "original": None,
        "at": BASE_MS + 2_000,
    }
    other = inbound(2, "globex", "bob", "/lang es", BASE_MS + 500)
    await _send(
        settings,
        [
            (name[t.INBOUND], 0, key, codec.encode("InboundMessage", question), BASE_MS),
            # a duplicate delivery of the same message: deduped, no second request
            (name[t.INBOUND], 0, key, codec.encode("InboundMessage", question), BASE_MS + 10),
            (name[t.INBOUND], 1, b"globex:bob", codec.encode("InboundMessage", other), BASE_MS),
            (
                name[t.ANSWER_RESULTS],
                0,
                key,
                codec.encode("AnswerResult", answer),
                BASE_MS + 1_000,
            ),
            (
                name[t.OUTBOUND_RESULTS],
                0,
                key,
                codec.encode("OutboundResult", sent),
                BASE_MS + 2_000,
            ),
        ],
    )
    out = tmp_path / "state.json"
    kwargs = dict(
        topic=t.INBOUND.name,
        start=at(BASE_MS),
        end=at(BASE_MS + 60_000),
        mode="rebuild_state",
        target=out,
    )
    summary = await replay(settings, **kwargs)
    states = json.loads(out.read_text())
    assert set(states) == {"acme:ann", "globex:bob"}
    ann = states["acme:ann"]
    assert ann["session_id"] == "sess-1" and ann["parent_message_id"] == 42
    assert ann["turns"] == [["user", question["text"]], ["assistant", "25 days [1]"]]
    assert ann["pending"] is None and ann["answered"] == {request_id: 42}
    assert ann["bot_msgs"] == {"wamid.bot.1": request_id}
    assert ann["seen"] == {question["message_id"]: BASE_MS}
    assert ann["updated_at"] == BASE_MS + 2_000
    assert states["globex:bob"]["lang"] == "es"
    assert summary.written == 2 and summary.matched == 5 and summary.failed == 0
    assert summary.would_emit == {
        "wa.classified": 2,
        "onyx.answer.requests": 1,
        "wa.outbound": 1,  # the /lang confirmation
    }

    first = out.read_bytes()
    await replay(settings, **kwargs)
    assert out.read_bytes() == first

    only_acme = tmp_path / "acme.json"
    dry = await replay(settings, **{**kwargs, "target": only_acme, "tenant": "acme"}, dry_run=True)
    assert not only_acme.exists() and dry.written == 1 and dry.other_tenant == 1


async def test_refusals_are_clear(loaded, tmp_path):
    settings, topic, _ = loaded
    span = dict(start=at(BASE_MS), end=at(BASE_MS + 1_000))
    with pytest.raises(ReplayError, match="empty time range"):
        await replay(
            settings, topic=topic, start=at(BASE_MS), end=at(BASE_MS), mode="export", target="x"
        )
    with pytest.raises(ReplayError, match="no time zone"):
        await replay(
            settings,
            topic=topic,
            start=dt.datetime(2024, 1, 1),
            end=at(BASE_MS),
            mode="export",
            target="x",
        )
    with pytest.raises(ReplayError, match="do not exist"):
        await replay(
            settings, topic=f"{topic}.absent", **span, mode="export", target=tmp_path / "a.jsonl"
        )
    with pytest.raises(ReplayError, match="source topic"):
        await replay(settings, topic=topic, **span, mode="to_topic", target=topic)
    with pytest.raises(ReplayError, match="inbound topic"):
        await replay(
            settings, topic=t.RAW.name, **span, mode="rebuild_state", target=tmp_path / "s.json"
        )
    with pytest.raises(ReplayError, match="unknown replay mode"):
        await replay(settings, topic=topic, **span, mode="shred", target="x")  # type: ignore[arg-type]
    with pytest.raises(ExportError, match="use .jsonl or .parquet"):
        await replay(settings, topic=topic, **span, mode="export", target=tmp_path / "a.csv")
    # a target topic with another partition count cannot keep the key → partition mapping
    await ensure_topics(settings.bootstrap_servers, {f"{topic}.narrow": 1})
    with pytest.raises(ReplayError, match="has 1 partitions, expected 2"):
        await replay(settings, topic=topic, **span, mode="to_topic", target=f"{topic}.narrow")
    assert list(tmp_path.iterdir()) == []


async def test_failed_export_keeps_the_previous_file(loaded, tmp_path):
    settings, topic, _ = loaded
    out = tmp_path / "keep.parquet"
    out.write_bytes(b"previous export")
    codec = get_codec()
    stranger = {
        "feedback_id": "f1",
        "tenant_id": "acme",
        "phone_number_id": "pn1",
        "chat_id": "c",
        "sender_id": "c",
        "request_id": None,
        "onyx_message_id": None,
        "onyx_chat_session_id": None,
        "is_positive": True,
        "text": None,
        "source": "button",
        "at": BASE_MS + 30_000,
    }
    await _send(
        settings, [(topic, 1, b"acme:c", codec.encode("Feedback", stranger), BASE_MS + 30_000)]
    )
    with pytest.raises(ExportError, match="export to .jsonl instead"):
        await replay(
            settings,
            topic=topic,
            start=at(BASE_MS),
            end=at(BASE_MS + 60_000),
            mode="export",
            target=out,
        )
    assert out.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.parquet"]


def test_helpers():
    assert resolve_topic(_settings("pfx"), "wa.inbound") == ("pfx.wa.inbound", t.INBOUND)
    assert resolve_topic(_settings(""), "other.topic") == ("other.topic", None)
    assert parse_time("2024-05-01T10:00:00Z") == dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC)
    assert parse_time("2024-05-01T10:00:00") == dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC)
    delta = dt.datetime.now(dt.UTC) - parse_time("-2h")
    assert abs(delta.total_seconds() - 7200) < 5
    with pytest.raises(ReplayError, match="cannot read time"):
        parse_time("yesterday-ish")
    assert tenant_matches("acme", b"globex:1", {"tenant_id": "acme"})
    assert not tenant_matches("acme", b"acme:1", {"tenant_id": "globex"})
    assert tenant_matches("acme", None, {"tenant_ids": ["globex", "acme"]})
    assert tenant_matches("acme", b"acme:chat", None)
    assert not tenant_matches("acme", b"acmex:chat", None)


def _settings(prefix: str):
    from onyx_wa.settings import load_settings

    return load_settings(topic_prefix=prefix, kafka_bootstrap_servers="127.0.0.1:1")
