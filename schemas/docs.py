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

Every record on every topic is Avro, one `.avsc` per event in `schemas/` (namespace
`onyx_wa.events`), in the **Confluent wire format**: magic byte `0`, a 4-byte big-endian schema
id, then the Avro binary body. Keys are UTF-8 strings (see each topic's key below).

- **Schema ids** come from a local registry: the first 31 bits of the SHA-256 of the schema's
  Parsing Canonical Form. Every process derives the same id with no server. To use a Confluent
  Schema Registry instead, implement `schemas.codec.SchemaRegistry` (`id_for`, `schema_for`)
  with a registry client and pass it to `AvroCodec(registry=...)`: producers and consumers keep
  the same framing.
- **Timestamps** are `timestamp-millis`: write `int` milliseconds or aware `datetime`s; reads
  return aware UTC `datetime`s.
- **Evolution rules**: add fields only with a default; never rename a field or change its type;
  never reuse a removed field's name; enums only grow at the end. A reader with an added
  defaulted field reads old events (tested), and old readers ignore new fields.
- **Regenerate this file** with `python -m schemas.docs > docs/events.md` (a test checks it).
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
    out = [INTRO]
    for path in sorted(SCHEMA_DIR.glob("*.avsc")):
        schema = json.loads(path.read_text())
        name = schema["name"]
        specs = [s for s in topics.ALL if s.schema == name]
        out.append(f"## {name} (`schemas/{path.name}`)\n")
        out.append(schema.get("doc", "") + "\n")
        for spec in specs:
            out.append(f"- topic `{spec.name}`, key: {spec.key}")
        if specs:
            out.append("")
        out += _table(schema)
        out.append("")
        for f in schema["fields"]:
            for nested in _nested(f["type"]):
                out.append(f"**{nested['name']}** (nested in `{f['name']}`)\n")
                out += _table(nested)
                out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
