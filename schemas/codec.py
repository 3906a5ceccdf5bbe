"""Avro records in the Confluent wire format, with a local schema-id registry.

Wire format: magic byte ``0``, a 4-byte big-endian schema id, then the Avro binary body. Using
Confluent's framing means a real Schema Registry can replace the local registry later without
changing a single producer or consumer.

Schema ids: a registry server normally hands them out. Here every process derives them from the
schema itself (the first 31 bits of the SHA-256 of its Parsing Canonical Form), so producers and
consumers on different hosts agree with no server and no shared state. A Confluent registry
client can take over by implementing :class:`SchemaRegistry` (``id_for`` / ``schema_for``).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import fastavro
from fastavro.schema import to_parsing_canonical_form

SCHEMA_DIR = Path(__file__).resolve().parent
NAMESPACE = "onyx_wa.events"
MAGIC = 0
_HEADER = struct.Struct(">bI")


class CodecError(ValueError):
    """Bytes that are not a known record, or a record that does not match its schema."""


class SchemaRegistry(Protocol):
    """Where schema ids come from. The local one derives them; a Confluent client asks."""

    def id_for(self, full_name: str, canonical: str) -> int: ...

    def schema_for(self, schema_id: int) -> str | None: ...


class LocalRegistry:
    """Deterministic ids from the canonical form: no server, same ids everywhere."""

    def __init__(self) -> None:
        self._by_id: dict[int, str] = {}

    def id_for(self, full_name: str, canonical: str) -> int:
        digest = hashlib.sha256(canonical.encode()).digest()
        schema_id = int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
        known = self._by_id.get(schema_id)
        if known is not None and known != canonical:  # pragma: no cover - 2^-31 odds
            raise CodecError(f"schema id collision for {full_name}")
        self._by_id[schema_id] = canonical
        return schema_id

    def schema_for(self, schema_id: int) -> str | None:
        return self._by_id.get(schema_id)


def _load_sources(directory: Path) -> dict[str, dict[str, Any]]:
    sources = {}
    for path in sorted(directory.glob("*.avsc")):
        schema = json.loads(path.read_text())
        sources[f"{schema.get('namespace', NAMESPACE)}.{schema['name']}"] = schema
    return sources


class AvroCodec:
    """Encode/decode every project record; resolves cross-file named types in any order."""

    def __init__(
        self,
        directory: Path = SCHEMA_DIR,
        registry: SchemaRegistry | None = None,
        *,
        validate: bool = True,
    ) -> None:
        # fastavro's writer silently coerces some wrong types (a "yes" string for a boolean):
        # validating first costs a few microseconds and keeps bad records off the topics.
        self.validate = validate
        self.registry = registry or LocalRegistry()
        self._sources = _load_sources(directory)
        self._named: dict[str, Any] = {}
        self._parsed: dict[str, Any] = {}  # short name -> newest parsed schema
        self._ids: dict[str, int] = {}  # short name -> newest schema id
        self._by_id: dict[int, tuple[str, Any]] = {}
        for full_name in self._dependency_order():
            self._add(full_name.rsplit(".", 1)[-1], self._sources[full_name])

    def _dependency_order(self) -> list[str]:
        """Files whose named types others reference come first."""
        order: list[str] = []

        def refs(node: Any) -> Iterable[str]:
            if isinstance(node, str) and "." in node and node in self._sources:
                yield node
            elif isinstance(node, dict):
                for value in node.values():
                    yield from refs(value)
            elif isinstance(node, list):
                for value in node:
                    yield from refs(value)

        def visit(name: str, stack: tuple[str, ...] = ()) -> None:
            if name in order:
                return
            if name in stack:
                raise CodecError(f"circular schema references through {name}")
            for dep in refs(self._sources[name]):
                if dep != name:
                    visit(dep, (*stack, name))
            order.append(name)

        for name in self._sources:
            visit(name)
        return order

    def _add(self, short: str, schema: dict[str, Any]) -> int:
        parsed = fastavro.parse_schema(schema, named_schemas=self._named)
        canonical = to_parsing_canonical_form(parsed)
        schema_id = self.registry.id_for(f"{NAMESPACE}.{short}", canonical)
        self._parsed[short] = parsed
        self._ids[short] = schema_id
        self._by_id[schema_id] = (short, parsed)
        return schema_id

    # --- public API ------------------------------------------------------------------------------
    def register(self, record_name: str, schema: dict[str, Any]) -> int:
        """Add a new version of ``record_name`` (it becomes the writer schema for encode)."""
        named = dict(self._named)
        named.pop(f"{schema.get('namespace', NAMESPACE)}.{schema['name']}", None)
        parsed = fastavro.parse_schema(schema, named_schemas=named)
        canonical = to_parsing_canonical_form(parsed)
        schema_id = self.registry.id_for(f"{NAMESPACE}.{record_name}", canonical)
        self._parsed[record_name] = parsed
        self._ids[record_name] = schema_id
        self._by_id[schema_id] = (record_name, parsed)
        return schema_id

    def record_names(self) -> list[str]:
        return sorted(self._parsed)

    def schema_id(self, record_name: str) -> int:
        try:
            return self._ids[record_name]
        except KeyError:
            raise CodecError(f"unknown record {record_name!r}") from None

    def parsed_schema(self, record_name: str) -> Any:
        try:
            return self._parsed[record_name]
        except KeyError:
            raise CodecError(f"unknown record {record_name!r}") from None

    def encode(
        self, record_name: str, record: dict[str, Any], *, validate: bool | None = None
    ) -> bytes:
        """Encode ``record``; ``validate=False`` skips the type check for records built by
        trusted code on a hot path (fastavro still rejects structurally wrong records)."""
        schema = self.parsed_schema(record_name)
        check = self.validate if validate is None else validate
        out = io.BytesIO()
        out.write(_HEADER.pack(MAGIC, self._ids[record_name]))
        try:
            if check and not fastavro.validation.validate(record, schema, raise_errors=False):
                raise ValueError("record does not match its schema")
            fastavro.schemaless_writer(out, schema, record, strict_allow_default=True)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            problem = _explain(schema, record) or f"{type(exc).__name__}: {exc}"
            raise CodecError(f"cannot encode {record_name}: {problem}") from None
        return out.getvalue()

    def _header(self, data: bytes) -> tuple[str, Any]:
        if len(data) < _HEADER.size:
            raise CodecError(f"truncated record: {len(data)} bytes, the header alone is 5")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise CodecError(f"not Confluent wire format: magic byte {magic}, expected 0")
        found = self._by_id.get(schema_id)
        if found is None:
            raise CodecError(f"unknown schema id {schema_id}")
        return found

    def record_name_of(self, data: bytes) -> str:
        return self._header(data)[0]

    def decode(self, data: bytes, reader: str | None = None) -> dict[str, Any]:
        name, writer = self._header(data)
        reader_schema = self.parsed_schema(reader) if reader else None
        body = io.BytesIO(memoryview(data)[_HEADER.size :])
        try:
            record = fastavro.schemaless_reader(body, writer, reader_schema)
        except Exception as exc:
            raise CodecError(f"cannot decode {name}: {type(exc).__name__}: {exc}") from None
        if body.tell() != len(data) - _HEADER.size:
            raise CodecError(f"cannot decode {name}: {len(data) - 5 - body.tell()} trailing bytes")
        return record  # type: ignore[return-value]


def _explain(schema: Any, record: Any) -> str | None:
    """Name the first field that does not validate (only on the error path: it is slow)."""
    if not isinstance(record, dict):
        return f"expected a dict, got {type(record).__name__}"
    for field_schema in schema.get("fields", []):
        name = field_schema["name"]
        if name not in record and "default" not in field_schema:
            return f"missing required field {name!r}"
        if name in record and not fastavro.validation.validate(
            record[name], field_schema["type"], raise_errors=False
        ):
            return f"field {name!r} does not match {json.dumps(field_schema['type'])[:120]}"
    return None


@functools.lru_cache(maxsize=1)
def get_codec() -> AvroCodec:
    """The process-wide codec over ``schemas/*.avsc``."""
    return AvroCodec()
