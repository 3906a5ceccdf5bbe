"""Meta's side of the webhook: body shapes, Meta's JSON style and the signature, over real HTTP."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sim import meta


class Ingress:
    """A minimal receiver that verifies like the real ingress: HMAC over the raw bytes."""

    def __init__(self, secrets: dict[str, str], answer: int = 200) -> None:
        self.secrets = secrets
        self.answer = answer
        self.bodies: list[bytes] = []
        self.app = web.Application()
        self.app.router.add_post("/webhooks/whatsapp", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        header = request.headers.get("X-Hub-Signature-256")
        if header is None:
            return web.Response(status=401)
        doc = json.loads(raw)
        pnid = doc["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"]
        mac = hmac.new(self.secrets[pnid].encode(), raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(header, "sha256=" + mac):
            return web.Response(status=403)
        self.bodies.append(raw)
        return web.Response(status=self.answer)

    def values(self) -> list[dict[str, Any]]:
        return [
            change["value"]
            for body in self.bodies
            for entry in json.loads(body)["entry"]
            for change in entry["changes"]
        ]


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/webhooks/whatsapp"
    finally:
        await runner.cleanup()


@pytest.fixture
async def setup() -> AsyncIterator[tuple[meta.MetaWebhookSender, Ingress, str]]:
    pnid = str(uuid.uuid4().int % 10**15)
    ingress = Ingress({pnid: "secret-" + uuid.uuid4().hex})
    async with serve(ingress.app) as url, aiohttp.ClientSession() as http:
        yield meta.MetaWebhookSender(url, ingress.secrets, http), ingress, pnid


def test_signature_is_hmac_of_the_exact_bytes_and_non_ascii_is_escaped() -> None:
    doc = meta.notification("1", messages=[meta.text_message("1555", "café 👍 ✓")])
    body = meta.serialise(doc)
    assert body.isascii()
    assert b"caf\\u00e9 \\ud83d\\udc4d \\u2713" in body
    assert b", " not in body and b": " not in body  # compact, like Meta
    assert json.loads(body) == doc
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert meta.sign("s3cret", body) == expected
    raw_utf8 = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    assert meta.sign("s3cret", raw_utf8) != expected  # re-serialising breaks the signature


async def test_text_button_reaction_and_image_bodies(
    setup: tuple[meta.MetaWebhookSender, Ingress, str],
) -> None:
    sender, ingress, pnid = setup
    question = await sender.send_text(pnid, "15551230001", "¿Cómo conecto la VPN?")
    await sender.send_button_reply(pnid, "15551230001", "fb:up", "👍", context_id="wamid.OUT")
    await sender.send_reaction(pnid, "15551230001", question, "")
    await sender.send_image(pnid, "15551230001", "MEDIA1", caption="the error", sha256="ab")
    text, tap, react, image = (v["messages"][0] for v in ingress.values())
    value = ingress.values()[0]
    assert value["messaging_product"] == "whatsapp"
    assert value["metadata"]["phone_number_id"] == pnid
    assert value["contacts"] == [{"profile": {"name": "Test User"}, "wa_id": "15551230001"}]
    assert text["id"] == question and text["type"] == "text"
    assert text["text"]["body"] == "¿Cómo conecto la VPN?" and text["timestamp"].isdigit()
    assert tap["interactive"] == {
        "type": "button_reply",
        "button_reply": {"id": "fb:up", "title": "👍"},
    }
    assert tap["context"]["id"] == "wamid.OUT"
    assert react["reaction"] == {"message_id": question, "emoji": ""}
    assert image["image"]["id"] == "MEDIA1" and image["image"]["caption"] == "the error"
    assert json.loads(ingress.bodies[0])["object"] == "whatsapp_business_account"


async def test_group_and_bsuid_users(setup: tuple[meta.MetaWebhookSender, Ingress, str]) -> None:
    sender, ingress, pnid = setup
    await sender.send_text(pnid, "15551230002", "@bot hi", group_id="120363@g.us")
    await sender.send_text(pnid, "", "hello", bsuid="US.1349120865530274")
    group, bsuid_value = ingress.values()
    assert group["messages"][0]["group_id"] == "120363@g.us"
    msg = bsuid_value["messages"][0]
    assert msg["from_user_id"] == "US.1349120865530274" and "from" not in msg
    assert bsuid_value["contacts"] == [
        {"profile": {"name": "Test User"}, "user_id": "US.1349120865530274"}
    ]


async def test_statuses_with_errors_and_for_accepted_messages(
    setup: tuple[meta.MetaWebhookSender, Ingress, str],
) -> None:
    sender, ingress, pnid = setup
    failed = meta.status("wamid.F", "failed", "1555", errors=[meta.window_closed_error()])
    assert await sender.send_statuses(pnid, [failed]) == 200
    accepted = [
        {"id": "wamid.A", "phone_number_id": pnid, "to": "1555", "recipient": None},
        {"id": "wamid.B", "phone_number_id": pnid, "to": None, "recipient": "US.77"},
    ]
    assert await sender.send_statuses_for(accepted) == [200, 200, 200]
    first, *steps = ingress.values()
    assert first["statuses"][0]["errors"][0]["code"] == 131047
    seen = [(s["id"], s["status"]) for v in steps for s in v["statuses"]]
    assert seen == [
        ("wamid.A", "sent"),
        ("wamid.B", "sent"),
        ("wamid.A", "delivered"),
        ("wamid.B", "delivered"),
        ("wamid.A", "read"),
        ("wamid.B", "read"),
    ]
    sent_b = steps[0]["statuses"][1]
    assert sent_b["recipient_user_id"] == "US.77" and "recipient_id" not in sent_b
    assert steps[0]["statuses"][0]["pricing"]["category"] == "service"


async def test_batch_with_entries_for_several_numbers_and_callable_secret() -> None:
    a, b = str(uuid.uuid4().int % 10**15), str(uuid.uuid4().int % 10**15)
    secret = "shared-app-secret"
    ingress = Ingress({a: secret, b: secret})
    async with serve(ingress.app) as url, aiohttp.ClientSession() as http:
        sender = meta.MetaWebhookSender(url, lambda _pnid: secret, http)
        doc = meta.batch(
            meta.notification(a, messages=[meta.text_message("1555", "one")]),
            meta.notification(b, statuses=[meta.status("wamid.X", "delivered", "1666")]),
        )
        assert await sender.post(meta.serialise(doc)) == 200
    numbers = [v["metadata"]["phone_number_id"] for v in ingress.values()]
    assert numbers == [a, b]


async def test_post_reports_rejections_and_deliver_raises(
    setup: tuple[meta.MetaWebhookSender, Ingress, str],
) -> None:
    sender, ingress, pnid = setup
    body, wamid = sender.build_text_body(pnid, "1555", "hi")
    assert wamid.startswith("wamid.")
    assert await sender.post(body, signature="sha256=" + "0" * 64) == 403
    assert await sender.post(body) == 200
    ingress.answer = 500
    with pytest.raises(RuntimeError, match="500"):
        await sender.send_text(pnid, "1555", "hi")
    with pytest.raises(KeyError):
        await sender.send_text("no-such-number", "1555", "hi")
