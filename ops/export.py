"""Write decoded topic records to JSONL or Parquet, atomically, for DuckDB/pandas.

Why atomic (a temp file in the target's directory, renamed on success): an analyst's notebook
must never read a half-written export, and a failed or interrupted rerun must leave the previous
export intact. A rerun over the same range overwrites the file with the same content.

Columns: the record's own top-level fields plus ``_topic``, ``_partition``, ``_offset``,
``_timestamp`` (the Kafka record timestamp), ``_key`` (UTF-8, or base64 when not text),
``_record`` (Avro record name) and ``_error`` (why a record could not be decoded; its fields are
then empty and ``_raw`` holds the value as base64). The underscore keeps them clear of record
fields. JSONL: bytes as base64, datetimes as ISO 8601. Parquet: one column per top-level field,
typed from the Avro schema (timestamps as UTC timestamps, bytes as binary), nested records, arrays
and maps as JSON strings.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

META_FIELDS = ("_topic", "_partition", "_offset", "_timestamp", "_key", "_record", "_error", "_raw")
ROW_GROUP = 10_000


class ExportError(ValueError):
    """An unsupported target format, or records that do not fit the export's columns."""


@dataclass(frozen=True)
class ExportRow:
    """One Kafka record with its decoded value (None when it could not be decoded)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    record_name: str | None
    record: dict[str, Any] | None
    error: str | None = None


def _key_text(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(key).decode()


def json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _meta(row: ExportRow) -> dict[str, Any]:
    return {
        "_topic": row.topic,
        "_partition": row.partition,
        "_offset": row.offset,
        "_timestamp": dt.datetime.fromtimestamp(row.timestamp_ms / 1000, dt.UTC),
        "_key": _key_text(row.key),
        "_record": row.record_name,
        "_error": row.error,
        "_raw": row.value if row.error else None,
    }


def format_for(path: Path) -> str:
    """``jsonl`` or ``parquet`` from the file name (``.json``/``.ndjson`` count as JSONL)."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise ExportError(f"cannot tell the export format of {path.name}: use .jsonl or .parquet")


class AtomicFile:
    """A temp file next to ``path``; :meth:`commit` renames it over ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        self.tmp = Path(name)

    def commit(self) -> None:
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


class JsonlWriter:
    """One JSON object per line, keys in a stable order."""

    def __init__(self, path: Path) -> None:
        self._file = AtomicFile(path)
        self._fh: IO[str] = open(self._file.tmp, "w", encoding="utf-8")  # noqa: SIM115
        self.rows = 0

    def write(self, row: ExportRow) -> None:
        doc = {**_meta(row), **(row.record or {})}
        self._fh.write(json.dumps(doc, default=json_default, ensure_ascii=False) + "\n")
        self.rows += 1

    def close(self) -> None:
        self._fh.close()
        self._file.commit()

    def abort(self) -> None:
        self._fh.close()
        self._file.discard()


def _arrow_type(avro: Any) -> tuple[Any, str]:
    """(pyarrow type, how to convert) for an Avro field type; complex types become JSON text."""
    import pyarrow as pa

    if isinstance(avro, list):  # union: nullable X, or a JSON string for real unions
        branches = [b for b in avro if b != "null"]
        if len(branches) == 1:
            return _arrow_type(branches[0])
        return pa.string(), "json"
    if isinstance(avro, dict):
        logical = avro.get("logicalType")
        kind = avro.get("type")
        if logical in ("timestamp-millis", "timestamp-micros"):
            return pa.timestamp("ms" if logical == "timestamp-millis" else "us", tz="UTC"), "plain"
        if kind == "enum":
            return pa.string(), "plain"
        if kind in ("record", "array", "map", "fixed"):
            return pa.string(), "json"
        return _arrow_type(kind)
    simple = {
        "string": pa.string(),
        "int": pa.int32(),
        "long": pa.int64(),
        "boolean": pa.bool_(),
        "float": pa.float32(),
        "double": pa.float64(),
        "bytes": pa.binary(),
        "null": pa.null(),
    }
    if isinstance(avro, str) and avro in simple:
        return simple[avro], "plain"
    return pa.string(), "json"  # a named type defined elsewhere: a record, so JSON text


class ParquetWriter:
    """Columns from the Avro schemas of ``record_names``, written in row groups (streaming)."""

    def __init__(self, path: Path, record_names: list[str]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from schemas.codec import get_codec

        codec = get_codec()
        fields = [
            pa.field("_topic", pa.string()),
            pa.field("_partition", pa.int32()),
            pa.field("_offset", pa.int64()),
            pa.field("_timestamp", pa.timestamp("ms", tz="UTC")),
            pa.field("_key", pa.string()),
            pa.field("_record", pa.string()),
            pa.field("_error", pa.string()),
            pa.field("_raw", pa.binary()),
        ]
        self._convert: dict[str, str] = {}
        for name in record_names:
            for f in codec.parsed_schema(name)["fields"]:
                arrow, how = _arrow_type(f["type"])
                if f["name"] in self._convert:
                    continue  # same field in another record type: the first one's type wins
                self._convert[f["name"]] = how
                fields.append(pa.field(f["name"], arrow))
        self.schema = pa.schema(fields)
        self._file = AtomicFile(path)
        self._writer = pq.ParquetWriter(str(self._file.tmp), self.schema, compression="zstd")
        self._buffer: list[dict[str, Any]] = []
        self.rows = 0

    def write(self, row: ExportRow) -> None:
        doc = _meta(row)
        for name, value in (row.record or {}).items():
            how = self._convert.get(name)
            if how is None:
                raise ExportError(
                    f"field {name!r} of {row.record_name} at {row.topic}/{row.partition}@"
                    f"{row.offset} is not a column of this export (a record type the topic does "
                    f"not declare): export to .jsonl instead"
                )
            doc[name] = (
                json.dumps(value, default=json_default, sort_keys=True)
                if how == "json" and value is not None
                else value
            )
        self._buffer.append(doc)
        self.rows += 1
        if len(self._buffer) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._buffer:
            self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self.schema))
            self._buffer = []

    def close(self) -> None:
        self._flush()
        self._writer.close()
        self._file.commit()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        self._file.discard()


Writer = JsonlWriter | ParquetWriter


def open_writer(path: Path, record_names: list[str]) -> Writer:
    """A writer for ``path``'s format; Parquet columns come from ``record_names``' schemas."""
    if format_for(path) == "jsonl":
        return JsonlWriter(path)
    return ParquetWriter(path, record_names)


__all__ = [
    "META_FIELDS",
    "ExportError",
    "ExportRow",
    "JsonlWriter",
    "ParquetWriter",
    "format_for",
    "open_writer",
]
