"""The Onyx answer backend: ``POST /api/chat/send-chat-message`` with retries and a breaker.

Contract (mirrors Onyx's ``SendMessageRequest`` / ``ChatFullResponse`` and streaming packets):
- a new conversation sends ``chat_session_info: {persona_id}`` and learns its
  ``chat_session_id`` from the stream (``CreateChatSessionID``) or the JSON response; follow-ups
  send ``chat_session_id`` + ``parent_message_id`` (the previous assistant message id, or
  ``-1`` = "after the latest message": ``null`` would mean "regenerate from the root").
- the answer text keeps Onyx's ``[[n]](link)`` citations; ``Source.number`` is Onyx's
  ``citation_number`` so text and sources agree.

Failures never raise out of :meth:`OnyxClient.answer`: after retries it returns an ``Answer``
with ``error = "<code>: <detail>"`` (codes below) so the answer stage can send a polite message.
``onyx_unavailable`` (network, timeout, 5xx, cut stream, circuit open), ``onyx_rate_limited``
(429: token/usage budget), ``onyx_auth`` (401/403), ``onyx_rejected`` (other 4xx),
``onyx_error`` (an error packet / ``error_msg`` from Onyx), ``onyx_bad_response``.

Retries: a small explicit loop (exponential backoff, full jitter, ``Retry-After`` honoured)
rather than tenacity, because each attempt must consult and feed the circuit breaker, carry
state into the next attempt (a session Onyx already created must be reused, not duplicated) and
end in a returned ``Answer`` rather than an exception — all awkward as tenacity callbacks.

The API key lives only in the ``Authorization`` header: it is never logged, never part of a
repr, and scrubbed from any text Onyx echoes back before that text goes anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiohttp

from answers.breaker import CircuitBreaker
from answers.model import Answer, Source, Turn
from answers.ndjson import NDJSONError, StreamCut, iter_ndjson

log = logging.getLogger(__name__)

SEND_PATH = "/api/chat/send-chat-message"
CREATE_SESSION_PATH = "/api/chat/create-chat-session"
FEEDBACK_PATH = "/api/chat/create-chat-message-feedback"
#: Onyx's AUTO_PLACE_AFTER_LATEST_MESSAGE: append to the session's latest message.
AUTO_PLACE = -1
#: Onyx's MessageOrigin enum has no "whatsapp" (and Onyx forces "api" for API-key calls anyway).
DEFAULT_ORIGIN = "api"
HISTORY_CONTEXT_TURNS = 6
HISTORY_CONTEXT_CHARS = 2000

T = TypeVar("T")


class OnyxRequestError(Exception):
    """A call other than ``answer`` (session, feedback) failed for good; carries no secrets."""

    def __init__(self, code: str, message: str, *, retryable: bool, status: int | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.retryable = retryable
        self.status = status


@dataclass
class _Failure(Exception):
    """One failed attempt: what to tell the user, whether to retry, whether Onyx is unhealthy."""

    code: str
    message: str
    retryable: bool
    unhealthy: bool
    status: int | None = None
    retry_after_s: float | None = None

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass
class _StreamState:
    """What one streamed answer has told us so far (kept across retries for the session id)."""

    chat_session_id: str | None = None
    user_message_id: int | None = None
    message_id: int | None = None
    documents: list[dict[str, Any]] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    citations: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None


class _Secret:
    """Holds the API key so that no repr, ``vars()`` dump or f-string can show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "_Secret('***')"

    __str__ = __repr__


def key_fingerprint(api_key: str) -> str:
    """A stable, non-reversible id for a key: safe for logs, pool keys and inspection."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:16]


def build_filters(
    document_sets: Sequence[str], filters: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """Onyx ``BaseFilters`` from the chat config: source_type, document_set, time_cutoff, tags.

    ``time_cutoff`` is sent (not ``updated_at_range``) because every Onyx release accepts it:
    new ones fold it into ``updated_at_range.start``. Tags come as ``key=value``/``key:value``
    strings or ``{tag_key, tag_value}`` dicts.
    """
    filters = dict(filters or {})
    out: dict[str, Any] = {}
    sources = _as_list(filters.get("source_type") or filters.get("source_types"))
    if sources:
        out["source_type"] = sources
    sets = list(dict.fromkeys([*document_sets, *_as_list(filters.get("document_set"))]))
    if sets:
        out["document_set"] = sets
    cutoff = filters.get("time_cutoff")
    if cutoff is None and filters.get("time_cutoff_days"):
        cutoff = datetime.now(UTC) - timedelta(days=int(filters["time_cutoff_days"]))
    if isinstance(cutoff, datetime):
        cutoff = (cutoff if cutoff.tzinfo else cutoff.replace(tzinfo=UTC)).isoformat()
    if cutoff:
        out["time_cutoff"] = str(cutoff)
    tags = [tag for tag in map(_tag, _as_list(filters.get("tags"))) if tag]
    if tags:
        out["tags"] = tags
    return out or None


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, str | dict):
        return [value]
    return list(value)


def _tag(value: Any) -> dict[str, str] | None:
    if isinstance(value, Mapping):
        if "tag_key" in value and "tag_value" in value:
            return {"tag_key": str(value["tag_key"]), "tag_value": str(value["tag_value"])}
        return None
    text = str(value)
    for sep in ("=", ":"):
        if sep in text:
            key, _, val = text.partition(sep)
            if key.strip() and val.strip():
                return {"tag_key": key.strip(), "tag_value": val.strip()}
    return None


def history_context(history: Sequence[Turn]) -> str | None:
    """Earlier turns for a *new* Onyx session (e.g. after /reset of Onyx state or a migration).

    Sent as ``additional_context``, which Onyx gives the LLM but does not store, so the user's
    follow-up still makes sense even though Onyx has never seen this conversation.
    """
    lines = [f"{turn.role}: {turn.text.strip()}" for turn in history[-HISTORY_CONTEXT_TURNS:]]
    text = "\n".join(line for line in lines if line.split(": ", 1)[1])
    if not text:
        return None
    text = text[-HISTORY_CONTEXT_CHARS:]
    return "Earlier in this conversation:\n" + text


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _source(number: int, doc: Mapping[str, Any]) -> Source:
    return Source(
        number=number,
        document_id=str(doc.get("document_id") or ""),
        title=str(doc.get("semantic_identifier") or doc.get("document_id") or "Untitled"),
        link=doc.get("link") or None,
        source_type=str(doc.get("source_type") or "file"),
        updated_at=_parse_time(doc.get("updated_at")),
        blurb=str(doc.get("blurb") or ""),
    )


def sources_from(
    documents: Sequence[Mapping[str, Any]], citations: Sequence[Mapping[str, Any]]
) -> tuple[list[Source], list[Source]]:
    """(cited sources numbered as Onyx numbered them, all top documents ranked 1..n)."""
    by_id = {str(doc.get("document_id")): doc for doc in documents if doc.get("document_id")}
    cited: dict[int, Source] = {}
    for citation in citations:
        try:
            number = int(citation["citation_number"])
            document_id = str(citation["document_id"])
        except (KeyError, TypeError, ValueError):
            continue
        if number not in cited:
            cited[number] = _source(number, by_id.get(document_id, {"document_id": document_id}))
    top = [_source(rank, doc) for rank, doc in enumerate(documents, start=1)]
    return [cited[n] for n in sorted(cited)], top


def _is_terminal(packet: Any) -> bool:
    if not isinstance(packet, dict):
        return False
    if "error" in packet and "placement" not in packet:
        return True
    obj = packet.get("obj")
    return isinstance(obj, dict) and obj.get("type") in ("stop", "error")


class OnyxClient:
    """One tenant's Onyx: implements ``AnswerBackend`` plus session creation and feedback."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout_s: float = 5.0,
        first_byte_timeout_s: float = 60.0,
        total_timeout_s: float = 120.0,
        max_retries: int = 3,
        session: aiohttp.ClientSession | None = None,
        breaker: CircuitBreaker | None = None,
        origin: str = DEFAULT_ORIGIN,
        stream: bool = True,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        connector_limit: int = 32,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        if not api_key:
            raise ValueError("api_key is required")
        self.base_url = base_url.rstrip("/")
        self._api_key = _Secret(api_key)
        self.key_id = key_fingerprint(api_key)
        self.max_retries = max(0, max_retries)
        self.breaker = breaker
        self.origin = origin
        self.stream = stream
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.connector_limit = connector_limit
        self._timeout = aiohttp.ClientTimeout(
            total=total_timeout_s, sock_connect=connect_timeout_s, sock_read=first_byte_timeout_s
        )
        self._session = session
        self._owns_session = session is None

    def __repr__(self) -> str:
        return f"OnyxClient(base_url={self.base_url!r}, key_id={self.key_id!r})"

    # --- plumbing ----------------------------------------------------------------------------
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if not self._owns_session:
                raise RuntimeError("the ClientSession given to OnyxClient is closed")
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connector_limit),
                timeout=self._timeout,
            )
        return self._session

    def _headers(self, accept: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key.reveal()}", "Accept": accept}

    def _scrub(self, text: str) -> str:
        """Onyx error text must never carry our key onwards (logs, topics, users)."""
        return text.replace(self._api_key.reveal(), "***")[:500]

    def _backoff(self, attempt: int, failure: _Failure) -> float:
        delay = random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2**attempt))
        if failure.retry_after_s is not None:
            delay = max(delay, min(failure.retry_after_s, self.backoff_max_s))
        return delay

    async def _with_retries(self, what: str, call: Callable[[int], Awaitable[T]]) -> T:
        """Run ``call(attempt)`` until it succeeds, fails for good, or retries run out."""
        attempt = 0
        while True:
            if self.breaker is not None and not self.breaker.allow():
                raise _Failure(
                    "onyx_unavailable", "circuit open: Onyx failed repeatedly", True, False
                )
            try:
                result = await call(attempt)
            except _Failure as failure:
                if self.breaker is not None:
                    if failure.unhealthy:
                        self.breaker.record_failure()
                    else:
                        self.breaker.record_success()
                if not failure.retryable or attempt >= self.max_retries:
                    log.warning(
                        "onyx %s failed for good at %s (attempt %d): %s",
                        what,
                        self.base_url,
                        attempt + 1,
                        failure,
                    )
                    raise
                delay = self._backoff(attempt, failure)
                log.info(
                    "onyx %s attempt %d at %s failed (%s); retrying in %.2fs",
                    what,
                    attempt + 1,
                    self.base_url,
                    failure,
                    delay,
                )
                await asyncio.sleep(delay)
                attempt += 1
                continue
            if self.breaker is not None:
                self.breaker.record_success()
            return result

    async def _failure_from_response(self, response: aiohttp.ClientResponse) -> _Failure:
        status = response.status
        try:
            body = await response.text()
        except (aiohttp.ClientError, UnicodeDecodeError):
            body = ""
        detail = self._scrub(body.strip()) or response.reason or ""
        message = f"HTTP {status}: {detail}"
        if status == 429:
            retry_after = _retry_after(response.headers.get("Retry-After"))
            return _Failure("onyx_rate_limited", message, True, False, status, retry_after)
        if status >= 500:
            return _Failure("onyx_unavailable", message, True, True, status)
        if status in (401, 403):
            return _Failure("onyx_auth", message, False, False, status)
        return _Failure("onyx_rejected", message, False, False, status)

    async def _post_json(self, path: str, body: dict[str, Any]) -> Any:
        try:
            async with self._http().post(
                self.base_url + path,
                json=body,
                headers=self._headers("application/json"),
                timeout=self._timeout,
            ) as response:
                if response.status >= 400:
                    raise await self._failure_from_response(response)
                if response.content_length == 0:
                    return None
                text = await response.text()
                if not text.strip():
                    return None
                try:
                    return json.loads(text)
                except ValueError:
                    raise _Failure(
                        "onyx_bad_response", f"non-JSON body from {path}", True, True
                    ) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _transport_failure(exc) from None

    # --- public API --------------------------------------------------------------------------
    async def answer(
        self,
        question: str,
        *,
        history: Sequence[Turn] = (),
        session_id: str | None = None,
        persona_id: int | None = None,
        document_sets: Sequence[str] = (),
        filters: Mapping[str, Any] | None = None,
        parent_message_id: int | None = None,
        stream: bool | None = None,
    ) -> Answer:
        """Ask Onyx; never raises for Onyx/network trouble (the Answer carries ``error``)."""
        started = time.perf_counter()
        use_stream = self.stream if stream is None else stream
        state = _StreamState(chat_session_id=session_id)
        base: dict[str, Any] = {
            "message": question,
            "stream": use_stream,
            "include_citations": True,
            "origin": self.origin,
        }
        search_filters = build_filters(document_sets, filters)
        if search_filters:
            base["internal_search_filters"] = search_filters

        async def attempt(_: int) -> Answer:
            body = dict(base)
            if state.chat_session_id:
                body["chat_session_id"] = state.chat_session_id
                body["parent_message_id"] = (
                    parent_message_id if parent_message_id is not None else AUTO_PLACE
                )
            else:
                body["chat_session_info"] = {"persona_id": persona_id or 0}
                context = history_context(history)
                if context:
                    body["additional_context"] = context
            if use_stream:
                return await self._send_streaming(body, state)
            return await self._send_blocking(body, state)

        try:
            result = await self._with_retries("send-chat-message", attempt)
        except _Failure as failure:
            return Answer(
                text="",
                chat_session_id=state.chat_session_id,
                latency_ms=_ms_since(started),
                error=str(failure),
                error_retryable=failure.retryable,
            )
        return Answer(
            text=result.text,
            sources=result.sources,
            top_documents=result.top_documents,
            onyx_message_id=result.onyx_message_id,
            chat_session_id=result.chat_session_id,
            latency_ms=_ms_since(started),
        )

    async def _send_streaming(self, body: dict[str, Any], state: _StreamState) -> Answer:
        """One streamed attempt; packets are accumulated into ``state`` as they arrive."""
        state.parts.clear()
        state.citations.clear()
        state.documents.clear()
        state.error = None
        try:
            async with self._http().post(
                self.base_url + SEND_PATH,
                json=body,
                headers=self._headers("text/event-stream, application/x-ndjson"),
                timeout=self._timeout,
            ) as response:
                if response.status >= 400:
                    raise await self._failure_from_response(response)
                async for packet in iter_ndjson(response.content, is_terminal=_is_terminal):
                    _absorb(packet, state)
        except StreamCut as exc:
            raise _Failure("onyx_unavailable", f"stream cut: {exc}", True, True) from None
        except NDJSONError as exc:
            raise _Failure("onyx_bad_response", str(exc), True, True) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _transport_failure(exc) from None
        if state.error is not None:
            raise _error_packet_failure(state.error, self._scrub)
        if state.message_id is None:
            raise _Failure("onyx_bad_response", "stream carried no message id", True, True)
        sources, top = sources_from(state.documents, state.citations)
        return Answer(
            text="".join(state.parts).strip(),
            sources=sources,
            top_documents=top,
            onyx_message_id=state.message_id,
            chat_session_id=state.chat_session_id,
        )

    async def _send_blocking(self, body: dict[str, Any], state: _StreamState) -> Answer:
        """One ``stream: false`` attempt: Onyx's ``ChatFullResponse``."""
        data = await self._post_json(SEND_PATH, body)
        if not isinstance(data, dict) or "message_id" not in data:
            raise _Failure("onyx_bad_response", "response is not a ChatFullResponse", True, True)
        if data.get("chat_session_id"):
            state.chat_session_id = str(data["chat_session_id"])
        answer = str(data.get("answer") or "")
        if data.get("error_msg") and not answer.strip():
            # ChatFullResponse drops StreamingError.is_retryable: do not hammer a request that
            # may be invalid; the stage still learns that trying later may help.
            raise _Failure("onyx_error", self._scrub(str(data["error_msg"])), False, False)
        documents = [d for d in data.get("top_documents") or [] if isinstance(d, dict)]
        citations = [c for c in data.get("citation_info") or [] if isinstance(c, dict)]
        sources, top = sources_from(documents, citations)
        return Answer(
            text=answer.strip(),
            sources=sources,
            top_documents=top,
            onyx_message_id=int(data["message_id"]),
            chat_session_id=state.chat_session_id,
        )

    async def create_chat_session(self, persona_id: int | None = None) -> str:
        """``POST /api/chat/create-chat-session``; raises :class:`OnyxRequestError`."""

        async def attempt(_: int) -> str:
            data = await self._post_json(CREATE_SESSION_PATH, {"persona_id": persona_id or 0})
            if not isinstance(data, dict) or not data.get("chat_session_id"):
                raise _Failure("onyx_bad_response", "no chat_session_id in response", True, True)
            return str(data["chat_session_id"])

        return await self._call("create-chat-session", attempt)

    async def send_feedback(
        self, chat_message_id: int, is_positive: bool, feedback_text: str | None = None
    ) -> None:
        """``POST /api/chat/create-chat-message-feedback``; raises :class:`OnyxRequestError`."""
        body: dict[str, Any] = {"chat_message_id": chat_message_id, "is_positive": is_positive}
        if feedback_text:
            body["feedback_text"] = feedback_text

        async def attempt(_: int) -> None:
            await self._post_json(FEEDBACK_PATH, body)

        await self._call("create-chat-message-feedback", attempt)

    async def _call(self, what: str, call: Callable[[int], Awaitable[T]]) -> T:
        try:
            return await self._with_retries(what, call)
        except _Failure as failure:
            raise OnyxRequestError(
                failure.code, failure.message, retryable=failure.retryable, status=failure.status
            ) from None

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()


def _absorb(packet: Any, state: _StreamState) -> None:
    """Fold one NDJSON value of Onyx's stream into ``state`` (unknown packets are ignored)."""
    if not isinstance(packet, dict):
        return
    if "placement" not in packet and "obj" not in packet:
        if "error" in packet:
            state.error = packet
        if packet.get("chat_session_id"):
            state.chat_session_id = str(packet["chat_session_id"])
        if "reserved_assistant_message_id" in packet:
            state.message_id = int(packet["reserved_assistant_message_id"])
            if packet.get("user_message_id") is not None:
                state.user_message_id = int(packet["user_message_id"])
        return
    obj = packet.get("obj")
    if not isinstance(obj, dict):
        return
    kind = obj.get("type")
    if kind == "message_start":
        docs = obj.get("final_documents") or []
        state.documents[:] = [d for d in docs if isinstance(d, dict)]
    elif kind == "message_delta":
        state.parts.append(str(obj.get("content") or ""))
    elif kind == "citation_info":
        state.citations.append(obj)
    elif kind == "error":
        state.error = {"error": obj.get("error") or "error packet", "is_retryable": True}


def _error_packet_failure(error: Mapping[str, Any], scrub: Callable[[str], str]) -> _Failure:
    retryable = bool(error.get("is_retryable", True))
    code = error.get("error_code")
    message = scrub(str(error.get("error") or "error"))
    if code:
        message = f"{code}: {message}"
    if code == "RATE_LIMIT":
        return _Failure("onyx_rate_limited", message, retryable, False)
    return _Failure("onyx_error", message, retryable, retryable)


def _transport_failure(exc: BaseException) -> _Failure:
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return _Failure("onyx_unavailable", "timed out waiting for Onyx", True, True)
    # aiohttp messages name host/port/OS error only; never headers.
    return _Failure("onyx_unavailable", f"{type(exc).__name__}: {exc}"[:300], True, True)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _ms_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


class OnyxClientPool:
    """One pooled client per (tenant, Onyx URL, key) — tenant A's key never serves tenant B.

    Each client owns its own ``ClientSession`` and connector (``connector_limit`` connections),
    so a slow tenant cannot exhaust another's connections. Breakers are per (tenant, URL): a
    rotated key reuses the tenant's breaker; the client of the old key is closed after a grace
    period long enough for its in-flight requests to finish.
    """

    def __init__(
        self,
        *,
        connect_timeout_s: float = 5.0,
        first_byte_timeout_s: float = 60.0,
        total_timeout_s: float = 120.0,
        max_retries: int = 3,
        connector_limit: int = 32,
        failure_threshold: int = 5,
        reset_timeout_s: float = 30.0,
        stream: bool = True,
        origin: str = DEFAULT_ORIGIN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._options: dict[str, Any] = {
            "connect_timeout_s": connect_timeout_s,
            "first_byte_timeout_s": first_byte_timeout_s,
            "total_timeout_s": total_timeout_s,
            "max_retries": max_retries,
            "connector_limit": connector_limit,
            "stream": stream,
            "origin": origin,
        }
        self._failure_threshold = failure_threshold
        self._reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._grace_s = total_timeout_s * (max_retries + 1) + 5.0
        self._clients: dict[tuple[str, str, str], OnyxClient] = {}
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}
        self._retiring: dict[OnyxClient, asyncio.Task[None] | None] = {}

    def __repr__(self) -> str:
        return f"OnyxClientPool(clients={len(self._clients)})"

    def __len__(self) -> int:
        return len(self._clients)

    def breaker(self, tenant_id: str, base_url: str) -> CircuitBreaker:
        """The breaker guarding ``tenant_id``'s Onyx at ``base_url`` (created on first use)."""
        key = (tenant_id, base_url.rstrip("/"))
        if key not in self._breakers:
            self._breakers[key] = CircuitBreaker(
                self._failure_threshold, self._reset_timeout_s, self._clock
            )
        return self._breakers[key]

    def get(
        self, tenant_id: str, base_url: str, api_key: str, *, user_id: str | None = None
    ) -> OnyxClient:
        """The client for this tenant, URL and key; a new key retires the old key's client.

        ``user_id`` names a linked user calling with their own key: their client is separate
        from the bot's (so it never retires it) but shares the tenant's breaker.
        """
        url = base_url.rstrip("/")
        owner = f"{tenant_id}\x00{user_id or ''}"
        key = (owner, url, key_fingerprint(api_key))
        client = self._clients.get(key)
        if client is not None:
            return client
        for other in [k for k in self._clients if k[0] == owner and k[1] == url]:
            self._retire(self._clients.pop(other))
        client = OnyxClient(url, api_key, breaker=self.breaker(tenant_id, url), **self._options)
        self._clients[key] = client
        return client

    def _retire(self, client: OnyxClient) -> None:
        """Close an old key's client once its in-flight requests can have finished."""

        async def close_later() -> None:
            await asyncio.sleep(self._grace_s)
            self._retiring.pop(client, None)
            await client.aclose()

        try:
            task: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(close_later())
        except RuntimeError:  # no running loop: it is closed by aclose()
            task = None
        self._retiring[client] = task

    async def aclose(self) -> None:
        """Close every client (including retiring ones) and forget them."""
        clients = [*self._clients.values(), *self._retiring]
        for task in self._retiring.values():
            if task is not None:
                task.cancel()
        self._retiring.clear()
        self._clients.clear()
        for client in clients:
            with contextlib.suppress(Exception):
                await client.aclose()
