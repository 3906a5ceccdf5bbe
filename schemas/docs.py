"""Render ``docs/events.md`` from the ``.avsc`` files: ``python -m schemas.docs > docs/events.md``.

Why generated: the contracts are the source of truth; a test fails when the Markdown is stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from onyx_wa import topics

SCHEMA_DIR = Path(__file__).resolve().parent

INTRO = """# Event contracts

Every record on every topic is Avro: one `.avsc` per event in `schemas/` (namespace
`onyx_wa.events`), encoded by `schemas/codec.py` (`get_codec()`). This file is generated from the
schemas: edit the `.avsc` files, then run `python -m schemas.docs > docs/events.md` (a test fails
when it is stale).

## Wire format

Values are in the **Confluent wire format**, so any Confluent-compatible consumer (Java, Go,
kcat, ksqlDB with a registry) can read them:

| bytes | content |
|---|---|
| 0 | magic byte `0` |
| 1-4 | schema id, unsigned 32-bit big-endian |
| 5- | Avro binary body of the record (no container header, no sync markers) |

Keys are **not** Avro: they are raw UTF-8 strings (Faust `key_serializer="raw"`), listed per
topic below (`tenant:chat` keeps one conversation in order, `tenant:phone_number_id` gives each
sending number one owner). Faust topics use `value_serializer="avro.<RecordName>"`
(`schemas.faust_codec.register_faust_codecs()`), and agents send and receive plain dicts.

- **Timestamps** are `timestamp-millis`: write `int` epoch milliseconds or an *aware* `datetime`
  (a naive one is rejected, since fastavro would read it as local time); reads return aware UTC
  `datetime`s.
- **Encoding is strict**: a checker compiled once per schema rejects wrong types that fastavro's
  writer would silently coerce (`"yes"` for a boolean, a string for an array, out-of-range
  `int`s). `CodecError` names the record and the field path (`media.kind`, `errors[0].code`),
  never the value. Fields missing from the dict get their default; a missing field without a
  default is an error, and so is a key that is not a field (a typo would otherwise silently
  drop data).
- **Decoding** reads the schema id, decodes with that writer schema, and with
  `decode(data, reader="Name")` (what the Faust codecs do) resolves the record to the reader's
  schema. Bad magic byte, unknown id, truncated or trailing bytes raise `CodecError`.

## Schema ids

Ids come from a local registry with no server (`schemas.codec.LocalRegistry`): the first 31
bits of the SHA-256 of the self-contained schema's
[Parsing Canonical Form](https://avro.apache.org/docs/current/specification/#parsing-canonical-form-for-schemas)
(named types inlined with full names; `doc`, `default`, `aliases` and `logicalType` stripped,
so a logical-type change alone keeps the id: the evolution rules forbid it). Every process on
every host derives the same id from the same schema, editing a `doc` never changes an id, and any
change to what is on the wire does. A record that embeds another (`ClassifiedMessage.message` is
an `InboundMessage`, `OutboundResult.original` an `OutboundMessage`) gets a new id when the
embedded record changes, as it must.

**Plugging in a Confluent Schema Registry.** Implement the two methods of
`schemas.codec.SchemaRegistry` with a registry client and pass it as
`AvroCodec(registry=...)` (or make `get_codec()` build it so):

- `id_for(full_name, schema) -> int`: `POST /subjects/{full_name}/versions` with
  `{"schema": schema}` and return the `id`. `schema` is self-contained JSON (embedded records
  inlined, logical types and defaults kept); the subject is the record's full name (Confluent's
  `RecordNameStrategy`, since one record type sits on several topics). Called once per
  schema version when the codec loads, so an unreachable registry fails at startup, never on the
  hot path.
- `schema_for(schema_id) -> str | None`: `GET /schemas/ids/{schema_id}` and return its `schema`
  string (`None` on 404). Called only for an id this process has never seen (a newer producer's
  version) and cached forever, since registry ids are immutable.

Producers and consumers keep the same framing, so the switch needs no data migration as long as
every process switches together (ids from the two sources differ; a consumer that meets an id
it cannot resolve raises `CodecError` rather than guessing).

## Evolution rules

Producers and consumers are deployed independently and topics are replayed months later, so
every change must keep old and new readers working (full compatibility):

- **Add** a field only with a `default` (new readers fill it in for old events; old readers skip
  it in new events). Nullable fields are `["null", T]` with `"default": null`.
- **Never rename** a field or a record, and never change a field's type (add a new field
  instead); **never reuse** the name of a removed field for something else.
- Remove only fields that have a default, and only after every consumer stopped reading them.
- Enums only grow **at the end**, and only when every reader tolerates the new symbol.
- To test a new version, `AvroCodec.register("InboundMessageV2", schema)` adds it next to the
  current one: `decode(old_bytes, reader="InboundMessageV2")` and
  `decode(new_bytes, reader="InboundMessage")` exercise both directions (see
  `tests/test_schemas_codec.py`).
"""


def _type(t: Any) -> str:
    if isinstance(t, list):
        return " \\| ".join(_type(x) for x in t)
    if isinstance(t, str):
        return t.rsplit(".", 1)[-1]
    if t.get("logicalType"):
        return t["logicalType"]
    kind = t["type"]
    if kind == "array":
        return f"array<{_type(t['items'])}>"
    if kind == "map":
        return f"map<{_type(t['values'])}>"
    if kind == "enum":
        return f"enum {t['name']} ({', '.join(t['symbols'])})"
    if kind == "record":
        return f"record {t['name']}"
    return str(kind)


def _nested(t: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(t, list):
        for x in t:
            found += _nested(x)
    elif isinstance(t, dict):
        if t.get("type") == "record":
            found.append(t)
            for f in t["fields"]:
                found += _nested(f["type"])
        elif t.get("type") == "array":
            found += _nested(t["items"])
    return found


def _table(record: dict[str, Any]) -> list[str]:
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for f in record["fields"]:
        default = json.dumps(f["default"]) if "default" in f else ""
        doc = f.get("doc", "").replace("|", "\\|")
        lines.append(f"| `{f['name']}` | {_type(f['type'])} | {default} | {doc} |")
    return lines


def render() -> str:
    out = [INTRO, "## Topics\n", "| topic | record | key |", "|---|---|---|"]
    for spec in topics.ALL:
        record = f"[{spec.schema}](#{spec.schema.lower()})" if spec.schema else "(internal)"
        out.append(f"| `{spec.name}` | {record} | {spec.key} |")
    out.append("")
    for path in sorted(SCHEMA_DIR.glob("*.avsc")):
        schema = json.loads(path.read_text())
        name = schema["name"]
        specs = [s for s in topics.ALL if s.schema == name]
        out.append(f"## {name}\n")
        out.append(f"`schemas/{path.name}`: {schema.get('doc', '')}\n")
        for spec in specs:
            out.append(f"- topic `{spec.name}`, key: {spec.key}")
        if specs:
            out.append("")
        out += _table(schema)
        out.append("")
        for f in schema["fields"]:
            for nested in _nested(f["type"]):
                out.append(f"**{nested['name']}** (nested in `{f['name']}`)\n")
                if nested.get("doc"):
                    out.append(nested["doc"] + "\n")
                out += _table(nested)
                out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
