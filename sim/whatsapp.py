"""A WhatsApp Cloud API simulator: the Graph API endpoints the project uses, faithfully.

Every send is validated against Meta's OpenAPI document and the brief's limits and answered in
Meta's shapes (``{"messaging_product","contacts","messages":[{"id"}]}`` or ``{"error":{...}}``).
Per-number throughput (130429) and per-recipient pair rate (131056) are enforced with the real
codes, faults can be injected by code, and everything "delivered" to users can be read back at
``GET /_sim/messages`` — the demo and the tests use that as the user's phone.

Tokens: with a ``tokens`` map (phone_number_id → token) the simulator enforces it; without one
it accepts any non-empty bearer token (the embedded stack does not share secrets with it).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from egress.throttle import TokenBucket
from sim.spec import SpecValidator, load_validator

MEDIA_URL_TTL_S = 300.0


def meta_error(
    status: int, code: int, message: str, *, subcode: int | None = None, details: str = ""
) -> web.Response:
    """Meta's error shape, with an fbtrace_id like the real one."""
    error: dict[str, Any] = {
        "message": message,
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": details or message},
        "fbtrace_id": uuid.uuid4().hex[:22],
    }
    if subcode is not None:
        error["error_subcode"] = subcode
    return web.json_response({"error": error}, status=status)


@dataclass
class Faults:
    codes: dict[int, float] = field(default_factory=dict)  # code (or HTTP 5xx) -> probability
    latency_ms: float = 0.0
    rng: random.Random = field(default_factory=random.Random)
    sequence: deque[int] = field(default_factory=deque)  # exact codes for the next sends

    def pick(self) -> int | None:
        if self.sequence:
            return self.sequence.popleft()
        for code, rate in self.codes.items():
            if self.rng.random() < rate:
                return code
        return None


@dataclass
class SimState:
    validator: SpecValidator
    tokens: dict[str, str] | None
    throughput_per_s: float
    pair_per_message_s: float
    pair_burst: int
    messages: list[dict[str, Any]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    number_rates: dict[str, float] = field(default_factory=dict)
    pairs: dict[str, TokenBucket] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    media: dict[str, dict[str, Any]] = field(default_factory=dict)
    media_urls: dict[str, tuple[str, float]] = field(default_factory=dict)
    recent_ids: deque[str] = field(default_factory=lambda: deque(maxlen=100_000))
    clock: Any = time.monotonic


SIM_KEY = web.AppKey("sim", SimState)


def _recipient(payload: dict[str, Any]) -> str:
    return str(payload.get("to") or payload.get("recipient") or "")


def _body_text(payload: dict[str, Any]) -> str | None:
    kind = payload.get("type")
    if kind == "text":
        return (payload.get("text") or {}).get("body")
    if kind == "interactive":
        return ((payload.get("interactive") or {}).get("body") or {}).get("text")
    if kind in ("image", "video", "document"):
        return (payload.get(kind) or {}).get("caption")
    if kind == "reaction":
        return (payload.get("reaction") or {}).get("emoji")
    return None


def build_sim_app(
    *,
    validator: SpecValidator | None = None,
    tokens: dict[str, str] | None = None,
    default_throughput_per_s: float = 80.0,
    pair_per_message_s: float = 6.0,
    pair_burst: int = 20,
) -> web.Application:
    state = SimState(
        validator=validator or load_validator(),
        tokens=tokens,
        throughput_per_s=default_throughput_per_s,
        pair_per_message_s=pair_per_message_s,
        pair_burst=pair_burst,
    )
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[SIM_KEY] = state
    app.router.add_post(r"/{version:v\d+\.\d+}/{pnid}/messages", send)
    app.router.add_get(r"/{version:v\d+\.\d+}/{media_id}", media_info)
    app.router.add_get("/_sim/media/{token}", media_download)
    app.router.add_post("/_sim/media", media_upload)
    app.router.add_get("/_sim/messages", list_messages)
    app.router.add_delete("/_sim/messages", clear_messages)
    app.router.add_get("/_sim/actions", list_actions)
    app.router.add_post("/_sim/faults", set_faults)
    app.router.add_delete("/_sim/faults", clear_faults)
    app.router.add_post("/_sim/numbers/{pnid}", set_number)
    app.router.add_get("/healthz", lambda _: web.json_response({"status": "alive"}))
    return app


def _auth(request: web.Request, state: SimState, pnid: str | None) -> web.Response | None:
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header.startswith("Bearer ") else ""
    if not token:
        return meta_error(401, 190, "Invalid OAuth access token - Cannot parse access token")
    if state.tokens is not None and pnid is not None and state.tokens.get(pnid) != token:
        return meta_error(
            401, 190, "Error validating access token: Session has expired", subcode=463
        )
    return None


async def send(request: web.Request) -> web.Response:
    state: SimState = request.app[SIM_KEY]
    pnid = request.match_info["pnid"]
    denied = _auth(request, state, pnid)
    if denied is not None:
        return denied
    try:
        payload = await request.json()
    except (ValueError, UnicodeDecodeError):
        return meta_error(400, 100, "(#100) The parameter body must be valid JSON")
    errors = state.validator.validate_send(payload)
    if errors:
        return meta_error(400, 100, "(#100) Invalid parameter", details="; ".join(errors))
    if state.faults.latency_ms:
        await asyncio.sleep(state.faults.latency_ms / 1000)
    fault = state.faults.pick()
    if fault is not None:
        if 500 <= fault <= 599:
            return web.json_response(
                {"error": {"message": "Service temporarily unavailable", "code": 2}}, status=fault
            )
        return meta_error(400, fault, f"(#{fault}) injected fault")
    if payload.get("status") == "read":
        if payload.get("recipient_type") == "group":
            return meta_error(400, 100, "(#100) mark as read is not supported in groups")
        state.actions.append(
            {
                "phone_number_id": pnid,
                "action": "read",
                "message_id": payload["message_id"],
                "typing": "typing_indicator" in payload,
                "time": datetime.now(UTC).isoformat(),
            }
        )
        return web.json_response({"success": True})
    rate = state.number_rates.get(pnid, state.throughput_per_s)
    bucket = state.buckets.get(pnid)
    if bucket is None or bucket.rate != rate:
        bucket = state.buckets[pnid] = TokenBucket(rate, burst=max(1.0, rate / 10))
    if not bucket.try_acquire():
        return meta_error(
            400, 130429, "(#130429) Rate limit hit: Cloud API message throughput has been reached"
        )
    to = _recipient(payload)
    pair_key = f"{pnid}:{to}"
    pair = state.pairs.get(pair_key)
    if pair is None:
        pair = state.pairs[pair_key] = TokenBucket(
            1 / state.pair_per_message_s, burst=state.pair_burst
        )
    if not pair.try_acquire():
        return meta_error(
            400, 131056, "(#131056) (Business Account, Consumer Account) pair rate limit hit"
        )
    wamid = "wamid." + hashlib.sha1(uuid.uuid4().bytes).hexdigest()[:40].upper()  # noqa: S324
    state.messages.append(
        {
            "id": wamid,
            "phone_number_id": pnid,
            "to": payload.get("to"),
            "recipient": payload.get("recipient"),
            "type": payload.get("type"),
            "body": _body_text(payload),
            "context": (payload.get("context") or {}).get("message_id"),
            "payload": payload,
            "time": datetime.now(UTC).isoformat(),
        }
    )
    contact: dict[str, Any] = {"input": to}
    if payload.get("recipient"):
        contact["user_id"] = to
    else:
        contact["wa_id"] = to
    return web.json_response(
        {"messaging_product": "whatsapp", "contacts": [contact], "messages": [{"id": wamid}]}
    )


async def list_messages(request: web.Request) -> web.Response:
    state: SimState = request.app[SIM_KEY]
    since = request.query.get("since")
    messages = [m for m in state.messages if not since or m["time"] > since]
    return web.Response(
        text=json.dumps(messages, ensure_ascii=False), content_type="application/json"
    )


async def clear_messages(request: web.Request) -> web.Response:
    request.app[SIM_KEY].messages.clear()
    return web.json_response({"cleared": True})


async def list_actions(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_KEY].actions)


async def set_faults(request: web.Request) -> web.Response:
    state: SimState = request.app[SIM_KEY]
    try:
        spec = await request.json()
        codes = {int(k): float(v) for k, v in (spec.get("codes") or {}).items()}
        latency = float(spec.get("latency_ms") or 0)
    except (ValueError, TypeError, AttributeError):
        return web.json_response(
            {"error": "faults: {codes:{code:rate}, latency_ms, seed}"}, status=400
        )
    if any(not 0 <= r <= 1 for r in codes.values()):
        return web.json_response({"error": "rates must be between 0 and 1"}, status=400)
    state.faults = Faults(
        codes=codes,
        latency_ms=latency,
        rng=random.Random(spec.get("seed")),
        sequence=deque(int(c) for c in spec.get("sequence") or []),
    )
    return web.json_response(
        {"faults": {str(k): v for k, v in codes.items()}, "latency_ms": latency}
    )


async def clear_faults(request: web.Request) -> web.Response:
    request.app[SIM_KEY].faults = Faults()
    return web.json_response({"faults": {}})


async def set_number(request: web.Request) -> web.Response:
    """Per-number settings, e.g. {"throughput_per_s": 1000} for a higher-tier number."""
    state: SimState = request.app[SIM_KEY]
    body = await request.json()
    state.number_rates[request.match_info["pnid"]] = float(body["throughput_per_s"])
    return web.json_response({"ok": True})


async def media_upload(request: web.Request) -> web.Response:
    """Test helper: store bytes as an inbound media object."""
    state: SimState = request.app[SIM_KEY]
    data = await request.read()
    media_id = str(uuid.uuid4().int)[:16]
    state.media[media_id] = {
        "bytes": data,
        "mime_type": request.content_type or "application/octet-stream",
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return web.json_response({"id": media_id})


async def media_info(request: web.Request) -> web.Response:
    state: SimState = request.app[SIM_KEY]
    denied = _auth(request, state, None)
    if denied is not None:
        return denied
    media_id = request.match_info["media_id"]
    media = state.media.get(media_id)
    if media is None:
        return meta_error(404, 100, f"(#100) Unsupported get request. Object with ID '{media_id}'")
    token = uuid.uuid4().hex
    state.media_urls[token] = (media_id, state.clock() + MEDIA_URL_TTL_S)
    return web.json_response(
        {
            "messaging_product": "whatsapp",
            "url": f"{request.url.origin()}/_sim/media/{token}",
            "mime_type": media["mime_type"],
            "sha256": media["sha256"],
            "file_size": len(media["bytes"]),
            "id": media_id,
        }
    )


async def media_download(request: web.Request) -> web.Response:
    state: SimState = request.app[SIM_KEY]
    denied = _auth(request, state, None)
    if denied is not None:
        return denied
    entry = state.media_urls.get(request.match_info["token"])
    if entry is None or entry[1] < state.clock():
        return web.Response(status=404, text="URL expired")
    media = state.media[entry[0]]
    return web.Response(body=media["bytes"], content_type=media["mime_type"])


async def run_sim(host: str, port: int, **kwargs: Any) -> None:
    """Serve the simulator until cancelled."""
    runner = web.AppRunner(build_sim_app(**kwargs), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
