"""Normalize one webhook body into InboundMessage / StatusUpdate / InvalidEvent records.

Pure and total: no I/O, never raises. One malformed message becomes an InvalidEvent with the
reason and its JSON fragment, and the other messages of the same delivery still go through.
Identity follows Meta's BSUID rollout: the sender is keyed on the business-scoped user id when
present, else on the phone number (``from`` / ``wa_id``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MEDIA_TYPES = ("image", "audio", "video", "document", "sticker")


@dataclass
class Normalized:
    messages: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    invalid: list[dict[str, Any]] = field(default_factory=list)
    unrouted_numbers: list[str] = field(default_factory=list)


def chat_key(tenant_id: str, chat_id: str) -> str:
    """Kafka key of conversation events: every event of one chat lands in one partition."""
    return f"{tenant_id}:{chat_id}"


def number_key(tenant_id: str, phone_number_id: str) -> str:
    """Kafka key of send-side events: one owner per business number (exact throttling)."""
    return f"{tenant_id}:{phone_number_id}"


class _Bad(ValueError):
    """A message or status that cannot be normalized (the reason is the message)."""


def _ms_from_unix(value: Any, what: str) -> int:
    try:
        seconds = int(str(value))
    except (TypeError, ValueError):
        raise _Bad(f"{what}: timestamp {value!r} is not unix seconds") from None
    if not 0 <= seconds < 2**33:
        raise _Bad(f"{what}: timestamp {seconds} out of range")
    return seconds * 1000


def _str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    raise _Bad(f"{key} must be a string, got {type(value).__name__}")


def _errors(items: Any) -> list[dict[str, Any]]:
    out = []
    for err in items if isinstance(items, list) else []:
        if not isinstance(err, dict):
            continue
        try:
            code = int(err.get("code"))
        except (TypeError, ValueError):
            continue
        if not -(2**31) <= code < 2**31:
            continue
        data = err.get("error_data") if isinstance(err.get("error_data"), dict) else {}
        out.append(
            {
                "code": code,
                "title": str(err["title"]) if err.get("title") is not None else None,
                "message": str(err["message"]) if err.get("message") is not None else None,
                "details": str(data["details"]) if data.get("details") is not None else None,
            }
        )
    return out


def _invalid(reason: str, fragment: Any, delivery_id: str, tenant_id: str | None) -> dict[str, Any]:
    try:
        raw = json.dumps(fragment, ensure_ascii=False, default=str).encode()
    except (TypeError, ValueError):  # pragma: no cover - default=str handles everything
        raw = repr(fragment).encode()
    return {
        "delivery_id": delivery_id,
        "stage": "preprocess",
        "reason": reason[:500],
        "tenant_id": tenant_id,
        "source_topic": None,
        "raw": raw,
        "at": int(time.time() * 1000),
    }


def _contacts(value: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """contacts[] by every id they can be matched on (wa_id and user_id)."""
    found: dict[str, dict[str, Any]] = {}
    for contact in value.get("contacts") or []:
        if not isinstance(contact, dict):
            continue
        for key in ("wa_id", "user_id"):
            if isinstance(contact.get(key), str):
                found[contact[key]] = contact
    return found


def _message(
    msg: Any,
    *,
    value: Mapping[str, Any],
    contacts: Mapping[str, dict[str, Any]],
    tenant_id: str,
    phone_number_id: str,
    waba_id: str | None,
    delivery_id: str,
    received_at_ms: int,
) -> dict[str, Any]:
    if not isinstance(msg, dict):
        raise _Bad("message is not an object")
    message_id = _str(msg, "id")
    if not message_id:
        raise _Bad("message without id")
    mtype = _str(msg, "type")
    if not mtype:
        raise _Bad(f"message {message_id} without type")
    sent_at = _ms_from_unix(msg.get("timestamp"), f"message {message_id}")
    phone = _str(msg, "from")
    bsuid = _str(msg, "from_user_id")
    contact = contacts.get(bsuid or "") or contacts.get(phone or "") or {}
    bsuid = bsuid or (contact.get("user_id") if isinstance(contact.get("user_id"), str) else None)
    phone = phone or (contact.get("wa_id") if isinstance(contact.get("wa_id"), str) else None)
    sender_id = bsuid or phone
    if not sender_id:
        raise _Bad(f"message {message_id} has no sender (from / from_user_id)")
    profile = contact.get("profile") if isinstance(contact.get("profile"), dict) else {}
    group_id = _str(msg, "group_id")
    context = msg.get("context") if isinstance(msg.get("context"), dict) else {}
    body = msg.get(mtype) if isinstance(msg.get(mtype), dict) else {}
    record: dict[str, Any] = {
        "message_id": message_id,
        "delivery_id": delivery_id,
        "tenant_id": tenant_id,
        "phone_number_id": phone_number_id,
        "waba_id": waba_id,
        "chat_id": group_id or sender_id,
        "chat_type": "group" if group_id else "direct",
        "group_id": group_id,
        "sender_id": sender_id,
        "sender_phone": phone,
        "sender_bsuid": bsuid,
        "sender_name": str(profile["name"]) if profile.get("name") is not None else None,
        "sender_username": str(profile["username"]) if profile.get("username") else None,
        "message_type": mtype,
        "text": None,
        "interactive_id": None,
        "reaction_emoji": None,
        "target_message_id": None,
        "context_message_id": _str(context, "id") if context else None,
        "forwarded": bool(context.get("forwarded") or context.get("frequently_forwarded")),
        "mentions": [],
        "media": None,
        "errors": _errors(msg.get("errors")),
        "payload_json": json.dumps(msg, ensure_ascii=False, separators=(",", ":")),
        "sent_at": sent_at,
        "received_at": received_at_ms,
    }
    mentions = msg.get("mentions")
    if mentions is None and isinstance(msg.get("text"), dict):
        mentions = msg["text"].get("mentions")
    if isinstance(mentions, list):
        record["mentions"] = [
            str(m.get("wa_id") or m.get("user_id") or m.get("phone") or "")
            if isinstance(m, dict)
            else str(m)
            for m in mentions
        ]
    if mtype == "text":
        record["text"] = _str(body, "body")
    elif mtype in MEDIA_TYPES:
        media_id = _str(body, "id")
        if media_id:
            record["media"] = {
                "media_id": media_id,
                "kind": mtype,
                "mime_type": _str(body, "mime_type"),
                "sha256": _str(body, "sha256"),
                "filename": _str(body, "filename"),
                "voice": bool(body.get("voice")),
            }
        record["text"] = _str(body, "caption")
    elif mtype == "interactive":
        kind = _str(body, "type") or ""
        reply = body.get(kind) if isinstance(body.get(kind), dict) else {}
        record["interactive_id"] = _str(reply, "id")
        record["text"] = _str(reply, "title") or _str(reply, "body")
        if kind == "nfm_reply":
            record["text"] = _str(reply, "response_json") or _str(reply, "body")
    elif mtype == "button":
        record["text"] = _str(body, "text")
        record["interactive_id"] = _str(body, "payload")
    elif mtype == "reaction":
        record["target_message_id"] = _str(body, "message_id")
        record["reaction_emoji"] = _str(body, "emoji") or ""
    elif mtype == "edit":
        record["target_message_id"] = _str(body, "original_message_id") or _str(body, "id")
        inner = body.get("message") if isinstance(body.get("message"), dict) else body
        text = inner.get("text") if isinstance(inner.get("text"), dict) else {}
        record["text"] = _str(text, "body") or _str(inner, "body")
    elif mtype == "revoke":
        record["target_message_id"] = _str(body, "original_message_id") or _str(body, "id")
    elif mtype == "location":
        parts = [_str(body, "name"), _str(body, "address")]
        record["text"] = ", ".join(p for p in parts if p) or None
    elif mtype == "system":
        record["text"] = _str(body, "body")
    return record


def _status(
    st: Any, *, tenant_id: str, phone_number_id: str, delivery_id: str, received_at_ms: int
) -> dict[str, Any]:
    if not isinstance(st, dict):
        raise _Bad("status is not an object")
    message_id = _str(st, "id")
    status = _str(st, "status")
    if not message_id or not status:
        raise _Bad("status without id or status")
    return {
        "message_id": message_id,
        "status": status,
        "delivery_id": delivery_id,
        "tenant_id": tenant_id,
        "phone_number_id": phone_number_id,
        # for a group send the recipient is the group: statuses key on what was addressed
        "recipient_id": _str(st, "recipient_id") or _str(st, "recipient_user_id"),
        "errors": _errors(st.get("errors")),
        # what the egress put in the send (its outbound id): ties a status to a send whose
        # response a crash lost (docs/egress.md, "Uncertain sends")
        "callback_data": _str(st, "biz_opaque_callback_data"),
        "payload_json": json.dumps(st, ensure_ascii=False, separators=(",", ":")),
        "status_at": _ms_from_unix(st.get("timestamp"), f"status {message_id}"),
        "received_at": received_at_ms,
    }


def _without_lone_surrogates(doc: Any) -> Any:
    """``doc`` with every lone surrogate (a ``\\udXXX`` escape with no pair) replaced by ``?``.

    Why: such strings cannot be encoded as UTF-8, so one of them in a signed body would fail the
    Avro encoding of every event cut from it. Valid pairs (emoji) are already joined by the JSON
    parser and pass through unchanged."""
    text = json.dumps(doc, ensure_ascii=False)
    try:
        text.encode("utf-8")
        return doc
    except UnicodeEncodeError:
        return json.loads(text.encode("utf-8", "replace"))


def normalize_delivery(
    body: bytes,
    *,
    delivery_id: str,
    received_at_ms: int,
    tenant_for: Mapping[str, str],
) -> Normalized:
    """Every message and status of one webhook POST, plus what could not be understood."""
    out = Normalized()
    try:
        doc = json.loads(body)
        if b"\\u" in body:
            doc = _without_lone_surrogates(doc)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        out.invalid.append(
            _invalid(
                f"body is not JSON: {exc}",
                body.decode("utf-8", "replace")[:2000],
                delivery_id,
                None,
            )
        )
        return out
    if not isinstance(doc, dict) or not isinstance(doc.get("entry"), list):
        out.invalid.append(
            _invalid("not a WhatsApp notification (no entry[])", doc, delivery_id, None)
        )
        return out
    for entry in doc["entry"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("changes"), list):
            out.invalid.append(_invalid("entry without changes[]", entry, delivery_id, None))
            continue
        waba_id = str(entry["id"]) if isinstance(entry.get("id"), (str, int)) else None
        for change in entry["changes"]:
            value = change.get("value") if isinstance(change, dict) else None
            if not isinstance(value, dict):
                out.invalid.append(_invalid("change without value", change, delivery_id, None))
                continue
            metadata = value.get("metadata") if isinstance(value.get("metadata"), dict) else {}
            pnid = metadata.get("phone_number_id")
            pnid = str(pnid) if isinstance(pnid, (str, int)) else None
            tenant = tenant_for.get(pnid or "")
            if not pnid or not tenant:
                if pnid:
                    out.unrouted_numbers.append(pnid)
                continue
            for err in _errors(value.get("errors")):
                out.invalid.append(
                    _invalid(
                        f"webhook error {err['code']}: {err['title'] or ''}",
                        err,
                        delivery_id,
                        tenant,
                    )
                )
            contacts = _contacts(value)
            messages, statuses = value.get("messages") or [], value.get("statuses") or []
            if not isinstance(messages, list) or not isinstance(statuses, list):
                out.invalid.append(
                    _invalid("messages/statuses not arrays", value, delivery_id, tenant)
                )
                continue
            for msg in messages:
                try:
                    out.messages.append(
                        _message(
                            msg,
                            value=value,
                            contacts=contacts,
                            tenant_id=tenant,
                            phone_number_id=pnid,
                            waba_id=waba_id,
                            delivery_id=delivery_id,
                            received_at_ms=received_at_ms,
                        )
                    )
                except _Bad as exc:
                    out.invalid.append(_invalid(str(exc), msg, delivery_id, tenant))
            for st in statuses:
                try:
                    out.statuses.append(
                        _status(
                            st,
                            tenant_id=tenant,
                            phone_number_id=pnid,
                            delivery_id=delivery_id,
                            received_at_ms=received_at_ms,
                        )
                    )
                except _Bad as exc:
                    out.invalid.append(_invalid(str(exc), st, delivery_id, tenant))
    return out
