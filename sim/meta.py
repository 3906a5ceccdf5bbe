"""Meta's side of the webhook: realistic notification bodies, signed like Meta signs them.

Bodies follow the documented shape (object / entry / changes / value / metadata / contacts /
messages / statuses). They are serialised the way Meta sends them — compact JSON with every
non-ASCII character escaped as ``\\uXXXX`` (``ensure_ascii=True``; emoji become surrogate
pairs) — and ``X-Hub-Signature-256`` is the HMAC-SHA256 of exactly those bytes with the app
secret, so an ingress that re-serialises the JSON before verifying fails, as it would with Meta.

The builders are plain functions (tests compose odd bodies from them); :class:`MetaWebhookSender`
posts them to an ingress. The simulator uses the same sender for its own webhooks, so there is
one signing path.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import aiohttp

DEFAULT_DISPLAY_NUMBER = "15550001111"
DEFAULT_WABA_ID = "102290129340398"
SecretSource = Mapping[str, str] | Callable[[str], str]


def sign(app_secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` header value for ``body``."""
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
    errors: Sequence[dict[str, Any]] = (),
    display_phone_number: str = DEFAULT_DISPLAY_NUMBER,
    waba_id: str = DEFAULT_WABA_ID,
) -> dict[str, Any]:
    """One ``whatsapp_business_account`` notification for one business number."""
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
    if errors:
        value["errors"] = list(errors)
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": waba_id, "changes": [{"field": "messages", "value": value}]}],
    }


def batch(*docs: Mapping[str, Any]) -> dict[str, Any]:
    """Several notifications (possibly for several numbers) as one POST, as Meta batches them."""
    return {
        "object": "whatsapp_business_account",
        "entry": [entry for doc in docs for entry in doc["entry"]],
    }


def contact(
    user: str,
    name: str = "Test User",
    *,
    bsuid: str | None = None,
    username: str | None = None,
) -> dict[str, Any]:
    """A ``contacts[]`` entry; BSUID-only users (``user`` empty) carry no ``wa_id``."""
    profile: dict[str, Any] = {"name": name}
    if username:
        profile["username"] = username
    entry: dict[str, Any] = {"profile": profile}
    if user:
        entry["wa_id"] = user
    if bsuid:
        entry["user_id"] = bsuid
    return entry


def _message(
    user: str,
    kind: str,
    *,
    wamid: str | None = None,
    bsuid: str | None = None,
    group_id: str | None = None,
    context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    msg: dict[str, Any] = {}
    if user:
        msg["from"] = user
    if bsuid:
        msg["from_user_id"] = bsuid
    msg.update({"id": wamid or new_wamid(), "timestamp": str(int(time.time())), "type": kind})
    if group_id:
        msg["group_id"] = group_id
    if context:
        msg["context"] = context
    return msg


def text_message(
    user: str,
    text: str,
    *,
    wamid: str | None = None,
    group_id: str | None = None,
    mentions: Sequence[str] = (),
    reply_to: str | None = None,
    bsuid: str | None = None,
    forwarded: bool = False,
) -> dict[str, Any]:
    context: dict[str, Any] | None = None
    if reply_to:
        context = {"from": DEFAULT_DISPLAY_NUMBER, "id": reply_to}
    elif forwarded:
        context = {"forwarded": True}
    msg = _message(user, "text", wamid=wamid, bsuid=bsuid, group_id=group_id, context=context)
    msg["text"] = {"body": text}
    if mentions:
        msg["mentions"] = [{"wa_id": m} for m in mentions]
    return msg


def button_reply(
    user: str,
    button_id: str,
    title: str,
    *,
    context_id: str | None = None,
    bsuid: str | None = None,
    wamid: str | None = None,
) -> dict[str, Any]:
    """A tap on a reply button; ``context_id`` is the interactive message that carried it."""
    context = {"from": DEFAULT_DISPLAY_NUMBER, "id": context_id} if context_id else None
    msg = _message(user, "interactive", wamid=wamid, bsuid=bsuid, context=context)
    msg["interactive"] = {"type": "button_reply", "button_reply": {"id": button_id, "title": title}}
    return msg


def reaction(
    user: str, target: str, emoji: str, *, bsuid: str | None = None, group_id: str | None = None
) -> dict[str, Any]:
    """A reaction to ``target``; an empty ``emoji`` means the reaction was removed."""
    msg = _message(user, "reaction", bsuid=bsuid, group_id=group_id)
    msg["reaction"] = {"message_id": target, "emoji": emoji}
    return msg


def image_message(
    user: str,
    media_id: str,
    *,
    caption: str | None = None,
    mime_type: str = "image/jpeg",
    sha256: str = "",
    bsuid: str | None = None,
    group_id: str | None = None,
) -> dict[str, Any]:
    msg = _message(user, "image", bsuid=bsuid, group_id=group_id)
    image: dict[str, Any] = {"id": media_id, "mime_type": mime_type, "sha256": sha256}
    if caption is not None:
        image["caption"] = caption
    msg["image"] = image
    return msg


def status(
    wamid: str,
    status_: str,
    recipient: str,
    *,
    errors: Sequence[dict[str, Any]] = (),
    bsuid: bool = False,
    timestamp: int | None = None,
    callback_data: str | None = None,
) -> dict[str, Any]:
    """A delivery status; ``sent``/``delivered`` carry conversation and pricing like Meta's,
    and every status echoes the send's ``biz_opaque_callback_data`` when it had one."""
    entry: dict[str, Any] = {
        "id": wamid,
        "status": status_,
        "timestamp": str(timestamp if timestamp is not None else int(time.time())),
        ("recipient_user_id" if bsuid else "recipient_id"): recipient,
    }
    if status_ in ("sent", "delivered"):
        entry["conversation"] = {
            "id": hashlib.sha1(recipient.encode()).hexdigest()[:32],  # noqa: S324 - an id
            "origin": {"type": "service"},
        }
        entry["pricing"] = {"billable": False, "pricing_model": "PMP", "category": "service"}
    if errors:
        entry["errors"] = list(errors)
    if callback_data is not None:
        entry["biz_opaque_callback_data"] = callback_data
    return entry


def window_closed_error() -> dict[str, Any]:
    """The error a ``failed`` status carries when a free-form reply is outside the 24 h window."""
    return {
        "code": 131047,
        "title": "Re-engagement message",
        "message": "Re-engagement message",
        "error_data": {
            "details": "Message failed to send because more than 24 hours have passed since "
            "the customer last replied to this number."
        },
        "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
    }


class MetaWebhookSender:
    """Posts signed notifications to an ingress, like Meta's webhook delivery does."""

    def __init__(
        self, ingress_url: str, app_secret_for: SecretSource, session: aiohttp.ClientSession
    ) -> None:
        self.ingress_url = ingress_url
        self._secrets = app_secret_for
        self.session = session

    def secret(self, phone_number_id: str) -> str:
        """The app secret that signs notifications of ``phone_number_id`` (KeyError if none)."""
        if callable(self._secrets):
            return self._secrets(phone_number_id)
        return self._secrets[phone_number_id]

    def signed(self, phone_number_id: str, doc: Mapping[str, Any]) -> tuple[bytes, str]:
        body = serialise(doc)
        return body, sign(self.secret(phone_number_id), body)

    async def post(
        self, body: bytes, *, signature: str | None = None, phone_number_id: str | None = None
    ) -> int:
        """POST exactly ``body``; signed with the first entry's number unless given."""
        if signature is None:
            pnid = phone_number_id or _first_number(body)
            signature = sign(self.secret(pnid), body)
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature}
        async with self.session.post(self.ingress_url, data=body, headers=headers) as resp:
            await resp.read()
            return resp.status

    def build_text_body(
        self, phone_number_id: str, user: str, text: str, **kwargs: Any
    ) -> tuple[bytes, str]:
        """A signed-ready body for one text message, and its wamid (for duplicate tests)."""
        msg = text_message(user, text, **kwargs)
        doc = notification(
            phone_number_id, messages=[msg], contacts=[contact(user, bsuid=kwargs.get("bsuid"))]
        )
        return serialise(doc), msg["id"]

    async def deliver(
        self, phone_number_id: str, msg: dict[str, Any], *, name: str = "Test User"
    ) -> str:
        """Deliver one user message; returns its wamid (raises unless the ingress answered 200)."""
        user = str(msg.get("from") or "")
        contacts = [contact(user, name, bsuid=msg.get("from_user_id"))]
        doc = notification(phone_number_id, messages=[msg], contacts=contacts)
        status_code = await self.post(serialise(doc), phone_number_id=phone_number_id)
        if status_code != 200:
            raise RuntimeError(f"ingress answered {status_code}")
        return str(msg["id"])

    async def send_text(self, phone_number_id: str, user: str, text: str, **kwargs: Any) -> str:
        return await self.deliver(phone_number_id, text_message(user, text, **kwargs))

    async def send_button_reply(
        self, phone_number_id: str, user: str, button_id: str, title: str, **kwargs: Any
    ) -> str:
        return await self.deliver(phone_number_id, button_reply(user, button_id, title, **kwargs))

    async def send_reaction(
        self, phone_number_id: str, user: str, target: str, emoji: str, **kwargs: Any
    ) -> str:
        return await self.deliver(phone_number_id, reaction(user, target, emoji, **kwargs))

    async def send_image(
        self, phone_number_id: str, user: str, media_id: str, **kwargs: Any
    ) -> str:
        return await self.deliver(phone_number_id, image_message(user, media_id, **kwargs))

    async def send_statuses(self, phone_number_id: str, statuses: Sequence[dict[str, Any]]) -> int:
        doc = notification(phone_number_id, statuses=statuses)
        return await self.post(serialise(doc), phone_number_id=phone_number_id)

    async def send_statuses_for(
        self,
        accepted: Iterable[Mapping[str, Any]],
        sequence: Sequence[str] = ("sent", "delivered", "read"),
    ) -> list[int]:
        """Statuses for messages the simulator accepted (``GET /_sim/messages`` records).

        One POST per status step and number, in order, like a phone that receives and opens
        everything; returns the ingress's HTTP statuses.
        """
        by_number: dict[str, list[Mapping[str, Any]]] = {}
        for record in accepted:
            by_number.setdefault(str(record["phone_number_id"]), []).append(record)
        codes = []
        for step in sequence:
            for pnid, records in by_number.items():
                statuses = [
                    status(
                        str(r["id"]),
                        step,
                        str(r.get("to") or r.get("recipient") or ""),
                        bsuid=not r.get("to") and bool(r.get("recipient")),
                    )
                    for r in records
                ]
                codes.append(await self.send_statuses(pnid, statuses))
        return codes


def _first_number(body: bytes) -> str:
    doc = json.loads(body)
    return str(doc["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"])
