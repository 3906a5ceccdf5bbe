"""Graph API message bodies, exactly as Meta expects them, and the answer renderer.

Every builder returns the JSON for ``POST /{phone_number_id}/messages`` (schema ``Message`` of
Meta's OpenAPI document) and enforces WhatsApp's limits *before* Meta would reject the call: text
4096, interactive body 1024, footer 60, reply buttons ≤3 with id ≤256 / title ≤20, list rows ≤10
with id ≤200 / title ≤24 / description ≤72, list button ≤20. Display strings that may be too long
(titles, bodies) are shortened with an ellipsis; identifiers that are too long are an error,
because a shortened id would no longer mean the same thing.

Users are addressed by phone number (``to``) or by business-scoped user id (``recipient``);
groups by group id with ``recipient_type: "group"``. Groups get no interactive messages and no
read receipts (WhatsApp does not support them there): use :func:`feedback_hint_text` instead.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from egress.markdown import extract_citations, to_whatsapp
from egress.split import split_message

TEXT_LIMIT = 4096
INTERACTIVE_BODY_LIMIT = 1024
FOOTER_LIMIT = 60
BUTTON_ID_LIMIT = 256
BUTTON_TITLE_LIMIT = 20
MAX_BUTTONS = 3
LIST_ROWS_LIMIT = 10
ROW_ID_LIMIT = 200
ROW_TITLE_LIMIT = 24
ROW_DESCRIPTION_LIMIT = 72
LIST_BUTTON_LIMIT = 20
SECTION_TITLE_LIMIT = 24
SOURCE_TITLE_LIMIT = 80
ELLIPSIS = "…"

FEEDBACK_PREFIX = "fb"
UP_TITLE = "👍 Helpful"
DOWN_TITLE = "👎 Not helpful"


def fit(text: str, limit: int, *, one_line: bool = True) -> str:
    """``text`` within ``limit`` characters: whitespace collapsed, cut at a word if one is near,
    never inside a grapheme (an emoji with its modifier), ending in an ellipsis when shortened."""
    if limit < 1:
        raise ValueError("limit must be positive")
    text = " ".join(text.split()) if one_line else text.strip()
    if len(text) <= limit:
        return text
    cut = limit - len(ELLIPSIS)
    while cut > 0 and _continues(text, cut):
        cut -= 1
    space = text.rfind(" ", 0, cut + 1)
    if space >= cut * 2 // 3:
        cut = space
    return text[:cut].rstrip() + ELLIPSIS


def _continues(text: str, at: int) -> bool:
    """Whether ``text[at]`` belongs to the character before it (combining mark, ZWJ, modifier)."""
    here, before = text[at], text[at - 1]
    return bool(
        unicodedata.combining(here)
        or unicodedata.category(here) in ("Mn", "Me", "Mc")
        or here in "\u200d\ufe0f"
        or before == "\u200d"
        or "\U0001f3fb" <= here <= "\U0001f3ff"
    )


def field(obj: Any, name: str) -> Any:
    """A source's attribute, whether it is a mapping (Avro record) or an object."""
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def _address(to: str | None, recipient: str | None, group: bool) -> dict[str, Any]:
    if group:
        if not to:
            raise ValueError("a group message needs the group id in `to`")
        return {"recipient_type": "group", "to": to}
    if recipient:
        return {"recipient_type": "individual", "recipient": recipient}
    if not to:
        raise ValueError("a message needs `to` (phone number) or `recipient` (BSUID)")
    return {"recipient_type": "individual", "to": to}


def _envelope(to: str | None, recipient: str | None, group: bool, kind: str) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", **_address(to, recipient, group), "type": kind}


def text_message(
    to: str | None = None,
    body: str = "",
    *,
    recipient: str | None = None,
    group: bool = False,
    reply_to: str | None = None,
    preview_url: bool = False,
) -> dict[str, Any]:
    """A text message; ``reply_to`` threads it under the user's message (``context``).

    An over-long body is an error, not a silent cut: split with :func:`split_message` first.
    """
    if not body.strip():
        raise ValueError("empty text body")
    if len(body) > TEXT_LIMIT:
        raise ValueError(f"text body is {len(body)} characters; WhatsApp allows {TEXT_LIMIT}")
    payload = _envelope(to, recipient, group, "text")
    payload["text"] = {"preview_url": preview_url, "body": body}
    if reply_to:
        payload["context"] = {"message_id": reply_to}
    return payload


# --- feedback buttons -----------------------------------------------------------------------------
def feedback_button_id(tenant_id: str, answer_ref: str, positive: bool) -> str:
    """``fb:<tenant>:<answer_ref>:up|down``: the tap comes back with everything needed to record
    it for the right tenant, even after the conversation state has moved on."""
    for name, value in (("tenant_id", tenant_id), ("answer_ref", answer_ref)):
        if not value or ":" in value or value != value.strip():
            raise ValueError(f"{name} must be non-empty, without ':' or surrounding spaces")
    button_id = f"{FEEDBACK_PREFIX}:{tenant_id}:{answer_ref}:{'up' if positive else 'down'}"
    if len(button_id) > BUTTON_ID_LIMIT:
        raise ValueError(f"feedback button id is over {BUTTON_ID_LIMIT} characters")
    return button_id


def parse_feedback_button_id(button_id: str | None) -> tuple[str, str, bool] | None:
    """(tenant, answer_ref, is_positive) from a feedback button id; None for anything else."""
    if not button_id or len(button_id) > BUTTON_ID_LIMIT:
        return None
    parts = button_id.split(":")
    if len(parts) != 4 or parts[0] != FEEDBACK_PREFIX or parts[3] not in ("up", "down"):
        return None
    if not parts[1] or not parts[2]:
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
    reply_to: str | None = None,
    up_title: str = UP_TITLE,
    down_title: str = DOWN_TITLE,
) -> dict[str, Any]:
    """👍 / 👎 reply buttons under an answer (1:1 chats only: groups cannot show them)."""
    titles = [fit(up_title, BUTTON_TITLE_LIMIT), fit(down_title, BUTTON_TITLE_LIMIT)]
    if not all(titles) or titles[0] == titles[1]:
        raise ValueError("button titles must be non-empty and different")
    if not body.strip():
        raise ValueError("an interactive message needs a body")
    buttons = [
        {
            "type": "reply",
            "reply": {"id": feedback_button_id(tenant_id, answer_ref, positive), "title": title},
        }
        for positive, title in zip((True, False), titles, strict=True)
    ]
    interactive: dict[str, Any] = {
        "type": "button",
        "body": {"text": fit(body, INTERACTIVE_BODY_LIMIT, one_line=False)},
        "action": {"buttons": buttons},
    }
    if footer and footer.strip():
        interactive["footer"] = {"text": fit(footer, FOOTER_LIMIT)}
    payload = _envelope(to, recipient, False, "interactive")
    payload["interactive"] = interactive
    if reply_to:
        payload["context"] = {"message_id": reply_to}
    return payload


# --- sources --------------------------------------------------------------------------------------
def _numbered(sources: Sequence[Any]) -> list[tuple[int, Any]]:
    """Each source with its citation number (its position when it has none)."""
    out = []
    for index, source in enumerate(sources, 1):
        number = field(source, "number")
        out.append((int(number) if number is not None else index, source))
    return out


def sources_list(
    to: str | None,
    *,
    body: str,
    sources: Sequence[Any],
    recipient: str | None = None,
    button: str = "Sources",
    section_title: str = "Sources",
    footer: str | None = None,
) -> dict[str, Any]:
    """An interactive list of up to 10 sources: ``[n] Title`` rows with the link as description.

    Rows beyond ten are dropped (WhatsApp allows ten rows in all); a repeated number keeps its
    first source because row ids must be unique.
    """
    rows: list[dict[str, Any]] = []
    seen: set[int] = set()
    for number, source in _numbered(sources):
        if number in seen:
            continue
        seen.add(number)
        title = str(field(source, "title") or "").strip() or "Untitled"
        row: dict[str, Any] = {
            "id": f"src:{number}",
            "title": fit(f"[{number}] {title}", ROW_TITLE_LIMIT),
        }
        description = str(field(source, "link") or "").strip()
        if description:
            row["description"] = fit(description, ROW_DESCRIPTION_LIMIT)
        rows.append(row)
        if len(rows) == LIST_ROWS_LIMIT:
            break
    if not rows:
        raise ValueError("a list needs at least one row")
    if not body.strip():
        raise ValueError("an interactive message needs a body")
    interactive: dict[str, Any] = {
        "type": "list",
        "body": {"text": fit(body, INTERACTIVE_BODY_LIMIT, one_line=False)},
        "action": {
            "button": fit(button, LIST_BUTTON_LIMIT),
            "sections": [{"title": fit(section_title, SECTION_TITLE_LIMIT), "rows": rows}],
        },
    }
    if footer and footer.strip():
        interactive["footer"] = {"text": fit(footer, FOOTER_LIMIT)}
    payload = _envelope(to, recipient, False, "interactive")
    payload["interactive"] = interactive
    return payload


def sources_footer(sources: Sequence[Any], cited: Sequence[int], top_n: int = 5) -> str:
    """``*Sources*`` then ``[n] Title (link)``: cited first in citation order, then the rest,
    at most ``top_n``; titles trimmed to one line of 80 characters."""
    if top_n <= 0:
        return ""
    by_number: dict[int, Any] = {}
    for number, source in _numbered(sources):
        by_number.setdefault(number, source)
    order = [n for n in dict.fromkeys(cited) if n in by_number]
    order += [n for n in by_number if n not in order]
    lines = []
    for number in order[:top_n]:
        source = by_number[number]
        title = fit(str(field(source, "title") or "").strip() or "Untitled", SOURCE_TITLE_LIMIT)
        link = str(field(source, "link") or "").strip()
        lines.append(f"[{number}] {title}" + (f" ({link})" if link else ""))
    return "*Sources*\n" + "\n".join(lines) if lines else ""


def render_answer(
    answer_text: str,
    sources: Sequence[Any],
    *,
    show_sources: bool,
    top_n: int,
    limit: int = TEXT_LIMIT,
) -> list[str]:
    """An answer as WhatsApp text parts: citations → ``[n]``, Markdown converted, a Sources
    footer (only the cited sources when the answer cites any), split within ``limit``."""
    text, cited = extract_citations(answer_text)
    body = to_whatsapp(text)
    if show_sources and top_n > 0 and sources:
        listed = sources
        if cited:
            cited_set = set(cited)
            listed = [s for n, s in _numbered(sources) if n in cited_set] or sources
        footer = sources_footer(listed, cited, top_n)
        if footer:
            body = f"{body}\n\n{footer}" if body else footer
    return split_message(body, limit)


# --- receipts and reactions -----------------------------------------------------------------------
def mark_read(message_id: str, typing: bool = True) -> dict[str, Any]:
    """Blue ticks on the user's message, and a typing indicator (up to 25 s or until we reply).
    1:1 chats only: WhatsApp does not support read receipts in groups."""
    if not message_id:
        raise ValueError("message_id is required")
    payload: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": message_id,
    }
    if typing:
        payload["typing_indicator"] = {"type": "text"}
    return payload


def reaction(
    to: str | None,
    message_id: str,
    emoji: str,
    *,
    recipient: str | None = None,
    group: bool = False,
) -> dict[str, Any]:
    """React to a message with one emoji; an empty emoji removes our reaction."""
    if not message_id:
        raise ValueError("message_id is required")
    payload = _envelope(to, recipient, group, "reaction")
    payload["reaction"] = {"message_id": message_id, "emoji": emoji}
    return payload


def feedback_hint_text() -> str:
    """Groups have no buttons: how to give feedback there instead."""
    return "React with 👍 or 👎 to my answer to tell me whether it helped."
