"""The Avro codec: Confluent framing, every record round-trips, evolution, interop with `avro`."""

from __future__ import annotations

import io
import json
import struct
from datetime import UTC, datetime
from typing import Any

import avro.io
import avro.schema
import pytest
from faust.serializers import codecs

from schemas.codec import AvroCodec, CodecError, get_codec
from schemas.faust_codec import register_faust_codecs

NOW = datetime(2026, 11, 25, 10, 30, 15, 123000, tzinfo=UTC)


def sample(schema: Any, codec: AvroCodec, depth: int = 0) -> Any:
    """A value for ``schema`` that uses every non-null branch (realistic enough to round-trip)."""
    if isinstance(schema, list):
        non_null = [s for s in schema if s != "null"]
        return sample(non_null[0], codec, depth) if non_null else None
    if isinstance(schema, str):
        simple = {
            "string": "ünïcode ✓ مرحبا",
            "int": 131056,
            "long": 2**40,
            "boolean": True,
            "bytes": b"\x00\xffraw",
            "double": 1.5,
            "float": 0.5,
        }
        if schema in simple:
            return simple[schema]
        return sample(codec._named[schema if "." in schema else f"onyx_wa.events.{schema}"], codec)
    kind = schema["type"]
    if schema.get("logicalType") == "timestamp-millis":
        return NOW
    if kind == "record":
        return {f["name"]: sample(f["type"], codec, depth + 1) for f in schema["fields"]}
    if kind == "enum":
        return schema["symbols"][-1]
    if kind == "array":
        return [sample(schema["items"], codec, depth + 1)]
    if kind == "map":
        return {"k": sample(schema["values"], codec, depth + 1)}
    return sample(kind, codec, depth)


@pytest.mark.parametrize("name", get_codec().record_names())
def test_every_record_round_trips_in_confluent_framing(name):
    codec = get_codec()
    record = sample(codec.parsed_schema(name), codec)
    data = codec.encode(name, record)
    magic, schema_id = struct.unpack(">bI", data[:5])
    assert magic == 0 and schema_id == codec.schema_id(name)
    assert codec.record_name_of(data) == name
    assert codec.decode(data) == record


def test_schema_ids_are_stable_across_processes_and_distinct():
    a, b = AvroCodec(), AvroCodec()
    ids = {n: a.schema_id(n) for n in a.record_names()}
    assert ids == {n: b.schema_id(n) for n in b.record_names()}
    assert len(set(ids.values())) == len(ids)


def _inbound_v2(codec: AvroCodec) -> dict[str, Any]:
    from pathlib import Path

    src = json.loads((Path(__file__).parents[1] / "schemas" / "inbound_message.avsc").read_text())
    src["fields"].append({"name": "priority", "type": "int", "default": 3, "doc": "added in v2"})
    return src


def test_evolution_new_reader_reads_old_events_with_the_default():
    codec = AvroCodec()
    old = sample(codec.parsed_schema("InboundMessage"), codec)
    old_bytes = codec.encode("InboundMessage", old)
    codec.register("InboundMessageV2", _inbound_v2(codec))
    upgraded = codec.decode(old_bytes, reader="InboundMessageV2")
    assert upgraded["priority"] == 3 and upgraded["message_id"] == old["message_id"]


def test_evolution_old_reader_drops_the_new_field():
    codec = AvroCodec()
    codec.register("InboundMessageV2", _inbound_v2(codec))
    new = sample(codec.parsed_schema("InboundMessage"), codec) | {"priority": 9}
    new_bytes = codec.encode("InboundMessageV2", new)
    old_view = codec.decode(new_bytes, reader="InboundMessage")
    assert "priority" not in old_view and old_view["text"] == new["text"]


def _official(name: str, codec: AvroCodec) -> avro.schema.Schema:
    names = avro.schema.Names()
    for dep in ("InboundMessage", "OutboundMessage"):
        if dep != name:
            avro.schema.make_avsc_object(json.loads(json.dumps(_src(dep))), names)
    return avro.schema.make_avsc_object(_src(name), names)


def _src(name: str) -> dict[str, Any]:
    from pathlib import Path

    for path in (Path(__file__).parents[1] / "schemas").glob("*.avsc"):
        data = json.loads(path.read_text())
        if data["name"] == name:
            return data
    raise KeyError(name)


@pytest.mark.parametrize("name", ["InboundMessage", "ClassifiedMessage", "OutboundResult"])
def test_interop_fastavro_writes_official_avro_reads_and_back(name):
    codec = get_codec()
    record = sample(codec.parsed_schema(name), codec)
    data = codec.encode(name, record)
    official = _official(name, codec)
    read = avro.io.DatumReader(official).read(avro.io.BinaryDecoder(io.BytesIO(data[5:])))
    assert json.dumps(read, default=str, sort_keys=True) == json.dumps(
        record, default=str, sort_keys=True
    )
    out = io.BytesIO()
    avro.io.DatumWriter(official).write(read, avro.io.BinaryEncoder(out))
    assert codec.decode(data[:5] + out.getvalue()) == record


def test_bad_magic_unknown_id_truncated_and_trailing_bytes():
    codec = get_codec()
    good = codec.encode("Feedback", sample(codec.parsed_schema("Feedback"), codec))
    with pytest.raises(CodecError, match="magic byte 1"):
        codec.decode(b"\x01" + good[1:])
    with pytest.raises(CodecError, match="unknown schema id"):
        codec.decode(b"\x00\x00\x00\x00\x01" + good[5:])
    with pytest.raises(CodecError, match="truncated"):
        codec.decode(good[:3])
    with pytest.raises(CodecError, match="cannot decode Feedback"):
        codec.decode(good[:-4])
    with pytest.raises(CodecError, match="trailing"):
        codec.decode(good + b"xx")


def test_encode_errors_name_the_field():
    codec = get_codec()
    record = sample(codec.parsed_schema("Feedback"), codec)
    with pytest.raises(CodecError, match="missing required field 'tenant_id'"):
        codec.encode("Feedback", {k: v for k, v in record.items() if k != "tenant_id"})
    with pytest.raises(CodecError, match="field 'is_positive'"):
        codec.encode("Feedback", record | {"is_positive": "yes"})
    with pytest.raises(CodecError, match="unknown record"):
        codec.encode("Nope", record)


def test_every_field_is_documented():
    from pathlib import Path

    def walk(schema: Any, where: str):
        if isinstance(schema, dict) and schema.get("type") == "record":
            for field in schema["fields"]:
                yield f"{where}.{field['name']}", field
                yield from walk(field["type"], f"{where}.{field['name']}")
        elif isinstance(schema, list):
            for s in schema:
                yield from walk(s, where)
        elif isinstance(schema, dict) and schema.get("type") == "array":
            yield from walk(schema["items"], where)

    undocumented = [
        path
        for f in sorted((Path(__file__).parents[1] / "schemas").glob("*.avsc"))
        for path, field in walk(json.loads(f.read_text()), f.stem)
        if not field.get("doc")
    ]
    assert not undocumented, undocumented


def test_faust_codec_by_name():
    register_faust_codecs()
    codec = get_codec()
    record = sample(codec.parsed_schema("AnswerResult"), codec)
    data = codecs.dumps("avro.AnswerResult", record)
    assert data[:5] == b"\x00" + struct.pack(">I", codec.schema_id("AnswerResult"))
    assert codecs.loads("avro.AnswerResult", data) == record


def test_events_doc_is_generated_from_the_schemas():
    from pathlib import Path

    from schemas.docs import render

    doc = (Path(__file__).parents[1] / "docs" / "events.md").read_text()
    assert doc == render(), "regenerate: python -m schemas.docs > docs/events.md"
