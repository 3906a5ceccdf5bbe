"""A WhatsApp Cloud API simulator: the Graph API endpoints the project uses, faithfully.

Why: every stage downstream of the answer is tested (and benchmarked) against this server, so it
must fail the way Meta fails. Every send is validated against Meta's OpenAPI document and the
brief's limits and answered in Meta's shapes (``{"messaging_product","contacts","messages"}`` or
``{"error":{...}}``); per-number throughput (130429) and per-recipient pair rate (131056) are
enforced with the real codes; faults can be injected by code; everything "delivered" to users
can be read back at ``GET /_sim/messages`` — the demo and the tests use that as the user's phone.

Decisions (also in docs/simulator.md):

- Tokens: with a ``tokens`` map (phone_number_id → token) the simulator enforces it; without one
  it accepts any non-empty bearer token (the embedded stack does not share secrets with it).
- The 24 h window: the simulator knows a user wrote only through its own Meta side
  (``POST /_sim/inbound``). Without ``enforce_window`` every free-form send is accepted. With it,
  a send to a user with no inbound message in the last 24 h is accepted (a wamid is returned)
  and then *fails* with a ``failed`` status carrying 131047 — which is how Meta reports it.
- Statuses: with ``webhook_url`` and app secrets, the simulator posts signed webhooks like Meta:
  user messages from ``/_sim/inbound``, ``failed`` statuses, and — with ``emit_statuses`` —
  ``sent``, ``delivered`` and ``read`` for every accepted message, batched per number.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from egress.throttle import TokenBucket
from sim import meta
from sim.spec import SpecValidator, load_validator

log = logging.getLogger(__name__)

MEDIA_URL_TTL_S = 300.0
WINDOW_S = 24 * 3600.0
MAX_STATUSES_PER_POST = 1000
DEFAULT_STATUS_DELAYS_S = (0.05, 0.15, 0.3)
_VERSION = r"{version:v\d+\.\d+}"


def meta_error(
    status: int, code: int, message: str, *, subcode: int | None = None, details: str = ""
) -> web.Response:
    """Meta's error shape, with an fbtrace_id like the real one."""
    error: dict[str, Any] = {
        "message": message,
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": details or message},
        "fbtrace_id": "A" + uuid.uuid4().hex[:22],
    }
    if subcode is not None:
        error["error_subcode"] = subcode
    return web.json_response({"error": error}, status=status)


@dataclass
class Faults:
    """Injected failures: a probability per code (or HTTP 5xx), an exact sequence, latency."""

    codes: dict[int, float] = field(default_factory=dict)
    latency_ms: float = 0.0
    rng: random.Random = field(default_factory=random.Random)
    sequence: deque[int] = field(default_factory=deque)

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
    enforce_window: bool = False
    webhook_url: str | None = None
    app_secrets: Mapping[str, str] | Callable[[str], str] | None = None
    emit_statuses: bool = False
    status_delays_s: tuple[float, ...] = DEFAULT_STATUS_DELAYS_S
    messages: deque[dict[str, Any]] = field(default_factory=deque)
    actions: deque[dict[str, Any]] = field(default_factory=deque)
    statuses: deque[dict[str, Any]] = field(default_factory=deque)
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    number_rates: dict[str, float] = field(default_factory=dict)
    pairs: dict[str, TokenBucket] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    media: dict[str, dict[str, Any]] = field(default_factory=dict)
    media_urls: dict[str, tuple[str, float]] = field(default_factory=dict)
    last_inbound: dict[str, float] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    emitter: StatusEmitter | None = None


SIM_KEY = web.AppKey("sim", SimState)


class StatusEmitter:
    """Posts due statuses to the webhook, batched per number, like Meta's delivery.

    Why one task and a heap instead of a task per message: the egress benchmark drives
    thousands of sends per second through the simulator; a timer per message would cost more
    than the sends.
    """

    def __init__(self, state: SimState) -> None:
        self.state = state
        self._heap: list[tuple[float, int, str, dict[str, Any]]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The client session webhooks are posted with (open between start and stop)."""
        if self._session is None:
            raise RuntimeError("the status emitter is not started")
        return self._session

    def schedule(self, delay_s: float, phone_number_id: str, status: dict[str, Any]) -> None:
        due = time.monotonic() + delay_s
        heapq.heappush(self._heap, (due, next(self._seq), phone_number_id, status))
        self._wake.set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._task = asyncio.create_task(self._run(), name="sim-status-emitter")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            if not self._heap:
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = self._heap[0][0] - time.monotonic()
            if wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                continue
            due: dict[str, list[dict[str, Any]]] = {}
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now:
                _, _, pnid, status = heapq.heappop(self._heap)
                due.setdefault(pnid, []).append(status)
            for pnid, statuses in due.items():
                for i in range(0, len(statuses), MAX_STATUSES_PER_POST):
                    await self._post(pnid, statuses[i : i + MAX_STATUSES_PER_POST])

    async def _post(self, pnid: str, statuses: list[dict[str, Any]]) -> None:
        """Deliver with a few quick retries (Meta retries for days; a test needs seconds)."""
        code: int | None = None
        state = self.state
        if state.webhook_url and state.app_secrets is not None and self._session is not None:
            sender = meta.MetaWebhookSender(state.webhook_url, state.app_secrets, self._session)
            body = meta.serialise(meta.notification(pnid, statuses=statuses))
            for attempt in range(3):
                try:
                    code = await sender.post(body, phone_number_id=pnid)
                except KeyError:
                    log.warning("simulator: no app secret for number %s; status dropped", pnid)
                    break
                except (aiohttp.ClientError, TimeoutError) as exc:
                    log.info("simulator: status webhook failed: %s", type(exc).__name__)
                    code = None
                if code == 200:
                    break
                await asyncio.sleep(0.2 * 2**attempt)
        for status in statuses:
            state.statuses.append(
                {
                    "phone_number_id": pnid,
                    "id": status["id"],
                    "status": status["status"],
                    "errors": status.get("errors", []),
                    "webhook_status": code,
                    "time": _now_iso(),
                },
            )


def build_sim_app(
    *,
    validator: SpecValidator | None = None,
    tokens: dict[str, str] | None = None,
    default_throughput_per_s: float = 80.0,
    pair_per_message_s: float = 6.0,
    pair_burst: int = 20,
    enforce_window: bool = False,
    webhook_url: str | None = None,
    app_secrets: Mapping[str, str] | Callable[[str], str] | None = None,
    emit_statuses: bool = False,
    status_delays_s: tuple[float, ...] = DEFAULT_STATUS_DELAYS_S,
    clock: Callable[[], float] = time.monotonic,
    max_records: int = 200_000,
) -> web.Application:
    """The simulator as an aiohttp app (serve it with ``web.AppRunner`` or :func:`run_sim`).

    ``pair_burst`` defaults to 20: the sender's own pacer allows bursts of 10, and a simulator
    stricter than the sender would turn ordinary pipeline tests into 131056 back-off waits.
    ``clock`` (seconds, monotonic) drives media URL expiry and the 24 h window, so tests can
    move time. ``max_records`` bounds each inspection log (messages, actions, statuses).
    """
    if default_throughput_per_s <= 0 or pair_per_message_s <= 0 or pair_burst < 1:
        raise ValueError("throughput, pair interval and pair burst must be positive")
    state = SimState(
        validator=validator or load_validator(),
        tokens=tokens,
        throughput_per_s=default_throughput_per_s,
        pair_per_message_s=pair_per_message_s,
        pair_burst=pair_burst,
        enforce_window=enforce_window,
        webhook_url=webhook_url,
        app_secrets=app_secrets,
        emit_statuses=emit_statuses,
        status_delays_s=status_delays_s,
        messages=deque(maxlen=max_records),
        actions=deque(maxlen=max_records),
        statuses=deque(maxlen=max_records),
        clock=clock,
    )
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[SIM_KEY] = state
    app.router.add_post(f"/{_VERSION}/{{pnid}}/messages", send)
    app.router.add_get(f"/{_VERSION}/{{media_id}}", media_info)
    app.router.add_get("/_sim/media/{media_id}", media_download)
    app.router.add_post("/_sim/media", media_upload)
    app.router.add_get("/_sim/messages", list_messages)
    app.router.add_get("/_sim/messages/count", count_messages)
    app.router.add_delete("/_sim/messages", clear_messages)
    app.router.add_get("/_sim/actions", list_actions)
    app.router.add_get("/_sim/statuses", list_statuses)
    app.router.add_post("/_sim/faults", set_faults)
    app.router.add_delete("/_sim/faults", clear_faults)
    app.router.add_post("/_sim/numbers/{pnid}", set_number)
    app.router.add_post("/_sim/inbound", inbound)
    app.router.add_post("/_sim/config", set_config)
    app.router.add_get("/healthz", healthz)
    app.on_startup.append(_start_emitter)
    app.on_cleanup.append(_stop_emitter)
    return app


async def _start_emitter(app: web.Application) -> None:
    state = app[SIM_KEY]
    state.emitter = StatusEmitter(state)
    await state.emitter.start()


async def _stop_emitter(app: web.Application) -> None:
    emitter = app[SIM_KEY].emitter
    if emitter is not None:
        await emitter.stop()


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header[:7].lower() == "bearer " else ""


def _auth(request: web.Request, state: SimState, pnid: str | None) -> web.Response | None:
    """Meta's 190 for a missing or wrong token (the token itself is never echoed)."""
    token = _bearer(request)
    if not token:
        return meta_error(401, 190, "Invalid OAuth access token - Cannot parse access token")
    if state.tokens is None:
        return None
    valid = state.tokens.get(pnid) == token if pnid else token in state.tokens.values()
    if not valid:
        return meta_error(
            401, 190, "Error validating access token: Session has expired", subcode=463
        )
    return None


def _recipient(payload: dict[str, Any]) -> str:
    return str(payload.get("to") or payload.get("recipient") or "")


def _body_text(payload: dict[str, Any]) -> str | None:
    kind = payload.get("type")
    part = payload.get(kind) if isinstance(kind, str) else None
    if not isinstance(part, dict):
        return None
    if kind == "text":
        return part.get("body")
    if kind == "interactive":
        body = part.get("body")
        return body.get("text") if isinstance(body, dict) else None
    if kind in ("image", "video", "document"):
        return part.get("caption")
    if kind == "reaction":
        return part.get("emoji")
    if kind == "template":
        return part.get("name")
    return None


def _fault_response(code: int) -> web.Response:
    if 500 <= code <= 599:
        return web.json_response(
            {"error": {"message": "Service temporarily unavailable", "code": 2}}, status=code
        )
    status = 401 if code == 190 else 400
    return meta_error(status, code, f"(#{code}) injected fault")


async def send(request: web.Request) -> web.Response:
    """``POST /{version}/{phone_number_id}/messages``: validate, rate-limit, accept, record."""
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
        return _fault_response(fault)
    if payload.get("status") == "read":
        state.actions.append(
            {
                "phone_number_id": pnid,
                "action": "read",
                "message_id": payload["message_id"],
                "typing": "typing_indicator" in payload,
                "time": _now_iso(),
            },
        )
        return web.json_response({"success": True})
    limited = _rate_limit(state, pnid, _recipient(payload))
    if limited is not None:
        return limited
    return _accept(state, pnid, payload)


def _rate_limit(state: SimState, pnid: str, to: str) -> web.Response | None:
    rate = state.number_rates.get(pnid, state.throughput_per_s)
    bucket = state.buckets.get(pnid)
    if bucket is None or bucket.rate != rate:
        bucket = state.buckets[pnid] = TokenBucket(rate, burst=max(1.0, rate / 10))
    if not bucket.try_acquire():
        return meta_error(
            400, 130429, "(#130429) Rate limit hit: Cloud API message throughput has been reached"
        )
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
    return None


def _accept(state: SimState, pnid: str, payload: dict[str, Any]) -> web.Response:
    to = _recipient(payload)
    wamid = meta.new_wamid()
    group = payload.get("recipient_type") == "group"
    context = payload.get("context")
    outside_window = (
        state.enforce_window
        and not group
        and payload.get("type") != "template"
        and state.clock() - state.last_inbound.get(f"{pnid}:{to}", float("-inf")) > WINDOW_S
    )
    record = {
        "id": wamid,
        "phone_number_id": pnid,
        "to": payload.get("to"),
        "recipient": payload.get("recipient"),
        "type": payload.get("type"),
        "body": _body_text(payload),
        "context": context.get("message_id") if isinstance(context, dict) else None,
        "payload": payload,
        "time": _now_iso(),
    }
    bsuid = "recipient" in payload and "to" not in payload
    callback = payload.get("biz_opaque_callback_data")
    if outside_window:
        error = meta.window_closed_error()
        failed = meta.status(
            wamid, "failed", to, errors=[error], bsuid=bsuid, callback_data=callback
        )
        _emit(state, pnid, [(state.status_delays_s[0], failed)], always=True)
    else:
        state.messages.append(record)
        if state.emit_statuses:
            steps = zip(state.status_delays_s, ("sent", "delivered", "read"), strict=False)
            _emit(
                state,
                pnid,
                [(d, meta.status(wamid, s, to, bsuid=bsuid, callback_data=callback))
                 for d, s in steps],
            )  # fmt: skip
    contact: dict[str, Any] = {"input": to}
    if bsuid:
        contact["user_id"] = to
    else:
        contact["wa_id"] = to.lstrip("+").replace(" ", "").replace("-", "")
    return web.json_response(
        {"messaging_product": "whatsapp", "contacts": [contact], "messages": [{"id": wamid}]}
    )


def _emit(
    state: SimState,
    pnid: str,
    items: list[tuple[float, dict[str, Any]]],
    *,
    always: bool = False,
) -> None:
    """Queue statuses for the webhook; without one, failures are still recorded for tests."""
    if state.emitter is not None and (state.webhook_url or always):
        for delay, status in items:
            state.emitter.schedule(delay, pnid, status)


def _since_filter(request: web.Request) -> Callable[[dict[str, Any]], bool] | web.Response:
    since_raw = request.query.get("since")
    to = request.query.get("to")
    pnid = request.query.get("phone_number_id")
    since: datetime | None = None
    if since_raw:
        try:
            since = datetime.fromisoformat(since_raw.replace("Z", "+00:00").replace(" ", "+"))
        except ValueError:
            return web.json_response({"error": "since: an ISO 8601 time"}, status=400)
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)

    def keep(item: dict[str, Any]) -> bool:
        if since is not None and datetime.fromisoformat(item["time"]) <= since:
            return False
        if to is not None and to not in (item.get("to"), item.get("recipient")):
            return False
        return pnid is None or item.get("phone_number_id") == pnid

    return keep


async def list_messages(request: web.Request) -> web.Response:
    """Everything delivered to users; ``?since=ISO``, ``?to=``, ``?phone_number_id=`` filter."""
    keep = _since_filter(request)
    if isinstance(keep, web.Response):
        return keep
    return web.json_response([m for m in request.app[SIM_KEY].messages if keep(m)])


async def count_messages(request: web.Request) -> web.Response:
    """``{"count": N}`` with the same filters: cheap polling (benchmarks wait on it)."""
    keep = _since_filter(request)
    if isinstance(keep, web.Response):
        return keep
    messages = request.app[SIM_KEY].messages
    if not request.query.keys() & {"since", "to", "phone_number_id"}:
        return web.json_response({"count": len(messages)})
    return web.json_response({"count": sum(1 for m in messages if keep(m))})


async def clear_messages(request: web.Request) -> web.Response:
    request.app[SIM_KEY].messages.clear()
    return web.json_response({"cleared": True})


async def list_actions(request: web.Request) -> web.Response:
    """Read receipts and typing indicators (not user-visible messages)."""
    keep = _since_filter(request)
    if isinstance(keep, web.Response):
        return keep
    return web.json_response([a for a in request.app[SIM_KEY].actions if keep(a)])


async def list_statuses(request: web.Request) -> web.Response:
    """Statuses the simulator emitted, with the webhook's HTTP answer (None: not posted)."""
    keep = _since_filter(request)
    if isinstance(keep, web.Response):
        return keep
    return web.json_response([s for s in request.app[SIM_KEY].statuses if keep(s)])


async def set_faults(request: web.Request) -> web.Response:
    """``{"codes": {"130429": 0.1, "500": 0.05}, "latency_ms": N, "seed": S, "sequence": [..]}``"""
    state: SimState = request.app[SIM_KEY]
    try:
        spec = await request.json()
        codes = {int(k): float(v) for k, v in (spec.get("codes") or {}).items()}
        latency = float(spec.get("latency_ms") or 0)
        sequence = deque(int(c) for c in spec.get("sequence") or [])
    except (ValueError, TypeError, AttributeError):
        return web.json_response(
            {"error": "faults: {codes:{code:rate}, latency_ms, seed, sequence:[code]}"}, status=400
        )
    if any(not 0 <= r <= 1 for r in codes.values()) or latency < 0:
        return web.json_response(
            {"error": "rates must be between 0 and 1, latency non-negative"}, status=400
        )
    state.faults = Faults(
        codes=codes, latency_ms=latency, rng=random.Random(spec.get("seed")), sequence=sequence
    )
    return web.json_response(
        {"faults": {str(k): v for k, v in codes.items()}, "latency_ms": latency}
    )


async def clear_faults(request: web.Request) -> web.Response:
    request.app[SIM_KEY].faults = Faults()
    return web.json_response({"faults": {}})


async def set_number(request: web.Request) -> web.Response:
    """Per-number settings, e.g. ``{"throughput_per_s": 1000}`` for a higher-tier number."""
    state: SimState = request.app[SIM_KEY]
    try:
        rate = float((await request.json())["throughput_per_s"])
    except (ValueError, TypeError, KeyError):
        return web.json_response({"error": "body: {throughput_per_s: number}"}, status=400)
    if rate <= 0:
        return web.json_response({"error": "throughput_per_s must be positive"}, status=400)
    state.number_rates[request.match_info["pnid"]] = rate
    return web.json_response({"ok": True})


async def set_config(request: web.Request) -> web.Response:
    """Runtime switches for a simulator started on its own (``onyx-wa sim``).

    ``{"webhook_url", "app_secrets": {pnid: secret}, "emit_statuses", "enforce_window"}``; the
    answer never contains a secret.
    """
    state: SimState = request.app[SIM_KEY]
    try:
        body = await request.json()
        secrets = body.get("app_secrets")
        if secrets is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in secrets.items()
        ):
            raise TypeError
    except (ValueError, TypeError, AttributeError):
        return web.json_response({"error": "body: a JSON object (see docs)"}, status=400)
    if "webhook_url" in body:
        state.webhook_url = body["webhook_url"] or None
    if secrets is not None:
        state.app_secrets = dict(secrets)
    for flag in ("emit_statuses", "enforce_window"):
        if flag in body:
            setattr(state, flag, bool(body[flag]))
    return web.json_response(
        {
            "webhook_url": state.webhook_url,
            "emit_statuses": state.emit_statuses,
            "enforce_window": state.enforce_window,
        }
    )


async def inbound(request: web.Request) -> web.Response:
    """A user writes to a business number: opens the 24 h window and posts the webhook.

    Body: ``{"phone_number_id", "from" | "user_id", "text" | "button_reply": {id, title} |
    "reaction": {message_id, emoji}, "group_id"?, "reply_to"?, "name"?}``.
    """
    state: SimState = request.app[SIM_KEY]
    try:
        body = await request.json()
        pnid = str(body["phone_number_id"])
        user, bsuid = str(body.get("from") or ""), body.get("user_id")
        if not (user or bsuid):
            raise KeyError("from")
        if "button_reply" in body:
            b = body["button_reply"]
            msg = meta.button_reply(
                user, str(b["id"]), str(b["title"]), bsuid=bsuid, context_id=body.get("reply_to")
            )
        elif "reaction" in body:
            r = body["reaction"]
            msg = meta.reaction(user, str(r["message_id"]), str(r.get("emoji", "")), bsuid=bsuid)
        else:
            msg = meta.text_message(
                user,
                str(body["text"]),
                bsuid=bsuid,
                group_id=body.get("group_id"),
                reply_to=body.get("reply_to"),
            )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return web.json_response({"error": f"bad inbound message: {exc!s}"[:200]}, status=400)
    for key in {user, bsuid} - {"", None}:
        state.last_inbound[f"{pnid}:{key}"] = state.clock()
    webhook_status: int | None = None
    if state.webhook_url and state.app_secrets is not None and state.emitter is not None:
        sender = meta.MetaWebhookSender(state.webhook_url, state.app_secrets, state.emitter.session)
        doc = meta.notification(
            pnid,
            messages=[msg],
            contacts=[meta.contact(user, str(body.get("name") or "Test User"), bsuid=bsuid)],
        )
        try:
            webhook_status = await sender.post(meta.serialise(doc), phone_number_id=pnid)
        except KeyError:
            return web.json_response({"error": f"no app secret for {pnid}"}, status=400)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return web.json_response({"error": f"webhook: {type(exc).__name__}"}, status=502)
    return web.json_response({"id": msg["id"], "webhook_status": webhook_status})


async def media_upload(request: web.Request) -> web.Response:
    """Test helper: store bytes as an inbound media object (``?phone_number_id=`` owns it)."""
    state: SimState = request.app[SIM_KEY]
    data = await request.read()
    media_id = str(uuid.uuid4().int)[:16]
    state.media[media_id] = {
        "bytes": data,
        "mime_type": request.content_type or "application/octet-stream",
        "sha256": hashlib.sha256(data).hexdigest(),
        "owner": request.query.get("phone_number_id"),
    }
    return web.json_response({"id": media_id})


async def media_info(request: web.Request) -> web.Response:
    """``GET /{version}/{media_id}``: metadata and a URL that expires after five minutes."""
    state: SimState = request.app[SIM_KEY]
    media_id = request.match_info["media_id"]
    media = state.media.get(media_id)
    denied = _auth(request, state, media["owner"] if media else None)
    if denied is not None:
        return denied
    if media is None:
        return meta_error(
            404,
            100,
            f"Unsupported get request. Object with ID '{media_id}' does not exist",
            subcode=33,
        )
    ticket = uuid.uuid4().hex
    state.media_urls[ticket] = (media_id, state.clock() + MEDIA_URL_TTL_S)
    return web.json_response(
        {
            "messaging_product": "whatsapp",
            "url": f"{request.url.origin()}/_sim/media/{media_id}?ticket={ticket}",
            "mime_type": media["mime_type"],
            "sha256": media["sha256"],
            "file_size": len(media["bytes"]),
            "id": media_id,
        }
    )


async def media_download(request: web.Request) -> web.Response:
    """The short-lived URL: needs the same Bearer token and an unexpired ticket."""
    state: SimState = request.app[SIM_KEY]
    media_id = request.match_info["media_id"]
    media = state.media.get(media_id)
    denied = _auth(request, state, media["owner"] if media else None)
    if denied is not None:
        return denied
    entry = state.media_urls.get(request.query.get("ticket", ""))
    if media is None or entry is None or entry[0] != media_id:
        return web.Response(status=404, text="Not found")
    if entry[1] < state.clock():
        state.media_urls.pop(request.query["ticket"], None)
        return web.Response(status=404, text="URL expired")
    return web.Response(body=media["bytes"], content_type=media["mime_type"])


async def healthz(request: web.Request) -> web.Response:
    state: SimState = request.app[SIM_KEY]
    return web.json_response({"status": "alive", "spec": state.validator.uses_spec})


async def run_sim(host: str, port: int, **kwargs: Any) -> None:
    """Serve the simulator until cancelled (``kwargs`` go to :func:`build_sim_app`)."""
    runner = web.AppRunner(build_sim_app(**kwargs), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("WhatsApp simulator on http://%s:%s", host, port)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
