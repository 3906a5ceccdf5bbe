"""Avro records in the Confluent wire format, with a local schema-id registry.

Wire format (what every producer writes and every consumer expects, Confluent-compatible)::

    byte 0      magic byte, always 0
    bytes 1-4   schema id, unsigned 32-bit big-endian
    bytes 5-    the Avro binary body (no container header, no sync markers)

Schema ids: a registry server normally hands them out. Here every process derives them from the
writer schema itself: the first 31 bits of the SHA-256 of its Parsing Canonical Form (docs,
defaults and aliases stripped, named types inlined, full names), so producers and consumers on
different hosts agree with no server and no shared state, and editing a ``doc`` never changes an
id. A Confluent Schema Registry takes over by passing ``AvroCodec(registry=...)`` an object with
the two methods of :class:`SchemaRegistry` (see ``docs/events.md``); the framing stays the same.

Timestamps are ``timestamp-millis``: ``encode`` takes ``int`` epoch milliseconds or an *aware*
``datetime`` (a naive one is rejected: fastavro would silently read it as local time), and
``decode`` returns aware UTC ``datetime`` objects.

Validation: fastavro's writer silently coerces some wrong values (``"yes"`` for a boolean, a
string for an array of strings, an out-of-range ``int``, a naive datetime), so ``encode`` first
runs a checker compiled once per schema (closures, no per-call schema walking: a few
microseconds per record). Errors name the record and the field path (``media.kind``,
``errors[0].code``) and never echo the value itself, which may be a user's message.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import struct
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import fastavro
import fastavro.validation
from fastavro.schema import to_parsing_canonical_form

SCHEMA_DIR = Path(__file__).resolve().parent
NAMESPACE = "onyx_wa.events"
MAGIC = 0
HEADER_SIZE = 5
_HEADER = struct.Struct(">BI")
_MISSING = object()


class CodecError(ValueError):
    """Bytes that are not a known record, or a record that does not match its schema."""


class SchemaRegistry(Protocol):
    """Where schema ids come from. The local one derives them; a Confluent client asks a server.

    ``id_for`` is called once per schema version when the codec loads or registers it (startup),
    ``schema_for`` only for an id this process has never seen (a newer producer's version); the
    codec caches both, so the per-record hot path never calls the registry.
    """

    def id_for(self, full_name: str, schema: str) -> int:
        """The id of ``schema`` (self-contained JSON: named types inlined, logical types and
        defaults kept) under the subject ``full_name``."""
        ...

    def schema_for(self, schema_id: int) -> str | None:
        """The schema JSON for ``schema_id``, or ``None`` when the id is unknown."""
        ...


def derive_schema_id(canonical: str) -> int:
    """The local id of a schema: 31 bits of SHA-256 of its canonical form (a positive int32)."""
    return int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:4], "big") & 0x7FFFFFFF


class LocalRegistry:
    """Deterministic ids from the canonical form: no server, the same ids on every host.

    One instance may be shared by several codecs (e.g. in tests, standing in for a remote
    registry): a codec asks it for schemas of ids it did not load itself.
    """

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[str, str]] = {}  # id -> (canonical form, first schema JSON)

    def id_for(self, full_name: str, schema: str) -> int:
        canonical = to_parsing_canonical_form(json.loads(schema))
        schema_id = derive_schema_id(canonical)
        known, _ = self._by_id.setdefault(schema_id, (canonical, schema))
        if known != canonical:  # pragma: no cover - 2^-31 odds, but never silently confuse two
            raise CodecError(f"schema id {schema_id} collision for {full_name}")
        return schema_id

    def schema_for(self, schema_id: int) -> str | None:
        found = self._by_id.get(schema_id)
        return found[1] if found else None


# --- schema loading ---------------------------------------------------------------------------


def _full_name(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def declared_names(schema: Any, namespace: str | None = None) -> Iterator[str]:
    """Full names of every named type (record, enum, fixed) a schema source *defines*."""
    if isinstance(schema, list):
        for branch in schema:
            yield from declared_names(branch, namespace)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            full = _full_name(schema["name"], schema.get("namespace", namespace))
            yield full
            namespace = full.rpartition(".")[0] or None
        if kind in ("record", "error"):
            for field in schema.get("fields", []):
                if isinstance(field, dict):
                    yield from declared_names(field.get("type"), namespace)
        elif kind == "array":
            yield from declared_names(schema["items"], namespace)
        elif kind == "map":
            yield from declared_names(schema["values"], namespace)
        elif isinstance(kind, (dict, list)):
            yield from declared_names(kind, namespace)


def load_sources(directory: Path = SCHEMA_DIR) -> dict[str, dict[str, Any]]:
    """Every ``*.avsc`` in ``directory`` by the full name of its top-level record."""
    sources: dict[str, dict[str, Any]] = {}
    owner: dict[str, str] = {}
    for path in sorted(directory.glob("*.avsc")):
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CodecError(f"{path.name} is not valid JSON: {exc}") from None
        if not isinstance(schema, dict) or schema.get("type") != "record":
            raise CodecError(f"{path.name} must hold one top-level record schema")
        for full in declared_names(schema, NAMESPACE):
            # fastavro lets a later definition silently replace an earlier one: refuse instead
            if full in owner:
                raise CodecError(f"{full} is defined in both {owner[full]} and {path.name}")
            owner[full] = path.name
        sources[_full_name(schema["name"], schema.get("namespace", NAMESPACE))] = schema
    return sources


def parse_all(sources: Mapping[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parse sources that reference each other's named types, in any file order.

    Returns (full name -> parsed top-level schema, every named type). Each attempt parses into a
    copy of the named types so a failed attempt (a reference not defined yet) leaves no residue.
    """
    named: dict[str, Any] = {}
    parsed: dict[str, Any] = {}
    pending = dict(sources)
    while pending:
        missing: dict[str, str] = {}
        progressed = False
        for full, source in list(pending.items()):
            trial = dict(named)
            try:
                parsed[full] = fastavro.parse_schema(source, named_schemas=trial)
            except fastavro.schema.UnknownType as exc:
                missing[full] = exc.name
                continue
            except fastavro.schema.SchemaParseException as exc:
                raise CodecError(f"invalid schema {full}: {exc}") from None
            named = trial
            del pending[full]
            progressed = True
        if not progressed:
            detail = ", ".join(f"{who} needs {what}" for who, what in sorted(missing.items()))
            raise CodecError(f"unresolvable schema references: {detail}")
    return parsed, named


def self_contained(parsed: Any, named: Mapping[str, Any]) -> Any:
    """``parsed`` as plain JSON with every named type defined inline at its first use.

    Why: fastavro leaves a type defined in another file as a bare name, and a canonical form or
    registry entry built from that would not change when the referenced record does: two
    different wire layouts would share one id. fastavro's private ``__*`` keys are dropped.
    """
    defined: set[str] = set()

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            if node in named and node not in defined:
                return walk(named[node])
            return node
        if isinstance(node, list):
            return [walk(branch) for branch in node]
        if not isinstance(node, dict):
            return node
        out = {k: v for k, v in node.items() if not k.startswith("__")}
        if out.get("type") in ("record", "error", "enum", "fixed") and "name" in out:
            defined.add(out["name"])
        if "fields" in out:
            out["fields"] = [{**f, "type": walk(f["type"])} for f in out["fields"]]
        for key in ("items", "values"):
            if key in out:
                out[key] = walk(out[key])
        if isinstance(out.get("type"), (dict, list)):
            out["type"] = walk(out["type"])
        return out

    return walk(parsed)


# --- compiled validation ----------------------------------------------------------------------

Check = Callable[[Any], None]
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


class _Mismatch(Exception):
    """Raised by a compiled check; the path is collected innermost first as it propagates."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.parts: list[str] = []

    def at(self, part: str) -> _Mismatch:
        self.parts.append(part)
        return self

    @property
    def path(self) -> str:
        out = ""
        for part in reversed(self.parts):
            out += part if part.startswith("[") or not out else f".{part}"
        return out

    def describe(self) -> str:
        if self.message == "missing":
            return f"missing required field {self.path!r}"
        return f"field {self.path!r}: {self.message}" if self.parts else self.message


def _got(value: Any) -> str:
    return f"got {type(value).__name__}"


def _check_null(value: Any) -> None:
    if value is not None:
        raise _Mismatch(f"expected null, {_got(value)}")


def _check_boolean(value: Any) -> None:
    if value is not True and value is not False:
        raise _Mismatch(f"expected boolean, {_got(value)}")


def _integer(kind: str, bounds: tuple[int, int]) -> Check:
    low, high = bounds

    def check(value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Mismatch(f"expected {kind}, {_got(value)}")
        if not low <= value <= high:
            raise _Mismatch(f"{kind} out of range [{low}, {high}]")

    return check


def _check_number(value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _Mismatch(f"expected a number, {_got(value)}")


def _check_string(value: Any) -> None:
    if not isinstance(value, str):
        raise _Mismatch(f"expected string, {_got(value)}")


def _check_bytes(value: Any) -> None:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise _Mismatch(f"expected bytes, {_got(value)}")


_check_long = _integer("long", _INT64)


def _check_timestamp(value: Any) -> None:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise _Mismatch("naive datetime: pass an aware datetime (tzinfo=UTC) or int ms")
        return
    _check_long(value)


_PRIMITIVES: dict[str, Check] = {
    "null": _check_null,
    "boolean": _check_boolean,
    "int": _integer("int", _INT32),
    "long": _check_long,
    "float": _check_number,
    "double": _check_number,
    "string": _check_string,
    "bytes": _check_bytes,
}


class _Compiler:
    """Turns a parsed schema into nested closures that check a value without walking JSON."""

    def __init__(self, named: Mapping[str, Any]) -> None:
        self.named = named
        self.by_name: dict[str, Check] = {}

    def compile(self, schema: Any) -> Check:
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return _PRIMITIVES[schema]
            if schema not in self.by_name:
                if schema not in self.named:
                    raise CodecError(f"unknown named type {schema}")
                self.compile(self.named[schema])
            return self.by_name[schema]
        if isinstance(schema, list):
            return self._union(schema)
        kind = schema["type"]
        logical = schema.get("logicalType")
        if logical in ("timestamp-millis", "timestamp-micros") and kind == "long":
            return _check_timestamp
        if logical is not None:
            return self._fastavro(schema)
        if kind in ("record", "error"):
            return self._record(schema)
        if kind == "enum":
            return self._enum(schema)
        if kind == "array":
            return self._array(schema)
        if kind == "map":
            return self._map(schema)
        if kind == "fixed":
            return self._fixed(schema)
        return self.compile(kind)

    def _record(self, schema: dict[str, Any]) -> Check:
        slot: list[Check] = []
        # a forward reference first, so recursive types compile instead of recursing forever
        self.by_name[schema["name"]] = lambda value: slot[0](value)
        fields = [
            (field["name"], self.compile(field["type"]), "default" in field)
            for field in schema["fields"]
        ]
        names = frozenset(name for name, _, _ in fields)

        def check(value: Any) -> None:
            if not isinstance(value, Mapping):
                raise _Mismatch(f"expected a record (dict), {_got(value)}")
            present = 0
            for name, check_field, has_default in fields:
                item = value.get(name, _MISSING)
                if item is _MISSING:
                    if not has_default:
                        raise _Mismatch("missing").at(name)
                    continue
                present += 1
                try:
                    check_field(item)
                except _Mismatch as exc:
                    raise exc.at(name) from None
            if present != len(value):
                # a typo'd field name would otherwise vanish (or, unchecked, fail in fastavro)
                unknown = sorted(str(k) for k in value if k not in names)
                raise _Mismatch(f"unknown field(s) {', '.join(map(repr, unknown))}")

        slot.append(check)
        self.by_name[schema["name"]] = check
        return check

    def _union(self, branches: list[Any]) -> Check:
        others = [b for b in branches if b != "null"]
        nullable = len(others) < len(branches)
        if nullable and len(others) == 1:
            inner = self.compile(others[0])

            def optional(value: Any) -> None:
                if value is not None:
                    inner(value)  # its own message is the precise one (e.g. a nested field)

            return optional
        checks = [self.compile(b) for b in branches]
        labels = " | ".join(
            b if isinstance(b, str) else str(b.get("name", b["type"])) for b in branches
        )

        def check(value: Any) -> None:
            for candidate in checks:
                try:
                    candidate(value)
                except _Mismatch:
                    continue
                return
            raise _Mismatch(f"expected one of {labels}, {_got(value)}")

        return check

    @staticmethod
    def _enum(schema: dict[str, Any]) -> Check:
        symbols = frozenset(schema["symbols"])
        expected = f"a symbol of enum {schema['name'].rpartition('.')[2]} "
        expected += f"({', '.join(schema['symbols'])})"

        def check(value: Any) -> None:
            if not isinstance(value, str) or value not in symbols:
                raise _Mismatch(f"expected {expected}, {_got(value)} not in it")

        return check

    def _array(self, schema: dict[str, Any]) -> Check:
        items = self.compile(schema["items"])

        def check(value: Any) -> None:
            if not isinstance(value, (list, tuple)):
                raise _Mismatch(f"expected an array (list), {_got(value)}")
            for index, item in enumerate(value):
                try:
                    items(item)
                except _Mismatch as exc:
                    raise exc.at(f"[{index}]") from None

        return check

    def _map(self, schema: dict[str, Any]) -> Check:
        values = self.compile(schema["values"])

        def check(value: Any) -> None:
            if not isinstance(value, Mapping):
                raise _Mismatch(f"expected a map (dict), {_got(value)}")
            for key, item in value.items():
                if not isinstance(key, str):
                    raise _Mismatch(f"map keys must be strings, got {type(key).__name__}")
                try:
                    values(item)
                except _Mismatch as exc:
                    raise exc.at(f"[{key!r}]") from None

        return check

    def _fixed(self, schema: dict[str, Any]) -> Check:
        size = schema["size"]

        def check(value: Any) -> None:
            if not isinstance(value, (bytes, bytearray)) or len(value) != size:
                raise _Mismatch(f"expected {size} bytes (fixed), {_got(value)}")

        self.by_name[schema["name"]] = check
        return check

    def _fastavro(self, schema: dict[str, Any]) -> Check:
        """Other logical types (date, uuid, decimal...): rare, so fastavro's own check will do."""

        def check(value: Any) -> None:
            if not fastavro.validation.validate(value, schema, raise_errors=False):
                raise _Mismatch(f"not a valid {schema['logicalType']}, {_got(value)}")

        if schema["type"] == "fixed":
            self.by_name[schema["name"]] = check
        return check


# --- the codec --------------------------------------------------------------------------------


class _Version(NamedTuple):
    """One schema version: what encode needs in one lookup."""

    record_name: str
    schema_id: int
    parsed: Any
    check: Check
    header: bytes
    contained: Any  # the self-contained JSON form (named types inline): what the id is of


class _Head(NamedTuple):
    """A record's schema without its last (nested record) field: see ``encode_spliced``."""

    parsed: Any
    check: Check
    tail_field: str


def _framed(
    record_name: str,
    version: _Version,
    parsed: Any,
    check: Check,
    record: Mapping[str, Any],
    validate: bool,
) -> bytes:
    """``version``'s header and ``record``'s body written with ``parsed``, checked with
    ``check`` first when ``validate``. A writer error is explained by the check (the field)."""
    if validate:
        try:
            check(record)
        except _Mismatch as exc:
            raise CodecError(f"cannot encode {record_name}: {exc.describe()}") from None
    out = io.BytesIO()
    out.write(version.header)
    try:
        fastavro.schemaless_writer(out, parsed, record, strict_allow_default=True)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
        try:
            check(record)
            problem = f"{type(exc).__name__} from the Avro writer"
        except _Mismatch as mismatch:
            problem = mismatch.describe()
        raise CodecError(f"cannot encode {record_name}: {problem}") from None
    return out.getvalue()


def _canonical(schema: Any) -> str:
    return to_parsing_canonical_form(fastavro.parse_schema(schema, named_schemas={}))


def _short(full_name: str) -> str:
    return full_name.rpartition(".")[2]


class AvroCodec:
    """Encode/decode every project record: Confluent framing, derived ids, strict encode.

    ``register`` adds versions: the newest version of a record name is the writer for
    ``encode`` and the reader for ``decode(..., reader=name)``; every version ever seen stays
    decodable by its id.
    """

    def __init__(
        self,
        directory: Path = SCHEMA_DIR,
        registry: SchemaRegistry | None = None,
        *,
        validate: bool = True,
    ) -> None:
        self.validate = validate
        self.registry: SchemaRegistry = registry if registry is not None else LocalRegistry()
        parsed, self._named = parse_all(load_sources(directory))
        self._latest: dict[str, _Version] = {}
        self._by_id: dict[int, _Version] = {}
        # (outer schema id, tail writer id) -> the head's schema, or None: cannot splice
        self._heads: dict[tuple[int, int], _Head | None] = {}
        for full_name, schema in sorted(parsed.items()):
            self._add(_short(full_name), schema, self._named)

    def _add(self, record_name: str, parsed: Any, named: Mapping[str, Any]) -> _Version:
        contained = self_contained(parsed, named)
        full = json.dumps(contained, separators=(",", ":"))
        schema_id = self.registry.id_for(parsed["name"], full)
        version = _Version(
            record_name,
            schema_id,
            parsed,
            _Compiler(named).compile(parsed),
            _HEADER.pack(MAGIC, schema_id),
            contained,
        )
        self._latest[record_name] = version
        # the first name an id was known by stays its name (record_name_of is stable)
        self._by_id.setdefault(schema_id, version)
        return version

    # --- public API ---------------------------------------------------------------------------
    def register(self, record_name: str, schema: dict[str, Any]) -> int:
        """Add a version of ``record_name`` (it becomes the writer for encode); returns its id.

        ``schema`` may reference the loaded named types (e.g. ``onyx_wa.events.InboundMessage``)
        and may redefine its own and nested ones: it is parsed against a copy, so the loaded
        records keep their definitions. Use a new ``record_name`` (e.g. ``InboundMessageV2``) to
        keep the old version available as a reader under its old name.
        """
        named = dict(self._named)
        for full in declared_names(schema, NAMESPACE):
            named.pop(full, None)
        try:
            parsed = fastavro.parse_schema(schema, named_schemas=named)
        except (fastavro.schema.SchemaParseException, KeyError, TypeError) as exc:
            raise CodecError(f"invalid schema for {record_name}: {exc}") from None
        return self._add(record_name, parsed, named).schema_id

    def record_names(self) -> list[str]:
        """Every record name ``encode`` accepts, sorted."""
        return sorted(self._latest)

    def _version(self, record_name: str) -> _Version:
        try:
            return self._latest[record_name]
        except KeyError:
            raise CodecError(f"unknown record {record_name!r}") from None

    def schema_id(self, record_name: str) -> int:
        """The id ``encode`` writes for ``record_name`` (its newest version)."""
        return self._version(record_name).schema_id

    def parsed_schema(self, record_name: str) -> Any:
        """fastavro's parsed form of the newest version (a dict with ``fields``)."""
        return self._version(record_name).parsed

    def encode(
        self, record_name: str, record: dict[str, Any], *, validate: bool | None = None
    ) -> bytes:
        """Frame and encode ``record``. ``validate=False`` skips the compiled check for records
        built by trusted code on a hot path (fastavro still rejects structurally wrong ones)."""
        version = self._version(record_name)
        checked = self.validate if validate is None else validate
        return _framed(record_name, version, version.parsed, version.check, record, checked)

    def encode_spliced(
        self, record_name: str, record: Mapping[str, Any], framed_tail: bytes
    ) -> bytes:
        """``encode(record_name, record)``, reusing the body of its last field's record.

        ``record``'s last field holds a record that was decoded from ``framed_tail`` (framed
        bytes read from a topic) and not changed since. Avro writes a record as its fields in
        order, so the body is the other fields' body followed by the tail's body, and only the
        head needs encoding. Why: the classified message embeds the inbound message unchanged,
        and re-encoding it cost more than the rest of the conversation stage's encoding.
        Falls back to a plain ``encode`` when ``framed_tail`` was written with a schema whose
        binary layout differs from the field's (an older or newer producer)."""
        version = self._version(record_name)
        tail = self._writer_of(framed_tail)
        pair = (version.schema_id, tail.schema_id)
        head = self._heads[pair] if pair in self._heads else self._head(pair, version, tail)
        if head is None:
            return self.encode(record_name, dict(record))
        fields = {k: v for k, v in record.items() if k != head.tail_field}
        head_bytes = _framed(record_name, version, head.parsed, head.check, fields, self.validate)
        return head_bytes + memoryview(framed_tail)[HEADER_SIZE:]

    def _head(self, pair: tuple[int, int], version: _Version, tail: _Version) -> _Head | None:
        """The schema of ``version`` without its last field, if that field's binary layout is
        the one ``tail`` was written with (same Parsing Canonical Form); else None."""
        head = None
        fields = version.contained.get("fields") or []
        nested = fields[-1]["type"] if fields else None
        if isinstance(nested, dict) and nested.get("type") == "record":
            same = _canonical(nested) == _canonical(tail.contained)
            if same:
                source = {**version.contained, "name": f"{version.contained['name']}Head"}
                source["fields"] = fields[:-1]
                named: dict[str, Any] = {}
                parsed = fastavro.parse_schema(source, named_schemas=named)
                head = _Head(parsed, _Compiler(named).compile(parsed), fields[-1]["name"])
        self._heads[pair] = head
        return head

    def _writer_of(self, data: bytes | bytearray | memoryview) -> _Version:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise CodecError(f"expected bytes, got {type(data).__name__}")
        if len(data) < HEADER_SIZE:
            raise CodecError(f"truncated record: {len(data)} bytes, the header alone is 5")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise CodecError(f"not Confluent wire format: magic byte {magic}, expected 0")
        version = self._by_id.get(schema_id)
        if version is None:
            version = self._fetch(schema_id)
        return version

    def _fetch(self, schema_id: int) -> _Version:
        """A version this process never loaded: ask the registry once, then cache it."""
        text = self.registry.schema_for(schema_id)
        if text is None:
            raise CodecError(f"unknown schema id {schema_id}")
        try:
            named: dict[str, Any] = {}
            contained = json.loads(text)
            parsed = fastavro.parse_schema(contained, named_schemas=named)
        except (ValueError, KeyError, TypeError, fastavro.schema.SchemaParseException) as exc:
            raise CodecError(f"registry schema {schema_id} is not usable: {exc}") from None
        version = _Version(
            _short(parsed["name"]),
            schema_id,
            parsed,
            _Compiler(named).compile(parsed),
            _HEADER.pack(MAGIC, schema_id),
            contained,
        )
        return self._by_id.setdefault(schema_id, version)

    def record_name_of(self, data: bytes) -> str:
        """The record name of framed bytes, from the header alone (no body decoding)."""
        return self._writer_of(data).record_name

    def decode(self, data: bytes, reader: str | None = None) -> dict[str, Any]:
        """Decode framed bytes with the writer schema named by their id.

        With ``reader``, the record is resolved to that record name's newest schema (Avro schema
        resolution: added fields get their defaults, removed fields are dropped).
        """
        writer = self._writer_of(data)
        reader_schema = None
        if reader is not None:
            target = self._version(reader).parsed
            reader_schema = None if target is writer.parsed else target
        body = io.BytesIO(memoryview(data)[HEADER_SIZE:])
        try:
            record = fastavro.schemaless_reader(body, writer.parsed, reader_schema)
        except fastavro.read.SchemaResolutionError as exc:
            raise CodecError(f"cannot read {writer.record_name} as {reader}: {exc}") from None
        except Exception as exc:  # untrusted bytes: any parse failure is a bad record
            raise CodecError(
                f"cannot decode {writer.record_name}: truncated or corrupt body "
                f"({type(exc).__name__})"
            ) from None
        trailing = len(data) - HEADER_SIZE - body.tell()
        if trailing:
            raise CodecError(f"cannot decode {writer.record_name}: {trailing} trailing bytes")
        return record  # type: ignore[return-value]


@functools.lru_cache(maxsize=1)
def get_codec() -> AvroCodec:
    """The process-wide codec over ``schemas/*.avsc`` (built once; thread-safe to share)."""
    return AvroCodec()
