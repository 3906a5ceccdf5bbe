"""The webhook ingress: verify, publish the raw delivery, and only then answer 200.

Status codes (Meta retries anything but 200, for up to 7 days):
- ``GET`` handshake: the raw ``hub.challenge`` when the verify token belongs to a bot, else 403.
- ``POST``: 413 over the body limit; 400 not JSON / not a WhatsApp object; 401 no signature;
  403 bad signature (nothing is published for any of these); 503 when the broker did not ack in
  time or a tenant is over its flood ceiling (with Retry-After); 200 once stored. Numbers no bot
  owns are stored on the unrouted topic and answered 200, so nothing is lost and Meta stops.

Stateless: bots come from the store's in-memory ``BotDirectory`` (no query per request), so any
number of copies can run behind a load balancer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from egress.throttle import TokenBucket
from ingress.publisher import PublishFailed, RawPublisher
from ingress.signature import SignatureMismatch, SignatureMissing, verify
from onyx_wa.prometheus_helpers import private_registry
from onyx_wa.settings import Settings

log = logging.getLogger(__name__)
KEPT_HEADERS = ("X-Hub-Signature-256", "User-Agent", "Content-Type")


class BotLookup(Protocol):
    async def get(self, phone_number_id: str) -> Any: ...

    async def verify_tokens(self) -> set[str]: ...


class IngressMetrics:
    def __init__(self) -> None:
        self.registry = r = private_registry()
        self.requests = Counter(
            "onyx_wa_ingress_requests_total", "Webhook requests", ["outcome", "tenant"], registry=r
        )
        self.publish_latency = Histogram(
            "onyx_wa_ingress_publish_seconds",
            "Broker ack latency",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.in_flight = Gauge("onyx_wa_ingress_in_flight", "Requests in flight", registry=r)
        self.body_bytes = Histogram(
            "onyx_wa_ingress_body_bytes",
            "Webhook body sizes",
            buckets=(512, 2048, 8192, 32768, 131072, 524288, 2097152, 4194304),
            registry=r,
        )
        self.unrouted = Counter(
            "onyx_wa_ingress_unrouted_total", "Deliveries for numbers no bot owns", registry=r
        )
        self.flood_rejected = Counter(
            "onyx_wa_ingress_flood_rejected_total",
            "Verified deliveries refused (503) over the tenant ceiling",
            ["tenant"],
            registry=r,
        )


METRICS_KEY = web.AppKey("metrics", IngressMetrics)


def _numbers(doc: Any) -> list[str] | None:
    """Every metadata.phone_number_id in the body, in order; None if not a WhatsApp object."""
    if not isinstance(doc, dict) or doc.get("object") != "whatsapp_business_account":
        return None
    entries = doc.get("entry")
    if not isinstance(entries, list):
        return None
    found: list[str] = []
    for entry in entries:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        if not isinstance(changes, list):
            return None
        for change in changes:
            value = change.get("value") if isinstance(change, dict) else None
            metadata = value.get("metadata") if isinstance(value, dict) else None
            pnid = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
            if isinstance(pnid, (str, int)) and not isinstance(pnid, bool) and str(pnid):
                found.append(str(pnid))
    return found


def _text(value: str) -> str:
    """``value`` as valid UTF-8 for the Avro record: lone surrogates (a JSON ``\\udXXX`` escape,
    header bytes that are not UTF-8) become ``?``. The raw body keeps what was sent."""
    return value.encode("utf-8", "replace").decode("utf-8")


def build_ingress_app(
    settings: Settings,
    *,
    bots: BotLookup,
    publisher: RawPublisher,
    db_check: Callable[[], Awaitable[bool]] | None = None,
) -> web.Application:
    metrics = IngressMetrics()
    floods: dict[str, TokenBucket] = {}
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[METRICS_KEY] = metrics

    def done(outcome: str, tenant: str = "-") -> None:
        metrics.requests.labels(outcome, tenant).inc()

    async def handshake(request: web.Request) -> web.Response:
        q = request.query
        if q.get("hub.mode") == "subscribe" and q.get("hub.verify_token"):
            if q["hub.verify_token"] in await bots.verify_tokens():
                done("handshake_ok")
                return web.Response(text=q.get("hub.challenge", ""))
        done("handshake_denied")
        return web.Response(status=403, text="verify token does not match")

    async def receive(request: web.Request) -> web.Response:
        metrics.in_flight.inc()
        try:
            return await _receive(request)
        finally:
            metrics.in_flight.dec()

    async def _receive(request: web.Request) -> web.Response:
        received = time.time()
        length = request.content_length
        if length is not None and length > settings.max_body_bytes:
            done("too_large")
            return web.Response(status=413, text="body too large")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            done("too_large")
            return web.Response(status=413, text="body too large")
        metrics.body_bytes.observe(len(body))
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # nested too deep: RecursionError
            done("bad_json")
            return web.Response(status=400, text="body is not JSON")
        numbers = _numbers(doc)
        if numbers is None:
            done("not_whatsapp")
            return web.Response(status=400, text="not a WhatsApp Business Account notification")
        header = request.headers.get("X-Hub-Signature-256")
        if not header:
            done("unsigned")
            return web.Response(status=401, text="missing X-Hub-Signature-256")
        owners = [await bots.get(n) for n in numbers]
        known = [b for b in owners if b is not None and getattr(b, "enabled", True)]
        if known:
            try:
                verify(header, body, {b.app_secret for b in known})
            except SignatureMissing:
                done("unsigned")
                return web.Response(status=401, text="malformed X-Hub-Signature-256")
            except SignatureMismatch:
                done("bad_signature")
                return web.Response(status=403, text="signature does not match")
        tenants = [b.tenant_id if b is not None and b in known else "" for b in owners]
        for tenant in dict.fromkeys(t for t in tenants if t):
            bucket = floods.get(tenant)
            if bucket is None:
                rate = settings.tenant_flood_ceiling_per_s
                bucket = floods[tenant] = TokenBucket(rate, burst=max(1.0, rate))
            if not bucket.try_acquire():
                metrics.flood_rejected.labels(tenant).inc()
                done("flood", tenant)
                return web.Response(status=503, headers={"Retry-After": "1"}, text="slow down")
        routed = bool(known)
        record = {
            "delivery_id": str(uuid.uuid4()),
            "received_at": int(received * 1000),
            "body": body,
            "headers": {h: _text(request.headers[h]) for h in KEPT_HEADERS if h in request.headers},
            "tenant_ids": tenants,
            "phone_number_ids": [_text(n) for n in numbers],
            "routed": routed,
        }
        try:
            took = await publisher.publish(record, routed=routed)
        except PublishFailed as exc:
            done("broker_unavailable", tenants[0] if tenants else "-")
            log.warning("publish failed (%s): answering 503 so Meta redelivers", exc)
            return web.Response(status=503, headers={"Retry-After": "5"}, text="try again")
        metrics.publish_latency.observe(took)
        if not routed:
            metrics.unrouted.inc()
            done("unrouted")
        else:
            for tenant in dict.fromkeys(t for t in tenants if t):
                done("accepted", tenant)
        return web.Response(text="ok")

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        broker_ok = await publisher.healthy()
        db_ok = await db_check() if db_check else True
        try:
            await bots.verify_tokens()
            config_ok = True
        except Exception:
            config_ok = False
        ok = broker_ok and db_ok and config_ok
        return web.json_response(
            {"broker": broker_ok, "database": db_ok, "config": config_ok},
            status=200 if ok else 503,
        )

    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app.router.add_get("/webhooks/whatsapp", handshake)
    app.router.add_post("/webhooks/whatsapp", receive)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    return app


async def start_ingress(
    settings: Settings, *, host: str | None = None, port: int | None = None
) -> Callable[[], Awaitable[None]]:
    """Start the ingress (store, cache, producer, server); returns an async ``close``."""
    from store.cache import BotDirectory
    from store.crypto import SecretBox, resolve_encryption_key
    from store.db import check_database, make_engine, session_factory
    from store.repo import BotRepository

    await check_database(settings.sqlalchemy_url)
    engine = make_engine(settings.sqlalchemy_url)
    bots = BotDirectory(
        BotRepository(session_factory(engine), SecretBox(resolve_encryption_key(settings))),
        ttl_s=settings.bot_cache_ttl_s,
    )
    await bots.refresh(force=True)
    publisher = RawPublisher(settings)
    try:
        await publisher.start()
    except PublishFailed:
        log.warning("broker unreachable at start: answering 503 until it is back")

    async def db_check() -> bool:
        try:
            await check_database(settings.sqlalchemy_url, timeout_s=2)
        except Exception:
            return False
        return True

    app = build_ingress_app(settings, bots=bots, publisher=publisher, db_check=db_check)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host or settings.ingress_host, port or settings.ingress_port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        await publisher.stop()
        await engine.dispose()
        raise

    async def close() -> None:
        await runner.cleanup()
        await publisher.stop()
        await engine.dispose()

    return close


async def run_ingress(settings: Settings) -> None:
    """Serve until cancelled."""
    close = await start_ingress(settings)
    try:
        await asyncio.Event().wait()
    finally:
        await close()
