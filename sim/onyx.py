"""A fake Onyx: the three chat endpoints this project calls, in Onyx's real shapes.

Why a fake and not mocks: the Onyx client must be proven over a real socket against the same
bytes a real Onyx sends — NDJSON lines split at arbitrary points, the ids line first, packets
``{"placement":{...},"obj":{"type":...}}``, ``StreamingError`` objects, FastAPI's 401/422 bodies —
and against failures (latency, 5xx, 429, error packets, cut streams) injected on demand.

Served:
- ``POST /api/chat/create-chat-session`` ``{persona_id}`` → ``{chat_session_id, incognito}``
- ``POST /api/chat/send-chat-message`` (``SendMessageRequest``): NDJSON stream by default, or
  ``ChatFullResponse`` JSON with ``stream: false``. Sessions and parent-message chains are kept;
  answers come from a tiny built-in document set, cited ``[[n]](link)`` like Onyx does.
- ``POST /api/chat/create-chat-message-feedback`` (``ChatFeedbackRequest``) → ``null``
- control: ``POST/DELETE /_fake/faults``, ``GET/DELETE /_fake/requests`` (keys sha256-hashed),
  ``GET /_fake/sessions/{id}``, ``GET /_fake/feedback``.

Keys: with ``api_keys`` only those bearer keys are accepted; without, any non-empty one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web

PLACEMENT = {"turn_index": 0, "tab_index": 0, "sub_turn_index": None, "model_index": 0}
KNOWN_PERSONAS = {0: "Default", 1: "HR Assistant", 2: "IT Helpdesk"}
ORIGINS = {
    "webapp",
    "chrome_extension",
    "api",
    "slackbot",
    "widget",
    "discordbot",
    "mobile",
    "unknown",
    "unset",
}
SOURCE_TYPES = set(
    """ingestion_api slack web google_drive gmail github gitbook gitlab guru bookstack outline
    confluence jira slab productboard file coda canvas notion zulip linear hubspot document360
    gong google_sites zendesk loopio box dropbox sharepoint teams salesforce discourse axero
    clickup mediawiki wikipedia asana s3 r2 google_cloud_storage oci_storage xenforo
    not_applicable discord freshdesk fireflies egnyte airtable highspot drupal_wiki imap
    bitbucket testrail braintrust lumapps mock_connector user_file craft_file
    federated_slack""".split()
)
_WORD = re.compile(r"\w+", re.UNICODE)
_STOP = frozenset("a an and are do does how i is it of on or the to what when where who".split())


@dataclass(frozen=True)
class FakeDoc:
    document_id: str
    title: str
    link: str
    source_type: str
    document_set: str
    updated_at: str
    tags: tuple[tuple[str, str], ...]
    text: str

    def search_doc(self, score: float) -> dict[str, Any]:
        """Onyx's ``SearchDoc`` JSON for this document."""
        return {
            "document_id": self.document_id,
            "chunk_ind": 0,
            "semantic_identifier": self.title,
            "link": self.link,
            "blurb": self.text[:120],
            "source_type": self.source_type,
            "boost": 0,
            "hidden": False,
            "metadata": {k: v for k, v in self.tags},
            "score": score,
            "is_relevant": None,
            "relevance_explanation": None,
            "match_highlights": [],
            "updated_at": self.updated_at,
            "primary_owners": None,
            "secondary_owners": None,
            "is_internet": False,
            "file_id": None,
        }


DOCS: tuple[FakeDoc, ...] = (
    FakeDoc(
        "confluence__vacation-policy",
        "Vacation policy",
        "https://wiki.example.com/hr/vacation",
        "confluence",
        "hr",
        "2025-03-01T09:00:00+00:00",
        (("department", "hr"),),
        "Full-time employees get 25 vacation days per year. Unused vacation days carry over "
        "until 31 March of the next year. Vacation requests go through the HR portal.",
    ),
    FakeDoc(
        "gdrive__expense-rules",
        "Travel & expense rules (€)",
        "https://drive.example.com/expenses",
        "google_drive",
        "finance",
        "2024-11-15T12:00:00+00:00",
        (("department", "finance"),),
        "Meals while travelling are reimbursed up to 60 € per day. Submit expense receipts "
        "within 30 days — café and taxi receipts included. Approvals take 2–3 days ✅.",
    ),
    FakeDoc(
        "confluence__vpn-setup",
        "VPN setup guide",
        "https://wiki.example.com/it/vpn",
        "confluence",
        "it",
        "2025-06-20T08:30:00+00:00",
        (("department", "it"),),
        "Install the WireGuard client and import the profile from the IT portal. The VPN is "
        "required for access to internal systems from home. Reset a broken VPN profile in the "
        "IT portal.",
    ),
    FakeDoc(
        "slack__office-wifi",
        "#it-help: office Wi‑Fi",
        "https://slack.example.com/archives/C1/p1",
        "slack",
        "it",
        "2025-01-10T16:45:00+00:00",
        (("department", "it"),),
        "The office Wi‑Fi network is Example-Corp; the guest network password rotates every "
        "Monday and is posted at reception 📶.",
    ),
    FakeDoc(
        "web__onboarding",
        "Onboarding checklist",
        "https://example.com/onboarding",
        "web",
        "hr",
        "2023-09-01T10:00:00+00:00",
        (("department", "hr"),),
        "New employees receive a laptop on day one. The onboarding checklist covers accounts, "
        "security training and the VPN setup.",
    ),
)


@dataclass(frozen=True)
class Citation:
    number: int
    doc: FakeDoc


@dataclass
class Fault:
    """An injected failure; ``count`` is how many requests it may still hit (None: unlimited)."""

    latency_s: float = 0.0
    status: int | None = None
    rate: float = 1.0
    error_packet: bool = False
    retryable: bool = True
    cut_stream: bool = False
    count: int | None = None
    retry_after: float | None = None
    paths: tuple[str, ...] = ()
    fired: int = 0  # how many requests it hit (for tests that must prove a fault happened)

    def fires(self, path: str) -> bool:
        if self.paths and path not in self.paths:
            return False
        if self.count is not None and self.count <= 0:
            return False
        if random.random() >= self.rate:
            return False
        if self.count is not None:
            self.count -= 1
        self.fired += 1
        return True


@dataclass
class FakeMessage:
    id: int
    parent: int | None
    role: str
    text: str


@dataclass
class FakeSession:
    id: str
    persona_id: int
    messages: dict[int, FakeMessage] = field(default_factory=dict)
    latest: int | None = None

    def chain(self, message_id: int | None) -> list[FakeMessage]:
        """Messages from the root to ``message_id`` following parent links."""
        out: list[FakeMessage] = []
        while message_id is not None and message_id in self.messages:
            out.append(self.messages[message_id])
            message_id = self.messages[message_id].parent
        return out[::-1]


@dataclass
class FakeOnyxState:
    api_keys: set[str] | None
    chunk_bytes: int | None = None
    sessions: dict[str, FakeSession] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)
    fault: Fault | None = None
    next_id: int = 1

    def new_ids(self) -> tuple[int, int]:
        first = self.next_id
        self.next_id += 2
        return first, first + 1


STATE: web.AppKey[FakeOnyxState] = web.AppKey("fake_onyx_state", FakeOnyxState)
FAULT: web.RequestKey[Fault] = web.RequestKey("fake_onyx_fault", Fault)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _err(loc: str, msg: str, kind: str, value: Any) -> dict[str, Any]:
    return {"type": kind, "loc": ["body", *loc.split(".")], "msg": msg, "input": value}


def unprocessable(errors: list[dict[str, Any]]) -> web.Response:
    """FastAPI's request-validation response."""
    return web.json_response({"detail": errors}, status=422)


def build_fake_onyx_app(
    *, api_keys: set[str] | None = None, chunk_bytes: int | None = None
) -> web.Application:
    """The fake Onyx app; ``chunk_bytes`` makes streams flush in pieces that small."""
    app = web.Application(middlewares=[_record_and_auth])
    app[STATE] = FakeOnyxState(api_keys=set(api_keys) if api_keys is not None else None)
    app[STATE].chunk_bytes = chunk_bytes
    app.router.add_post("/api/chat/create-chat-session", create_session)
    app.router.add_post("/api/chat/send-chat-message", send_message)
    app.router.add_post("/api/chat/create-chat-message-feedback", create_feedback)
    app.router.add_post("/_fake/faults", set_faults)
    app.router.add_delete("/_fake/faults", clear_faults)
    app.router.add_get("/_fake/requests", list_requests)
    app.router.add_delete("/_fake/requests", clear_requests)
    app.router.add_get("/_fake/sessions/{id}", get_session)
    app.router.add_get("/_fake/feedback", list_feedback)
    return app


@web.middleware
async def _record_and_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    """Record every API call (key hashed), check the bearer key, apply an injected fault."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    state = request.app[STATE]
    auth = request.headers.get("Authorization", "")
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    state.requests.append(
        {
            "method": request.method,
            "path": request.path,
            "key_sha256": _hash(key) if key else None,
            "body": body,
            "at": time.time(),
        }
    )
    if not key or (state.api_keys is not None and key not in state.api_keys):
        return web.json_response({"detail": "Unauthorized"}, status=401)
    if raw and body is None:
        return unprocessable([_err("", "JSON decode error", "json_invalid", None)])
    fault = state.fault
    if fault is not None and fault.fires(request.path):
        if fault.latency_s:
            await asyncio.sleep(fault.latency_s)
        if fault.status:
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after else None
            detail = "Token budget exceeded" if fault.status == 429 else "Internal Server Error"
            if fault.status < 500 and fault.status != 429:
                detail = "Injected client error"
            return web.json_response({"detail": detail}, status=fault.status, headers=headers)
        request[FAULT] = fault
    return await handler(request)


# --- validation (the parts of Onyx's pydantic models the fake enforces) ---------------------
def _check_type(
    errors: list[dict[str, Any]], body: dict[str, Any], name: str, types: tuple[type, ...]
) -> None:
    if name in body and body[name] is not None:
        value = body[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            errors.append(_err(name, f"Input should be {types[0].__name__}", "type_error", value))


def validate_send(body: Any) -> list[dict[str, Any]]:
    """Errors as FastAPI reports them for ``SendMessageRequest``; empty when valid."""
    if not isinstance(body, dict):
        return [_err("", "Input should be a valid dictionary", "dict_type", body)]
    errors: list[dict[str, Any]] = []
    if not isinstance(body.get("message"), str):
        kind = "missing" if "message" not in body else "string_type"
        errors.append(_err("message", "Field required", kind, body.get("message")))
    for name in ("stream", "include_citations"):
        _check_type(errors, body, name, (bool,))
    _check_type(errors, body, "parent_message_id", (int,))
    _check_type(errors, body, "additional_context", (str,))
    if body.get("origin") is not None and body["origin"] not in ORIGINS:
        errors.append(_err("origin", "Input should be a MessageOrigin", "enum", body["origin"]))
    session_id = body.get("chat_session_id")
    if session_id is not None:
        try:
            uuid.UUID(str(session_id))
        except ValueError:
            errors.append(_err("chat_session_id", "Input should be a UUID", "uuid_parsing", 0))
    info = body.get("chat_session_info")
    if info is not None:
        if not isinstance(info, dict):
            errors.append(_err("chat_session_info", "Input should be a dict", "dict_type", info))
        else:
            _check_type(errors, info, "persona_id", (int,))
    if session_id is not None and info is not None:
        errors.append(
            _err(
                "",
                "Value error, Only one of chat_session_id or chat_session_info should be "
                "provided, not both.",
                "value_error",
                None,
            )
        )
    filters = body.get("internal_search_filters")
    if filters is not None:
        errors += _validate_filters(filters)
    return errors


def _validate_filters(filters: Any) -> list[dict[str, Any]]:
    where = "internal_search_filters"
    if not isinstance(filters, dict):
        return [_err(where, "Input should be a dict", "dict_type", filters)]
    errors: list[dict[str, Any]] = []
    for source in filters.get("source_type") or []:
        if source not in SOURCE_TYPES:
            errors.append(_err(f"{where}.source_type", "Not a DocumentSource", "enum", source))
    sets = filters.get("document_set")
    if sets is not None and not (isinstance(sets, list) and all(isinstance(s, str) for s in sets)):
        errors.append(_err(f"{where}.document_set", "Input should be a list", "list_type", sets))
    cutoff = filters.get("time_cutoff")
    if cutoff is not None and _parse_dt(cutoff) is None:
        errors.append(_err(f"{where}.time_cutoff", "Not a datetime", "datetime_parsing", cutoff))
    for tag in filters.get("tags") or []:
        if not (isinstance(tag, dict) and {"tag_key", "tag_value"} <= set(tag)):
            errors.append(_err(f"{where}.tags", "Input should be a Tag", "model_type", tag))
    return errors


def _parse_dt(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


# --- retrieval and answering ----------------------------------------------------------------
def _terms(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 2}


def retrieve(question: str, filters: dict[str, Any] | None) -> list[tuple[FakeDoc, float]]:
    """Documents sharing words with the question, honouring Onyx's filter fields."""
    filters = filters or {}
    terms = _terms(question)
    cutoff = _parse_dt(filters["time_cutoff"]) if filters.get("time_cutoff") else None
    tags = {(t["tag_key"], t["tag_value"]) for t in filters.get("tags") or []}
    hits: list[tuple[FakeDoc, float]] = []
    for doc in DOCS:
        if filters.get("source_type") and doc.source_type not in filters["source_type"]:
            continue
        if filters.get("document_set") and doc.document_set not in filters["document_set"]:
            continue
        if cutoff and datetime.fromisoformat(doc.updated_at) < cutoff:
            continue
        if tags and not tags & set(doc.tags):
            continue
        score = len(terms & _terms(doc.title + " " + doc.text))
        if score:
            hits.append((doc, float(score)))
    hits.sort(key=lambda hit: -hit[1])
    return hits[:3]


def compose(question: str, hits: list[tuple[FakeDoc, float]]) -> list[str | Citation]:
    """Answer tokens; a :class:`Citation` token renders as ``[[n]](link)``, n = document rank."""
    if not hits:
        return ["I could not find anything about that in the connected sources."]
    terms = _terms(question)
    tokens: list[str | Citation] = []
    for number, (doc, _) in enumerate(hits, start=1):
        sentences = re.split(r"(?<=[.!?])\s+", doc.text)
        best = max(sentences, key=lambda s: len(terms & _terms(s)))
        tokens += [word + " " for word in best.rstrip(".!?").split(" ")]
        tokens += [Citation(number, doc), ". "]
    return tokens


# --- handlers --------------------------------------------------------------------------------
async def create_session(request: web.Request) -> web.Response:
    state = request.app[STATE]
    raw = await request.read()
    body = json.loads(raw) if raw else {}
    if not isinstance(body, dict):
        return unprocessable([_err("", "Input should be a dict", "dict_type", body)])
    persona_id = body.get("persona_id", 0)
    if not isinstance(persona_id, int) or isinstance(persona_id, bool):
        return unprocessable([_err("persona_id", "Input should be int", "int_type", persona_id)])
    if persona_id not in KNOWN_PERSONAS:
        return web.json_response({"detail": "Invalid Persona provided."}, status=400)
    session = FakeSession(str(uuid.uuid4()), persona_id)
    state.sessions[session.id] = session
    return web.json_response({"chat_session_id": session.id, "incognito": False})


async def send_message(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = await request.json()
    errors = validate_send(body)
    if errors:
        return unprocessable(errors)
    stream = body.get("stream", True)
    created: str | None = None
    if body.get("chat_session_id"):
        session = state.sessions.get(str(body["chat_session_id"]))
        if session is None:
            return web.json_response({"detail": "Chat session not found"}, status=404)
    else:
        persona_id = (body.get("chat_session_info") or {}).get("persona_id", 0)
        if persona_id not in KNOWN_PERSONAS:
            return web.json_response({"detail": "Invalid Persona provided."}, status=400)
        session = FakeSession(str(uuid.uuid4()), persona_id)
        state.sessions[session.id] = session
        created = session.id
    parent = body.get("parent_message_id", -1)
    if parent == -1:
        parent = session.latest
    elif parent is not None and parent not in session.messages:
        return web.json_response({"detail": "Parent message not found"}, status=400)
    user_id, assistant_id = state.new_ids()
    question = body["message"]
    session.messages[user_id] = FakeMessage(user_id, parent, "user", question)
    history = " ".join(m.text for m in session.chain(parent) if m.role == "user")
    filters = body.get("internal_search_filters")
    hits = retrieve(question, filters) or retrieve(f"{history} {question}", filters)
    tokens = compose(question, hits)
    text = "".join(_render(t) for t in tokens).strip()
    session.messages[assistant_id] = FakeMessage(assistant_id, user_id, "assistant", text)
    session.latest = assistant_id
    fault: Fault | None = request.get(FAULT)
    ids = {"user_message_id": user_id, "reserved_assistant_message_id": assistant_id}
    documents = [doc.search_doc(score) for doc, score in hits]
    citations = [
        {"citation_number": t.number, "document_id": t.doc.document_id}
        for t in tokens
        if isinstance(t, Citation)
    ]
    if not stream:
        return _full_response(text, documents, citations, assistant_id, session.id, fault)
    return await _stream(request, created, ids, documents, tokens, fault)


def _render(token: str | Citation) -> str:
    if isinstance(token, Citation):
        return f"[[{token.number}]]({token.doc.link})"
    return token


def _full_response(
    text: str,
    documents: list[dict[str, Any]],
    citations: list[dict[str, Any]],
    message_id: int,
    session_id: str,
    fault: Fault | None,
) -> web.Response:
    error_msg = None
    if fault is not None and (fault.error_packet or fault.cut_stream):
        text, documents, citations = "", [], []
        error_msg = "The response stream ended unexpectedly. Please try again."
    return web.json_response(
        {
            "answer": text,
            "answer_citationless": re.sub(r"\s*\[\[\d+\]\]\([^)]*\)", "", text),
            "pre_answer_reasoning": None,
            "tool_calls": [],
            "top_documents": documents,
            "citation_info": citations,
            "message_id": message_id,
            "chat_session_id": session_id,
            "incognito": False,
            "error_msg": error_msg,
        }
    )


def _packet(obj: dict[str, Any]) -> dict[str, Any]:
    return {"placement": PLACEMENT, "obj": obj}


async def _stream(
    request: web.Request,
    created: str | None,
    ids: dict[str, int],
    documents: list[dict[str, Any]],
    tokens: list[str | Citation],
    fault: Fault | None,
) -> web.StreamResponse:
    state = request.app[STATE]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    response.enable_chunked_encoding()
    try:
        await response.prepare(request)
    except ConnectionResetError:  # the client gave up first (a latency fault past its timeout)
        return response

    async def send(value: dict[str, Any]) -> None:
        await _write(response, (json.dumps(value) + "\n").encode("utf-8"), state.chunk_bytes)

    if created:
        await send({"chat_session_id": created, "incognito": False})
    await send(ids)
    if fault is not None and fault.error_packet:
        await send(
            {
                "error": "The LLM provider returned an error.",
                "stack_trace": None,
                "error_code": "MODEL_ERROR" if fault.retryable else "VALIDATION_ERROR",
                "is_retryable": fault.retryable,
                "details": None,
            }
        )
        await response.write_eof()
        return response
    await send(_packet({"type": "chat_heartbeat"}))
    await send(
        _packet(
            {
                "type": "message_start",
                "final_documents": documents,
                "pre_answer_processing_seconds": 0.01,
            }
        )
    )
    cut_at = len(tokens) // 2 if fault is not None and fault.cut_stream else None
    for index, token in enumerate(tokens):
        if cut_at is not None and index >= cut_at:
            # Half a packet, then the connection drops: what a crashed worker looks like.
            await _write(response, b'{"placement": {"turn_index": 0}, "obj": {"ty', None)
            assert request.transport is not None
            request.transport.close()
            return response
        if isinstance(token, Citation):
            # Onyx sends the CitationInfo before the token that carries [[n]](link).
            await send(
                _packet(
                    {
                        "type": "citation_info",
                        "citation_number": token.number,
                        "document_id": token.doc.document_id,
                    }
                )
            )
        await send(_packet({"type": "message_delta", "content": _render(token)}))
    await send(_packet({"type": "section_end"}))
    await send(_packet({"type": "stop", "stop_reason": "finished"}))
    await response.write_eof()
    return response


async def _write(response: web.StreamResponse, data: bytes, chunk_bytes: int | None) -> None:
    if not chunk_bytes:
        await response.write(data)
        return
    for start in range(0, len(data), chunk_bytes):
        await response.write(data[start : start + chunk_bytes])
        await asyncio.sleep(0)


async def create_feedback(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await request.json()
    if not isinstance(body, dict):
        return unprocessable([_err("", "Input should be a dict", "dict_type", body)])
    errors: list[dict[str, Any]] = []
    message_id = body.get("chat_message_id")
    if not isinstance(message_id, int) or isinstance(message_id, bool):
        kind = "missing" if "chat_message_id" not in body else "int_type"
        errors.append(_err("chat_message_id", "Field required", kind, message_id))
    _check_type(errors, body, "is_positive", (bool,))
    _check_type(errors, body, "feedback_text", (str,))
    if not errors and body.get("is_positive") is None and body.get("feedback_text") is None:
        errors.append(_err("", "Value error, Empty feedback received.", "value_error", body))
    if errors:
        return unprocessable(errors)
    known = any(message_id in s.messages for s in state.sessions.values())
    if not known:
        return web.json_response({"detail": "Chat message not found"}, status=400)
    state.feedback.append(
        {
            "chat_message_id": message_id,
            "is_positive": body.get("is_positive"),
            "feedback_text": body.get("feedback_text"),
        }
    )
    return web.json_response(None)


# --- control ---------------------------------------------------------------------------------
async def set_faults(request: web.Request) -> web.Response:
    body = await request.json()
    try:
        fault = Fault(
            latency_s=float(body.get("latency_s", 0.0)),
            status=int(body["status"]) if body.get("status") else None,
            rate=float(body.get("rate", 1.0)),
            error_packet=bool(body.get("error_packet", False)),
            retryable=bool(body.get("retryable", True)),
            cut_stream=bool(body.get("cut_stream", False)),
            count=int(body["count"]) if body.get("count") is not None else None,
            retry_after=float(body["retry_after"]) if body.get("retry_after") else None,
            paths=tuple(body.get("paths") or ()),
        )
    except (TypeError, ValueError, AttributeError) as exc:
        return web.json_response({"detail": f"bad fault: {exc}"}, status=400)
    if "chunk_bytes" in body:
        request.app[STATE].chunk_bytes = int(body["chunk_bytes"]) or None
    request.app[STATE].fault = fault
    return web.json_response({"ok": True})


async def clear_faults(request: web.Request) -> web.Response:
    request.app[STATE].fault = None
    return web.json_response({"ok": True})


async def list_requests(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].requests)


async def clear_requests(request: web.Request) -> web.Response:
    request.app[STATE].requests.clear()
    return web.json_response({"ok": True})


async def get_session(request: web.Request) -> web.Response:
    session = request.app[STATE].sessions.get(request.match_info["id"])
    if session is None:
        return web.json_response({"detail": "not found"}, status=404)
    return web.json_response(
        {
            "chat_session_id": session.id,
            "persona_id": session.persona_id,
            "latest_message_id": session.latest,
            "messages": [
                {"message_id": m.id, "parent_message": m.parent, "type": m.role, "message": m.text}
                for m in session.messages.values()
            ],
        }
    )


async def list_feedback(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].feedback)


async def run_fake_onyx(host: str, port: int, **kwargs: Any) -> None:
    """Serve the fake Onyx until cancelled (``kwargs`` go to :func:`build_fake_onyx_app`)."""
    runner = web.AppRunner(build_fake_onyx_app(**kwargs), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
