"""Who a reply goes to, and the deterministic ids that make every stage idempotent.

Why deterministic ids: a duplicate webhook, a redelivered Kafka record or a replay must produce
the *same* request id and outbound ids, so that the sender's sent-ids table recognises them and a
user never receives a reply twice.
"""

from __future__ import annotations

import hashlib
from typing import Any


def request_id_for(tenant_id: str, message_id: str, purpose: str = "answer") -> str:
    """Stable id of the work triggered by one inbound message."""
    digest = hashlib.sha256(f"{tenant_id}\x00{message_id}\x00{purpose}".encode()).hexdigest()
    return f"{purpose[:3]}-{digest[:32]}"


def outbound_id_for(request_id: str, part: int | str) -> str:
    return f"{request_id}:{part}"


def reply_target(message: dict[str, Any]) -> tuple[str, str]:
    """(recipient, kind) for answering an inbound message: group, BSUID or phone."""
    if message.get("chat_type") == "group" and message.get("group_id"):
        return message["group_id"], "group"
    if message.get("sender_phone"):
        return message["sender_phone"], "phone"
    if message.get("sender_bsuid"):
        return message["sender_bsuid"], "bsuid"
    return message["sender_id"], "phone"


def address_fields(recipient: str, kind: str) -> dict[str, Any]:
    """The addressing part of a Graph API send body (``to``/``recipient``/group)."""
    if kind == "group":
        return {"recipient_type": "group", "to": recipient}
    if kind == "bsuid":
        return {"recipient_type": "individual", "recipient": recipient}
    return {"recipient_type": "individual", "to": recipient}
