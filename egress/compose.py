"""Graph API message bodies, exactly as Meta expects them, and the answer renderer.

Every builder returns the JSON for ``POST /{phone_number_id}/messages`` and enforces WhatsApp's
limits (text 4096, interactive body 1024, footer 60, ≤3 buttons with id ≤256 / title ≤20, list
rows ≤10 with title ≤24 / description ≤72, button ≤20). Users are addressed by phone (``to``) or
by business-scoped user id (``recipient``); groups with ``recipient_type: "group"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from egress.markdown import extract_citations, to_whatsapp
from egress.split import split_message

TEXT_LIMIT = 4096
INTERACTIVE_BODY_LIMIT = 1024


def _fit(text: str, limit: int) -> str:
    text = " ".join(text.split()) if limit <= 72 else text
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _address(to: str | None, recipient: str | None, group: bool) -> dict[str, Any]:
    if group:
        if not to:
            raise ValueError("a group message needs the group id in `to`")
        return {"recipient_type": "group", "to": to}
    if recipient:
        return {"recipient_type": "individual", "recipient": recipient}
    if not to:
        raise ValueError("a message needs `to` (phone) or `recipient` (BSUID)")
    return {"recipient_type": "individual", "to": to}


def text_message(
    to: str | None = None,
    body: str = "",
    *,
    recipient: str | None = None,
    group: bool = False,
    reply_to: str | None = None,
    preview_url: bool = False,
) -> dict[str, Any]:
    if not body.strip():
        raise ValueError("empty text body")
    if len(body) > TEXT_LIMIT:
        raise ValueError(f"text body is {len(body)} characters; WhatsApp allows {TEXT_LIMIT}")
    payload: dict[str, Any] = {"messaging_product": "whatsapp", **_address(to, recipient, group)}
    payload["type"] = "text"
    payload["text"] = {"preview_url": preview_url, "body": body}
    if reply_to:
        payload["context"] = {"message_id": reply_to}
    return payload


def feedback_button_id(tenant_id: str, answer_ref: str, positive: bool) -> str:
    value = f"fb:{tenant_id}:{answer_ref}:{'up' if positive else 'down'}"
    if len(value) > 256:
        raise ValueError("feedback button id over 256 characters")
    return value


def parse_feedback_button_id(value: str) -> tuple[str, str, bool] | None:
    parts = value.split(":") if value else []
    if len(parts) != 4 or parts[0] != "fb" or parts[3] not in ("up", "down"):
        return None
    return parts[1], parts[2], parts[3] == "up"


def feedback_buttons(
    to: str | None,
    *,
    body: str,
    answer_ref: str,
    tenant_id: str,
    recipient: str | None = None,
    footer: str | None = None,
) -> dict[str, Any]:
    """👍 / 👎 reply buttons (not allowed in groups)."""
    payload: dict[str, Any] = {"messaging_product": "whatsapp", **_address(to, recipient, False)}
    interactive: dict[str, Any] = {
        "type": "button",
        "body": {"text": _fit(body, INTERACTIVE_BODY_LIMIT)},
        "action": {
            "buttons": [
                {
                    "type": "reply",
                    "reply": {
                        "id": feedback_button_id(tenant_id, answer_ref, True),
                        "title": "👍 Helpful",
                    },
                },
                {
                    "type": "reply",
                    "reply": {
                        "id": feedback_button_id(tenant_id, answer_ref, False),
                        "title": "👎 Not helpful",
                    },
                },
            ]
        },
    }
    if footer:
        interactive["footer"] = {"text": _fit(footer, 60)}
    payload["type"] = "interactive"
    payload["interactive"] = interactive
    return payload


def sources_list(
    to: str | None,
    *,
    body: str,
    sources: Sequence[Any],
    recipient: str | None = None,
) -> dict[str, Any]:
    """An interactive list of up to 10 sources (title ≤24, description ≤72, button ≤20)."""
    rows = [
        {
            "id": _fit(f"src:{_get(s, 'number')}", 200),
            "title": _fit(f"[{_get(s, 'number')}] {_get(s, 'title')}", 24),
            "description": _fit(_get(s, "link") or _get(s, "title") or "", 72),
        }
        for s in list(sources)[:10]
    ]
    if not rows:
        raise ValueError("a list needs at least one row")
    payload: dict[str, Any] = {"messaging_product": "whatsapp", **_address(to, recipient, False)}
    payload["type"] = "interactive"
    payload["interactive"] = {
        "type": "list",
        "body": {"text": _fit(body, INTERACTIVE_BODY_LIMIT)},
        "action": {"button": "Sources", "sections": [{"title": "Sources", "rows": rows}]},
    }
    return payload


def mark_read(message_id: str, typing: bool = True) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": message_id,
    }
    if typing:
        payload["typing_indicator"] = {"type": "text"}
    return payload


def reaction(to: str, message_id: str, emoji: str) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "reaction",
        "reaction": {"message_id": message_id, "emoji": emoji},
    }


def sources_footer(sources: Sequence[Any], cited: Sequence[int], top_n: int) -> str:
    """``*Sources*`` then ``[n] Title (link)``: cited first (in citation order), at most top_n."""
    by_number = {_get(s, "number"): s for s in sources}
    ordered = [by_number[n] for n in cited if n in by_number]
    ordered += [s for s in sources if _get(s, "number") not in cited]
    lines = []
    for source in ordered[:top_n]:
        title = _fit(str(_get(source, "title") or "Untitled"), 80)
        link = _get(source, "link")
        lines.append(f"[{_get(source, 'number')}] {title}" + (f" ({link})" if link else ""))
    return "*Sources*\n" + "\n".join(lines) if lines else ""


def render_answer(
    answer_text: str,
    sources: Sequence[Any],
    *,
    show_sources: bool,
    top_n: int,
    limit: int = TEXT_LIMIT,
) -> list[str]:
    """An answer as WhatsApp text parts: citations → [n], Markdown converted, Sources, split."""
    text, cited = extract_citations(answer_text)
    body = to_whatsapp(text)
    if show_sources and top_n > 0 and sources:
        cited_sources = [s for s in sources if _get(s, "number") in cited] or list(sources)
        footer = sources_footer(cited_sources, cited, top_n)
        if footer:
            body = f"{body}\n\n{footer}"
    return split_message(body, limit)


def feedback_hint_text() -> str:
    """Groups have no buttons: how to give feedback there."""
    return "React with 👍 or 👎 to this answer to tell me if it helped."
