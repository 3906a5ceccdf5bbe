"""Incremental NDJSON (newline-delimited JSON) decoding of Onyx's streaming answers.

Why bytes first: the network hands us arbitrary chunks, so a packet, or a multi-byte UTF-8
character inside it, can straddle two chunks. Splitting on the ``\\n`` byte before decoding is
always safe — in UTF-8 the byte 0x0A never occurs inside a multi-byte sequence — so a line is
decoded only once it is complete and no character is ever torn.

Why a dedicated "cut" error: Onyx ends every healthy stream with a ``stop`` packet (or an error
object). A stream that ends without one — proxy timeout, worker crash, connection reset — is not
an answer, it is a transient failure, and the caller must be able to tell the two apart and retry.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import aiohttp

#: A line longer than this is not a packet we understand; refuse rather than buffer forever.
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024


class NDJSONError(ValueError):
    """A complete line that is not valid JSON, or a line over the size limit (not retryable)."""


class StreamCut(Exception):
    """The stream ended (or broke) before its terminal packet: a transient, retryable failure."""

    retryable = True

    def __init__(self, message: str, *, received: int = 0) -> None:
        super().__init__(message)
        self.received = received


class NDJSONDecoder:
    """Turns byte chunks into parsed JSON values, one per non-blank line, keeping a remainder."""

    def __init__(self, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self._buffer = bytearray()
        self._max_line_bytes = max_line_bytes

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a complete line."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[Any]:
        """Add a chunk; return every value whose line is now complete (possibly none)."""
        if not chunk:
            return []
        self._buffer += chunk
        last_newline = self._buffer.rfind(b"\n")
        if last_newline < 0:
            if len(self._buffer) > self._max_line_bytes:
                raise NDJSONError(f"NDJSON line exceeds {self._max_line_bytes} bytes")
            return []
        complete = bytes(self._buffer[:last_newline])
        del self._buffer[: last_newline + 1]
        return [_parse(line) for line in complete.split(b"\n") if line.strip()]

    def close(self) -> list[Any]:
        """End of stream: a trailing line without ``\\n`` still counts if it is whole JSON.

        Onyx writes its last-resort ``{"error": ...}`` without a newline, so that case is real.
        A trailing fragment that does not parse means the stream was truncated mid-packet.
        """
        tail = bytes(self._buffer).strip()
        self._buffer.clear()
        if not tail:
            return []
        try:
            return [_parse(tail)]
        except NDJSONError as exc:
            raise StreamCut(f"stream ended inside a packet ({len(tail)} bytes pending)") from exc


def _parse(line: bytes) -> Any:
    try:
        return json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NDJSONError(f"invalid NDJSON line ({len(line)} bytes): {exc}") from None


async def iter_ndjson(
    chunks: AsyncIterable[bytes] | aiohttp.StreamReader,
    *,
    is_terminal: Callable[[Any], bool] | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> AsyncIterator[Any]:
    """Yield each JSON value of an NDJSON byte stream as soon as its line is complete.

    ``chunks`` is an aiohttp ``response.content`` (read with ``iter_any`` so packets surface
    the moment they arrive) or any async iterable of bytes. With ``is_terminal``, the stream must
    contain a value for which it returns true, else :class:`StreamCut` is raised at the end;
    values after the terminal one are not read. A connection that breaks mid-body (aiohttp
    ``ClientPayloadError``) is also reported as :class:`StreamCut`.
    """
    source: AsyncIterable[bytes] = (
        chunks.iter_any() if isinstance(chunks, aiohttp.StreamReader) else chunks
    )
    decoder = NDJSONDecoder(max_line_bytes=max_line_bytes)
    received = 0
    try:
        async for chunk in source:
            for value in decoder.feed(chunk):
                received += 1
                yield value
                if is_terminal is not None and is_terminal(value):
                    return
        for value in decoder.close():
            received += 1
            yield value
            if is_terminal is not None and is_terminal(value):
                return
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
        raise StreamCut(
            f"connection broke mid-stream after {received} packets ({type(exc).__name__})",
            received=received,
        ) from None
    if is_terminal is not None:
        raise StreamCut(
            f"stream ended after {received} packets without a terminal packet", received=received
        )
