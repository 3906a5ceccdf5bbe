"""Meta's side of the webhook: realistic notification bodies, signed like Meta signs them.

Bodies follow the documented shape (object / entry / changes / value / metadata / contacts /
messages / statuses). They are serialised the way Meta sends them — non-ASCII escaped as
``\\uXXXX`` — and ``X-Hub-Signature-256`` is the HMAC-SHA256 of exactly those bytes with the
app secret, so the ingress's verification is exercised for real.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp


def sign(app_secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def new_wamid() -> str:
    return "wamid.HBgL" + uuid.uuid4().hex.upper()


def serialise(doc: Mapping[str, Any]) -> bytes:
    """Meta's wire style: compact JSON with non-ASCII escaped."""
    return json.dumps(doc, ensure_ascii=True, separators=(",", ":")).encode()


def notification(
    phone_number_id: str,
    *,
    messages: Sequence[dict[str, Any]] = (),
    statuses: Sequence[dict[str, Any]] = (),
    contacts: Sequence[dict[str, Any]] = (),
    display_phone_number: str = "15550001111",
    waba_id: str = "102290129340398",
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {
            "display_phone_number": display_phone_number,
            "phone_number_id": phone_number_id,
        },
    }
    if contacts:
        value["contacts"] = list(contacts)
    if messages:
        value["messages"] = list(messages)
    if statuses:
        value["statuses"] = list(statuses)
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": waba_id, "changes": [{"field": "messages", "value": value}]}],
    }


def contact(user: str, name: str = "Test User", *, bsuid: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"profile": {"name": name}}
    if bsuid:
        entry["user_id"] = bsuid
    if user:
        entry["wa_id"] = user
    return entry


def text_message(
    user: str,
    text: str,
    *,
    wamid: str | None = None,
    group_id: str | None = None,
    mentions: Sequence[str] = (),
    reply_to: str | None = None,
    bsuid: str | None = None,
) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "from": user,
        "id": wamid or new_wamid(),
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": text},
    }
    if bsuid:
        msg["from_user_id"] = bsuid
        if not user:
            del msg["from"]
    if group_id:
        msg["group_id"] = group_id
    if mentions:
        msg["mentions"] = [{"wa_id": m} for m in mentions]
    if reply_to:
        msg["context"] = {"from": "", "id": reply_to}
    return msg


def button_reply(user: str, button_id: str, title: str) -> dict[str, Any]:
    return {
        "from": user,
        "id": new_wamid(),
        "timestamp": str(int(time.time())),
        "type": "interactive",
        "interactive": {"type": "button_reply", "button_reply": {"id": button_id, "title": title}},
    }


def reaction(user: str, target: str, emoji: str) -> dict[str, Any]:
    return {
        "from": user,
        "id": new_wamid(),
        "timestamp": str(int(time.time())),
        "type": "reaction",
        "reaction": {"message_id": target, "emoji": emoji},
    }


def status(wamid: str, status_: str, recipient: str, *, errors: Sequence[dict] = ()) -> dict:
    entry: dict[str, Any] = {
        "id": wamid,
        "status": status_,
        "timestamp": str(int(time.time())),
        "recipient_id": recipient,
    }
    if errors:
        entry["errors"] = list(errors)
    return entry


class MetaWebhookSender:
    """Posts signed notifications to an ingress, like Meta's webhook delivery does."""

    def __init__(
        self,
        ingress_url: str,
        app_secret_for: Mapping[str, str],
        session: aiohttp.ClientSession,
    ) -> None:
        self.ingress_url = ingress_url
        self.app_secret_for = dict(app_secret_for)
        self.session = session

    def signed(self, phone_number_id: str, doc: Mapping[str, Any]) -> tuple[bytes, str]:
        body = serialise(doc)
        return body, sign(self.app_secret_for[phone_number_id], body)

    async def post(
        self, body: bytes, *, signature: str | None = None, phone_number_id: str | None = None
    ) -> int:
        if signature is None:
            pnid = (
                phone_number_id
                or json.loads(body)["entry"][0]["changes"][0]["value"]["metadata"][
                    "phone_number_id"
                ]
            )
            signature = sign(self.app_secret_for[pnid], body)
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature}
        async with self.session.post(self.ingress_url, data=body, headers=headers) as resp:
            await resp.read()
            return resp.status

    def build_text_body(
        self, phone_number_id: str, user: str, text: str, **kwargs: Any
    ) -> tuple[bytes, str]:
        """A signed-ready body for one text message, and its wamid (for duplicate tests)."""
        msg = text_message(user, text, **kwargs)
        doc = notification(phone_number_id, messages=[msg], contacts=[contact(user)])
        return serialise(doc), msg["id"]

    async def _send(self, phone_number_id: str, user: str, msg: dict[str, Any], **kw: Any) -> str:
        """Deliver one message from ``user``; returns its wamid (raises unless answered 200)."""
        contacts = [contact(user, bsuid=kw.get("bsuid"))]
        doc = notification(phone_number_id, messages=[msg], contacts=contacts)
        status_code = await self.post(serialise(doc), phone_number_id=phone_number_id)
        if status_code != 200:
            raise RuntimeError(f"ingress answered {status_code}")
        return str(msg["id"])

    async def send_text(self, phone_number_id: str, user: str, text: str, **kwargs: Any) -> str:
        return await self._send(phone_number_id, user, text_message(user, text, **kwargs), **kwargs)

    async def send_button_reply(
        self, phone_number_id: str, user: str, button_id: str, title: str
    ) -> str:
        return await self._send(phone_number_id, user, button_reply(user, button_id, title))

    async def send_reaction(self, phone_number_id: str, user: str, target: str, emoji: str) -> str:
        return await self._send(phone_number_id, user, reaction(user, target, emoji))

    async def send_statuses(self, phone_number_id: str, statuses: Sequence[dict[str, Any]]) -> int:
        doc = notification(phone_number_id, statuses=statuses)
        return await self.post(serialise(doc), phone_number_id=phone_number_id)
