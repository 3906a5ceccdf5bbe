"""Turning texts and answer results into OutboundMessage records with deterministic ids.

Why ids matter here: ``outbound_id = request_id:part`` is the sender's idempotency key. The same
answer result formatted twice (a redelivery, a replay) yields the same parts with the same ids,
so the sent-ids table drops the second copy.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from egress.compose import feedback_buttons, render_answer, sources_list, text_message
from streams.addressing import outbound_id_for
from streams.replies import reply_text


def _addressing(recipient: str, recipient_kind: str) -> dict[str, Any]:
    if recipient_kind == "group":
        return {"to": recipient, "group": True}
    if recipient_kind == "bsuid":
        return {"to": None, "recipient": recipient}
    return {"to": recipient}


def text_outbound(
    *,
    request_id: str,
    tenant_id: str,
    phone_number_id: str,
    chat_id: str,
    recipient: str,
    recipient_kind: str,
    text: str | Sequence[str],
    reply_to: str | None,
) -> list[dict[str, Any]]:
    """One OutboundMessage per part (``text`` already split, or one short text)."""
    parts = [text] if isinstance(text, str) else list(text)
    now = int(time.time() * 1000)
    records = []
    for index, body in enumerate(parts):
        payload = text_message(
            body=body,
            reply_to=reply_to if index == 0 else None,
            preview_url=False,
            **_addressing(recipient, recipient_kind),
        )
        records.append(
            {
                "outbound_id": outbound_id_for(request_id, index),
                "request_id": request_id,
                "part_index": index,
                "part_count": len(parts),
                "tenant_id": tenant_id,
                "phone_number_id": phone_number_id,
                "chat_id": chat_id,
                "kind": "text",
                "payload_json": json.dumps(payload, ensure_ascii=False, separators=(",", ":")),
                "created_at": now,
            }
        )
    return records


def answer_outbound(result: dict[str, Any], *, top_n: int) -> list[dict[str, Any]]:
    """Format an AnswerResult for WhatsApp: cited text split into parts, or a polite failure."""
    lang = result.get("language")
    if result["status"] != "ok":
        key = "answer_failed"
        parts: list[str] = [reply_text(key, lang)]
    elif not (result.get("answer") or "").strip():
        parts = [reply_text("no_answer", lang)]
    else:
        sources = [SimpleNamespace(**s) for s in result.get("citations") or []]
        parts = render_answer(
            result["answer"],
            sources,
            show_sources=bool(result.get("show_sources", True)),
            top_n=top_n,
        )
    records = text_outbound(
        request_id=result["request_id"],
        tenant_id=result["tenant_id"],
        phone_number_id=result["phone_number_id"],
        chat_id=result["chat_id"],
        recipient=result["recipient"],
        recipient_kind=result["recipient_kind"],
        text=parts,
        reply_to=result["question_message_id"],
    )
    if result["status"] == "ok" and result["recipient_kind"] != "group":
        records += interactive_extras(result, top_n=top_n)
    return records


def interactive_extras(result: dict[str, Any], *, top_n: int) -> list[dict[str, Any]]:
    """After an answer in a 1:1 chat: a list of all sources when there are more than the footer
    shows, then 👍/👎 buttons (ids carry tenant and request). Groups get neither: WhatsApp does
    not allow interactive messages there (users react with 👍/👎 instead)."""
    to = None if result["recipient_kind"] == "bsuid" else result["recipient"]
    recipient = result["recipient"] if result["recipient_kind"] == "bsuid" else None
    payloads: list[tuple[str, dict[str, Any]]] = []
    sources = [SimpleNamespace(**s) for s in result.get("citations") or []]
    if result.get("show_sources", True) and len(sources) > top_n:
        payloads.append(
            (
                "sources",
                sources_list(
                    to, body="All sources of this answer", sources=sources, recipient=recipient
                ),
            )
        )
    payloads.append(
        (
            "feedback",
            feedback_buttons(
                to,
                body=reply_text("feedback_prompt", result.get("language")),
                answer_ref=result["request_id"],
                tenant_id=result["tenant_id"],
                recipient=recipient,
            ),
        )
    )
    now = int(time.time() * 1000)
    return [
        {
            "outbound_id": outbound_id_for(result["request_id"], name),
            "request_id": result["request_id"],
            "part_index": 0,
            "part_count": 1,
            "tenant_id": result["tenant_id"],
            "phone_number_id": result["phone_number_id"],
            "chat_id": result["chat_id"],
            "kind": "interactive",
            "payload_json": json.dumps(payload, ensure_ascii=False, separators=(",", ":")),
            "created_at": now,
        }
        for name, payload in payloads
    ]
