"""The Avro codec: realistic records of every type round-trip in Confluent framing, ids are
derived and stable, evolution works both ways, the official ``avro`` package agrees byte for byte,
bad input fails loudly with the field named, and Faust serializes through it by name."""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import struct
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import pytest
from fastavro.schema import to_parsing_canonical_form
from faust.exceptions import ValueDecodeError
from faust.serializers import Registry, codecs

from onyx_wa import topics
from schemas.codec import (
    AvroCodec,
    CodecError,
    LocalRegistry,
    declared_names,
    derive_schema_id,
    get_codec,
    self_contained,
)
from schemas.faust_codec import AvroRecordCodec, register_faust_codecs

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "schemas"
T0 = datetime(2026, 11, 25, 10, 30, 15, 123000, tzinfo=UTC)
T1 = T0 + timedelta(seconds=2, milliseconds=345)

INBOUND: dict[str, Any] = {
    "message_id": "wamid.HBgLMTU1NTAwMDAwMDEVAgASGBQzQUI1RTk2QjY4MEM2RjQ2QjEyQgA=",
    "delivery_id": "5d2c0a4e-3f1b-4bb8-9d3e-2b8c0a3f9e11",
    "tenant_id": "codec-acme",
    "phone_number_id": "106540352242922",
    "waba_id": "102290129340398",
    "chat_id": "120363025246125486@g.us",
    "chat_type": "group",
    "group_id": "120363025246125486@g.us",
    "sender_id": "US.13491208655302741918",
    "sender_phone": None,
    "sender_bsuid": "US.13491208655302741918",
    "sender_name": "Zoë Müller",
    "sender_username": "zoe.m",
    "message_type": "image",
    "text": "@bot what does this invoice's clause 4 mean? ¿Qué significa? 🤔",
    "interactive_id": None,
    "reaction_emoji": None,
    "target_message_id": None,
    "context_message_id": "wamid.HBgLMTU1NTAwMDAwMDEVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA",
    "forwarded": True,
    "mentions": ["15550001111", "US.9912"],
    "media": {
        "media_id": "1037543291543636",
        "kind": "image",
        "mime_type": "image/jpeg",
        "sha256": "dh+ZUbtOHOwkTd8Zrbl7ggGAeZn9z8n2WBKZ6fSaixk=",
        "filename": None,
        "voice": False,
    },
    "errors": [{"code": 131051, "title": "Message type unknown", "message": None, "details": None}],
    "payload_json": '{"from":"15551234567","id":"wamid.x","type":"image"}',
    "sent_at": T0,
    "received_at": T1,
}

OUTBOUND: dict[str, Any] = {
    "outbound_id": "codec-acme:req-7f3a:0",
    "request_id": "codec-acme:req-7f3a",
    "part_index": 0,
    "part_count": 2,
    "tenant_id": "codec-acme",
    "phone_number_id": "106540352242922",
    "chat_id": "15551234567",
    "kind": "text",
    "payload_json": json.dumps(
        {
            "messaging_product": "whatsapp",
            "to": "15551234567",
            "type": "text",
            "text": {"body": "*Vacation*: 25 days [1]"},
        }
    ),
    "created_at": T0,
}

SOURCE = {
    "number": 1,
    "document_id": "handbook/vacation.md",
    "title": "Vacation policy",
    "link": "https://intranet.example.com/hr/vacation",
    "source_type": "file",
    "updated_at": "2026-01-10T09:00:00Z",
    "blurb": "Full-time employees get 25 days…",
}

EXAMPLES: dict[str, dict[str, Any]] = {
    "ForgetRequest": {
        "forget_id": "f-1",
        "tenant_id": "acme",
        "chat_id": "4915100000001",
        "user_id": "4915100000001",
        "source": "admin",
        "requested_at": datetime(2026, 1, 1, tzinfo=UTC),
    },
    "RawWebhook": {
        "delivery_id": "0b8f3c1e-9f7a-4d2b-8f5e-6a1c2d3e4f50",
        "received_at": T1,
        "body": b'{"object":"whatsapp_business_account","entry":[]}\xe2\x9c\x93',
        "headers": {"X-Hub-Signature-256": "sha256=ab12", "Content-Type": "application/json"},
        "tenant_ids": ["codec-acme"],
        "phone_number_ids": ["106540352242922"],
        "routed": True,
    },
    "InboundMessage": INBOUND,
    "StatusUpdate": {
        "message_id": "wamid.HBgLMTU1NTAwMDAwMDEVAgARGBI0RkU1",
        "status": "failed",
        "delivery_id": "1c2d3e4f-0000-4000-8000-000000000001",
        "tenant_id": "codec-acme",
        "phone_number_id": "106540352242922",
        "recipient_id": "15551234567",
        "errors": [
            {
                "code": 131047,
                "title": "Re-engagement message",
                "message": "Re-engagement message",
                "details": "More than 24 hours have passed since the recipient last replied.",
            }
        ],
        "callback_data": "Yl9yZXE:0",
        "payload_json": '{"status":"failed"}',
        "status_at": T0,
        "received_at": T1,
    },
    "ClassifiedMessage": {
        "kind": "command",
        "question": None,
        "command": "lang",
        "command_arg": "es",
        "feedback_positive": None,
        "feedback_target": None,
        "reason": None,
        "message": INBOUND | {"text": "/lang es", "message_type": "text", "media": None},
    },
    "InvalidEvent": {
        "delivery_id": "1c2d3e4f-0000-4000-8000-000000000002",
        "stage": "preprocess",
        "reason": "entry[0].changes[0].value is not an object",
        "tenant_id": None,
        "source_topic": "wa.webhook.raw",
        "raw": b"\x00\x01\xff not json",
        "at": T0,
    },
    "AnswerRequest": {
        "request_id": "codec-acme:req-7f3a",
        "tenant_id": "codec-acme",
        "phone_number_id": "106540352242922",
        "chat_id": "15551234567",
        "chat_type": "direct",
        "recipient": "US.13491208655302741918",
        "recipient_kind": "bsuid",
        "question_message_id": INBOUND["message_id"],
        "sender_id": "US.13491208655302741918",
        "question": "And can I carry them over?",
        "history": [
            {"role": "user", "text": "How many vacation days do I get?"},
            {"role": "assistant", "text": "25 days per year [1]."},
        ],
        "answer_backend": "onyx",
        "onyx_chat_session_id": "4f1c2e9a-3b7d-4c8e-9f0a-1b2c3d4e5f60",
        "onyx_parent_message_id": 9_000_000_001,
        "persona_id": 3,
        "document_sets": ["HR"],
        "source_types": ["confluence", "file"],
        "tags": [],
        "time_cutoff_days": 365,
        "linked_user_email": "zoe@example.com",
        "language": "de",
        "show_sources": True,
        "created_at": T0,
    },
    "AnswerResult": {
        "request_id": "codec-acme:req-7f3a",
        "tenant_id": "codec-acme",
        "phone_number_id": "106540352242922",
        "chat_id": "15551234567",
        "chat_type": "direct",
        "recipient": "15551234567",
        "recipient_kind": "phone",
        "question_message_id": INBOUND["message_id"],
        "status": "ok",
        "answer": "You get **25 days** per year [[1]](https://intranet.example.com/hr/vacation).",
        "citations": [SOURCE],
        "top_documents": [SOURCE, SOURCE | {"number": 2, "link": None, "blurb": None}],
        "onyx_message_id": 9_000_000_002,
        "onyx_chat_session_id": "4f1c2e9a-3b7d-4c8e-9f0a-1b2c3d4e5f60",
        "latency_ms": 1840,
        "error_code": None,
        "error_message": None,
        "show_sources": True,
        "language": None,
        "finished_at": T1,
    },
    "OutboundMessage": OUTBOUND,
    "OutboundResult": {
        "outbound_id": OUTBOUND["outbound_id"],
        "request_id": OUTBOUND["request_id"],
        "tenant_id": "codec-acme",
        "phone_number_id": "106540352242922",
        "chat_id": "15551234567",
        "status": "failed",
        "wamid": None,
        "error_code": 131047,
        "error_subcode": 2494010,
        "error_message": "Re-engagement message",
        "error_class": "permanent",
        "attempts": 3,
        "original": OUTBOUND,
        "at": T1,
    },
    "Feedback": {
        "feedback_id": "wamid.HBgLMTU1NTAwMDAwMDEVAgASGBQ5OEQ3",
        "tenant_id": "codec-acme",
        "phone_number_id": "106540352242922",
        "chat_id": "15551234567",
        "sender_id": "15551234567",
        "request_id": "codec-acme:req-7f3a",
        "onyx_message_id": 9_000_000_002,
        "onyx_chat_session_id": None,
        "is_positive": False,
        "text": None,
        "source": "reaction",
        "at": T0,
    },
}


def _header(schema_id: int) -> bytes:
    return b"\x00" + struct.pack(">I", schema_id)


def _source(name: str) -> dict[str, Any]:
    for path in SCHEMAS.glob("*.avsc"):
        data = json.loads(path.read_text())
        if data["name"] == name:
            return data
    raise KeyError(name)


# --- round trips and framing --------------------------------------------------------------------


def test_there_is_an_example_of_every_record_and_every_topic_has_a_record():
    codec = get_codec()
    assert sorted(EXAMPLES) == codec.record_names()
    assert {spec.schema for spec in topics.ALL if spec.schema} <= set(codec.record_names())


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_record_round_trips_in_confluent_framing(name):
    codec = get_codec()
    record = EXAMPLES[name]
    data = codec.encode(name, record)
    schema_id = codec.schema_id(name)
    assert data[:5] == _header(schema_id)
    standalone = self_contained(codec.parsed_schema(name), codec._named)
    assert schema_id == derive_schema_id(to_parsing_canonical_form(standalone))
    assert codec.record_name_of(data) == name
    decoded = codec.decode(data)
    assert decoded == record
    assert codec.decode(data, reader=name) == record
    assert codec.decode(bytearray(data)) == record
    assert codec.decode(memoryview(data)) == record


def test_timestamps_accept_ms_or_aware_datetimes_and_decode_to_utc():
    codec = get_codec()
    ms = int(T0.timestamp() * 1000)
    ist = timezone(timedelta(hours=5, minutes=30))
    for given in (ms, T0.astimezone(ist), T0):
        out = codec.decode(codec.encode("Feedback", EXAMPLES["Feedback"] | {"at": given}))
        assert out["at"] == T0 and out["at"].utcoffset() == timedelta(0)
        assert out["at"].tzinfo is not None
    # timestamp-millis keeps milliseconds: microseconds below that are dropped, not rounded up
    precise = T0.replace(microsecond=123999)
    out = codec.decode(codec.encode("Feedback", EXAMPLES["Feedback"] | {"at": precise}))
    assert out["at"] == T0
    before_epoch = datetime(1969, 12, 31, 23, 59, 59, 1000, tzinfo=UTC)
    out = codec.decode(codec.encode("Feedback", EXAMPLES["Feedback"] | {"at": before_epoch}))
    assert out["at"] == before_epoch


def test_missing_defaulted_fields_get_their_defaults():
    codec = get_codec()
    minimal = {
        k: v
        for k, v in EXAMPLES["RawWebhook"].items()
        if k in ("delivery_id", "received_at", "body")
    }
    out = codec.decode(codec.encode("RawWebhook", minimal))
    assert out == minimal | {
        "headers": {},
        "tenant_ids": [],
        "phone_number_ids": [],
        "routed": True,
    }


# --- schema ids -----------------------------------------------------------------------------------


def test_schema_ids_are_stable_across_instances_and_distinct_per_record():
    a, b = AvroCodec(), AvroCodec()
    ids = {n: a.schema_id(n) for n in a.record_names()}
    assert ids == {n: b.schema_id(n) for n in b.record_names()}
    assert len(set(ids.values())) == len(ids)
    assert all(0 < i < 2**31 for i in ids.values())


def test_schema_ids_are_the_same_in_another_process():
    ids = {n: get_codec().schema_id(n) for n in get_codec().record_names()}
    script = (
        "import json; from schemas.codec import AvroCodec; c = AvroCodec();"
        "print(json.dumps({n: c.schema_id(n) for n in c.record_names()}))"
    )
    env = os.environ | {"PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd="/", env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == ids


def test_docs_do_not_change_ids_but_wire_changes_do():
    codec = AvroCodec()
    reworded = _source("Feedback")
    reworded["doc"] = "reworded"
    reworded["fields"][0]["doc"] = "reworded too"
    assert codec.register("FeedbackReworded", reworded) == codec.schema_id("Feedback")
    changed = _source("Feedback")
    changed["fields"].append({"name": "emoji", "type": ["null", "string"], "default": None})
    assert codec.register("FeedbackWithEmoji", changed) != codec.schema_id("Feedback")
    # the first name an id was registered under stays its name
    assert codec.record_name_of(codec.encode("FeedbackReworded", EXAMPLES["Feedback"])) == (
        "Feedback"
    )


def _copy_schemas(tmp_path: Path, rename: dict[str, str] | None = None) -> Path:
    rename = rename or {}
    for path in SCHEMAS.glob("*.avsc"):
        shutil.copy(path, tmp_path / rename.get(path.name, path.name))
    return tmp_path


def test_loading_is_independent_of_file_order(tmp_path):
    # the referencing files now sort before the files defining what they reference
    directory = _copy_schemas(
        tmp_path,
        {
            "classified_message.avsc": "0_classified.avsc",
            "outbound_result.avsc": "1_outbound_result.avsc",
            "inbound_message.avsc": "z_inbound.avsc",
            "outbound_message.avsc": "zz_outbound.avsc",
        },
    )
    reordered = AvroCodec(directory)
    codec = get_codec()
    assert {n: reordered.schema_id(n) for n in reordered.record_names()} == {
        n: codec.schema_id(n) for n in codec.record_names()
    }
    data = reordered.encode("ClassifiedMessage", EXAMPLES["ClassifiedMessage"])
    assert codec.decode(data) == EXAMPLES["ClassifiedMessage"]


def test_changing_an_embedded_record_changes_the_embedding_records_id(tmp_path):
    directory = _copy_schemas(tmp_path)
    path = directory / "inbound_message.avsc"
    schema = json.loads(path.read_text())
    schema["fields"].append({"name": "lang", "type": ["null", "string"], "default": None})
    path.write_text(json.dumps(schema))
    changed, codec = AvroCodec(directory), get_codec()
    assert changed.schema_id("InboundMessage") != codec.schema_id("InboundMessage")
    assert changed.schema_id("ClassifiedMessage") != codec.schema_id("ClassifiedMessage")
    assert changed.schema_id("Feedback") == codec.schema_id("Feedback")


def test_loading_rejects_duplicate_types_broken_references_and_bad_json(tmp_path):
    dup = tmp_path / "dup"
    dup.mkdir()
    _copy_schemas(dup)
    clash = {
        "type": "record",
        "name": "Clash",
        "namespace": "onyx_wa.events",
        "fields": [
            {
                "name": "m",
                "type": {
                    "type": "record",
                    "name": "MediaRef",
                    "fields": [{"name": "x", "type": "int"}],
                },
            }
        ],
    }
    (dup / "clash.avsc").write_text(json.dumps(clash))
    with pytest.raises(CodecError, match="onyx_wa.events.MediaRef is defined in both"):
        AvroCodec(dup)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.avsc").write_text(
        json.dumps(
            {
                "type": "record",
                "name": "A",
                "fields": [{"name": "b", "type": "onyx_wa.events.Nope"}],
            }
        )
    )
    with pytest.raises(CodecError, match="unresolvable schema references: .*Nope"):
        AvroCodec(broken)

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.avsc").write_text("{not json")
    with pytest.raises(CodecError, match="x.avsc is not valid JSON"):
        AvroCodec(bad)


def test_declared_names_finds_nested_types_with_inherited_namespaces():
    names = set(declared_names(_source("InboundMessage")))
    assert names == {
        "onyx_wa.events.InboundMessage",
        "onyx_wa.events.ChatType",
        "onyx_wa.events.MediaRef",
        "onyx_wa.events.InboundError",
    }


# --- evolution ----------------------------------------------------------------------------------


def _inbound_v2() -> dict[str, Any]:
    src = _source("InboundMessage")
    src["fields"].append(
        {"name": "priority", "type": "int", "default": 3, "doc": "Added in v2 (test only)."}
    )
    return src


def test_evolution_new_reader_reads_old_events_with_the_default():
    codec = AvroCodec()
    old_bytes = codec.encode("InboundMessage", INBOUND)
    v2_id = codec.register("InboundMessageV2", _inbound_v2())
    assert v2_id != codec.schema_id("InboundMessage")
    upgraded = codec.decode(old_bytes, reader="InboundMessageV2")
    assert upgraded == INBOUND | {"priority": 3}


def test_evolution_old_reader_drops_the_new_field():
    codec = AvroCodec()
    v2_id = codec.register("InboundMessageV2", _inbound_v2())
    new_bytes = codec.encode("InboundMessageV2", INBOUND | {"priority": 9})
    assert new_bytes[:5] == _header(v2_id)
    assert codec.decode(new_bytes) == INBOUND | {"priority": 9}
    assert codec.decode(new_bytes, reader="InboundMessage") == INBOUND


def test_registering_a_new_version_under_the_same_name_keeps_old_bytes_readable():
    codec = AvroCodec()
    old_id = codec.schema_id("InboundMessage")
    old_bytes = codec.encode("InboundMessage", INBOUND)
    new_id = codec.register("InboundMessage", _inbound_v2())
    assert codec.schema_id("InboundMessage") == new_id != old_id
    assert codec.encode("InboundMessage", INBOUND)[:5] == _header(new_id)
    assert codec.decode(old_bytes) == INBOUND
    assert codec.decode(old_bytes, reader="InboundMessage") == INBOUND | {"priority": 3}
    # the loaded embedding record keeps the definition it was loaded with
    classified = codec.encode("ClassifiedMessage", EXAMPLES["ClassifiedMessage"])
    assert codec.decode(classified) == EXAMPLES["ClassifiedMessage"]


def test_a_spliced_encode_is_byte_for_byte_the_plain_encode():
    """The classified message reuses the inbound record's body: the same bytes, so readers
    (and the official avro package) cannot tell the difference."""
    codec = AvroCodec()
    framed = codec.encode("InboundMessage", INBOUND)
    record = EXAMPLES["ClassifiedMessage"] | {"message": codec.decode(framed)}
    spliced = codec.encode_spliced("ClassifiedMessage", record, framed)
    assert spliced == codec.encode("ClassifiedMessage", record)
    assert codec.decode(spliced) == record


def test_a_spliced_encode_falls_back_when_the_tail_has_another_layout():
    """A tail written by a newer producer (one more field) cannot be reused as the nested
    record's body: the record is encoded in full, as the embedding record's schema says."""
    codec = AvroCodec()
    codec.register("InboundMessageV2", _inbound_v2())
    newer = codec.encode("InboundMessageV2", INBOUND | {"priority": 9})
    record = EXAMPLES["ClassifiedMessage"] | {"message": INBOUND}
    spliced = codec.encode_spliced("ClassifiedMessage", record, newer)
    assert spliced == codec.encode("ClassifiedMessage", record)
    assert codec.decode(spliced)["message"] == INBOUND


def test_a_spliced_encode_still_checks_the_head_fields():
    codec = AvroCodec()
    framed = codec.encode("InboundMessage", INBOUND)
    record = EXAMPLES["ClassifiedMessage"] | {"message": INBOUND, "kind": "shouting"}
    with pytest.raises(CodecError, match="ClassifiedMessage.*kind"):
        codec.encode_spliced("ClassifiedMessage", record, framed)
    with pytest.raises(CodecError, match="ClassifiedMessage.*unknown field"):
        codec.encode_spliced("ClassifiedMessage", record | {"kind": "question", "x": 1}, framed)


def test_incompatible_reader_and_bad_versions_are_errors():
    codec = AvroCodec()
    data = codec.encode("Feedback", EXAMPLES["Feedback"])
    with pytest.raises(CodecError, match="cannot read Feedback as InboundMessage"):
        codec.decode(data, reader="InboundMessage")
    with pytest.raises(CodecError, match="unknown record 'Nope'"):
        codec.decode(data, reader="Nope")
    no_default = _source("Feedback")
    no_default["fields"].append({"name": "score", "type": "int", "doc": "no default"})
    codec.register("FeedbackV2", no_default)
    with pytest.raises(CodecError, match="cannot read Feedback as FeedbackV2"):
        codec.decode(data, reader="FeedbackV2")
    with pytest.raises(CodecError, match="invalid schema for Broken"):
        codec.register("Broken", {"type": "record", "name": "Broken", "fields": [{"name": "x"}]})


# --- interop with the official avro package -----------------------------------------------------


def _official(name: str) -> avro.schema.Schema:
    names = avro.schema.Names()
    for dependency in ("InboundMessage", "OutboundMessage"):
        if dependency != name:
            avro.schema.make_avsc_object(_source(dependency), names)
    return avro.schema.make_avsc_object(_source(name), names)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_interop_with_the_official_avro_package_both_ways(name):
    codec = get_codec()
    record = EXAMPLES[name]
    data = codec.encode(name, record)
    official = _official(name)

    read = avro.io.DatumReader(official).read(avro.io.BinaryDecoder(io.BytesIO(data[5:])))
    assert read == record

    out = io.BytesIO()
    avro.io.DatumWriter(official).write(record, avro.io.BinaryEncoder(out))
    assert out.getvalue() == data[5:]  # the binary encoding is canonical: same bytes
    assert codec.decode(_header(codec.schema_id(name)) + out.getvalue()) == record


# --- errors ---------------------------------------------------------------------------------------


def test_decode_rejects_bad_framing_and_bodies():
    codec = get_codec()
    good = codec.encode("Feedback", EXAMPLES["Feedback"])
    with pytest.raises(CodecError, match="magic byte 1, expected 0"):
        codec.decode(b"\x01" + good[1:])
    with pytest.raises(CodecError, match="magic byte 255"):
        codec.decode(b"\xff" + good[1:])
    with pytest.raises(CodecError, match="unknown schema id 1$"):
        codec.decode(b"\x00\x00\x00\x00\x01" + good[5:])
    with pytest.raises(CodecError, match="truncated record: 3 bytes"):
        codec.decode(good[:3])
    with pytest.raises(CodecError, match="cannot decode Feedback: truncated or corrupt"):
        codec.decode(good[:-4])
    with pytest.raises(CodecError, match="cannot decode Feedback: truncated or corrupt"):
        codec.decode(good[:5])
    with pytest.raises(CodecError, match="2 trailing bytes"):
        codec.decode(good + b"xx")
    with pytest.raises(CodecError, match="expected bytes, got str"):
        codec.decode("not bytes")  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="unknown schema id"):
        codec.record_name_of(b"\x00\x7f\xff\xff\xff")


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("Feedback", {"is_positive": "yes"}, "field 'is_positive': expected boolean, got str"),
        ("Feedback", {"is_positive": None}, "field 'is_positive': expected boolean, got NoneType"),
        ("Feedback", {"tenant_id": 42}, "field 'tenant_id': expected string, got int"),
        ("Feedback", {"source": "pigeon"}, "expected a symbol of enum FeedbackSource (button, "),
        ("Feedback", {"sender": "typo"}, "unknown field(s) 'sender'"),
        ("InboundMessage", {"media": INBOUND["media"] | {"x": 1}}, "'media': unknown field(s) 'x'"),
        ("Feedback", {"at": datetime(2026, 1, 1)}, "field 'at': naive datetime"),
        ("Feedback", {"at": "2026-01-01"}, "field 'at': expected long, got str"),
        ("Feedback", {"at": 1.5}, "field 'at': expected long, got float"),
        ("Feedback", {"onyx_message_id": True}, "field 'onyx_message_id': expected long"),
        ("OutboundMessage", {"part_index": 2**31}, "field 'part_index': int out of range"),
        ("OutboundMessage", {"part_index": 1.0}, "field 'part_index': expected int, got float"),
        ("InboundMessage", {"mentions": "15550001111"}, "field 'mentions': expected an array"),
        ("InboundMessage", {"mentions": ["ok", 7]}, "field 'mentions[1]': expected string"),
        ("InboundMessage", {"media": {"media_id": "1"}}, "missing required field 'media.kind'"),
        ("InboundMessage", {"errors": [{"code": "131051"}]}, "field 'errors[0].code'"),
        ("InboundMessage", {"media": "image"}, "field 'media': expected a record"),
        ("RawWebhook", {"body": "text, not bytes"}, "field 'body': expected bytes, got str"),
        ("RawWebhook", {"headers": {"X": 1}}, "field \"headers['X']\": expected string"),
        ("RawWebhook", {"headers": {1: "x"}}, "map keys must be strings"),
        ("ClassifiedMessage", {"message": INBOUND | {"forwarded": 1}}, "'message.forwarded'"),
        ("OutboundResult", {"original": {"outbound_id": "x"}}, "missing required field 'original."),
    ],
)
def test_encode_rejects_wrong_values_and_names_the_field(name, change, message):
    codec = get_codec()
    with pytest.raises(CodecError) as info:
        codec.encode(name, EXAMPLES[name] | change)
    assert str(info.value).startswith(f"cannot encode {name}: ")
    assert message in str(info.value)


def test_encode_rejects_missing_fields_unknown_records_and_non_dicts():
    codec = get_codec()
    record = dict(EXAMPLES["Feedback"])
    del record["tenant_id"]
    with pytest.raises(
        CodecError, match="cannot encode Feedback: missing required field 'tenant_id'"
    ):
        codec.encode("Feedback", record)
    with pytest.raises(CodecError, match="unknown record 'Nope'"):
        codec.encode("Nope", EXAMPLES["Feedback"])
    with pytest.raises(CodecError, match="expected a record \\(dict\\), got list"):
        codec.encode("Feedback", [1, 2])  # type: ignore[arg-type]


def test_errors_never_echo_the_value():
    codec = get_codec()
    secret = "EAAG-s3cr3t-access-token"
    for change in ({"is_positive": secret}, {"source": secret}, {"onyx_message_id": secret}):
        with pytest.raises(CodecError) as info:
            codec.encode("Feedback", EXAMPLES["Feedback"] | change)
        assert "s3cr3t" not in str(info.value)


def test_unvalidated_encode_still_fails_on_structural_errors_with_the_field():
    codec = get_codec()
    record = dict(EXAMPLES["Feedback"])
    del record["chat_id"]
    with pytest.raises(CodecError, match="missing required field 'chat_id'"):
        codec.encode("Feedback", record, validate=False)
    with pytest.raises(CodecError, match="field 'tenant_id': expected string"):
        codec.encode("Feedback", EXAMPLES["Feedback"] | {"tenant_id": 5}, validate=False)
    fast = codec.encode("Feedback", EXAMPLES["Feedback"], validate=False)
    assert fast == codec.encode("Feedback", EXAMPLES["Feedback"])


# --- pluggable registry ---------------------------------------------------------------------------


class CountingRegistry:
    """Stands in for a Confluent Schema Registry: it hands out sequential ids, like a server."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.schemas: dict[int, str] = {}
        self.lookups: list[int] = []

    def id_for(self, full_name: str, canonical: str) -> int:
        if canonical not in self.ids:
            self.ids[canonical] = 1000 + len(self.ids)
            self.schemas[self.ids[canonical]] = canonical
        return self.ids[canonical]

    def schema_for(self, schema_id: int) -> str | None:
        self.lookups.append(schema_id)
        return self.schemas.get(schema_id)


def test_a_registry_assigns_ids_and_serves_versions_a_consumer_never_loaded():
    registry = CountingRegistry()
    producer, consumer = AvroCodec(registry=registry), AvroCodec(registry=registry)
    assert producer.schema_id("Feedback") == consumer.schema_id("Feedback") >= 1000
    data = producer.encode("InboundMessage", INBOUND)
    assert data[:5] == _header(producer.schema_id("InboundMessage"))
    assert sorted(registry.schemas) == list(range(1000, 1000 + len(EXAMPLES)))
    assert consumer.decode(data) == INBOUND

    v2_id = producer.register("InboundMessageV2", _inbound_v2())
    newer = producer.encode("InboundMessageV2", INBOUND | {"priority": 9})
    assert registry.lookups == []
    assert consumer.record_name_of(newer) == "InboundMessage"  # the schema's own name
    assert consumer.decode(newer) == INBOUND | {"priority": 9}
    assert consumer.decode(newer, reader="InboundMessage") == INBOUND
    assert registry.lookups == [v2_id]  # asked once, then cached
    with pytest.raises(CodecError, match="unknown schema id 999"):
        consumer.decode(b"\x00" + struct.pack(">I", 999) + newer[5:])
    registry.schemas[998] = "{broken"
    with pytest.raises(CodecError, match="registry schema 998 is not usable"):
        consumer.decode(b"\x00" + struct.pack(">I", 998) + newer[5:])


def test_a_shared_local_registry_lets_codecs_read_each_others_versions():
    shared = LocalRegistry()
    a, b = AvroCodec(registry=shared), AvroCodec(registry=shared)
    a.register("InboundMessageV2", _inbound_v2())
    data = a.encode("InboundMessageV2", INBOUND | {"priority": 1})
    assert b.decode(data, reader="InboundMessage") == INBOUND
    with pytest.raises(CodecError, match="unknown schema id"):
        AvroCodec().decode(data)  # its own registry never saw v2


# --- Faust ----------------------------------------------------------------------------------------


def test_faust_codecs_register_idempotently_under_avro_names():
    first = register_faust_codecs()
    codec_objects = {name: codecs.codecs[name] for name in first}
    assert first == [f"avro.{n}" for n in get_codec().record_names()]
    assert register_faust_codecs() == first
    assert all(codecs.codecs[name] is codec_objects[name] for name in first)
    assert isinstance(codecs.get_codec("avro.InboundMessage"), AvroRecordCodec)


@pytest.mark.parametrize("name", ["InboundMessage", "AnswerResult", "OutboundResult"])
def test_faust_codec_by_name_round_trips(name):
    register_faust_codecs()
    data = codecs.dumps(f"avro.{name}", EXAMPLES[name])
    assert data[:5] == _header(get_codec().schema_id(name))
    assert data == get_codec().encode(name, EXAMPLES[name])
    assert codecs.loads(f"avro.{name}", data) == EXAMPLES[name]


def test_faust_serializer_registry_with_raw_keys_and_avro_values():
    register_faust_codecs()
    registry = Registry(key_serializer="raw", value_serializer="avro.Feedback")
    key = registry.dumps_key(None, "codec-acme:15551234567")
    assert key == b"codec-acme:15551234567"
    value = registry.dumps_value(None, EXAMPLES["Feedback"])
    assert registry.loads_key(None, key) == b"codec-acme:15551234567"
    assert registry.loads_value(None, value) == EXAMPLES["Feedback"]
    # a record of another type on a Feedback topic is refused, not handed to the agent
    stranger = get_codec().encode("InboundMessage", INBOUND)
    with pytest.raises(ValueDecodeError, match="cannot read InboundMessage as Feedback"):
        registry.loads_value(None, stranger)
    with pytest.raises(ValueDecodeError, match="magic byte"):
        registry.loads_value(None, b'{"json": true}')
    with pytest.raises(CodecError, match="field 'is_positive'"):
        registry.dumps_value(None, EXAMPLES["Feedback"] | {"is_positive": "yes"})


# --- documentation --------------------------------------------------------------------------------


def _undocumented(schema: Any, where: str) -> list[str]:
    missing: list[str] = []
    if isinstance(schema, list):
        for branch in schema:
            missing += _undocumented(branch, where)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "enum") and not schema.get("doc"):
            missing.append(f"{where} (type {schema['name']})")
        if kind == "record":
            for field in schema["fields"]:
                if not field.get("doc"):
                    missing.append(f"{where}.{field['name']}")
                missing += _undocumented(field["type"], f"{where}.{field['name']}")
        elif kind == "array":
            missing += _undocumented(schema["items"], where)
        elif kind == "map":
            missing += _undocumented(schema["values"], where)
    return missing


def test_every_field_and_named_type_has_a_doc():
    missing = [
        gap
        for path in sorted(SCHEMAS.glob("*.avsc"))
        for gap in _undocumented(json.loads(path.read_text()), path.stem)
    ]
    assert not missing, missing


def test_the_doc_check_notices_a_missing_doc():
    schema = copy.deepcopy(_source("InboundMessage"))
    media = next(f for f in schema["fields"] if f["name"] == "media")
    del media["type"][1]["fields"][0]["doc"]  # media.media_id
    assert _undocumented(schema, "x") == ["x.media.media_id"]


def test_events_doc_is_generated_from_the_schemas_and_covers_every_record():
    from schemas.docs import render

    doc = (ROOT / "docs" / "events.md").read_text()
    assert doc == render(), "regenerate: python -m schemas.docs > docs/events.md"
    for name in EXAMPLES:
        assert f"## {name}\n" in doc
    for spec in topics.ALL:
        assert f"`{spec.name}`" in doc
