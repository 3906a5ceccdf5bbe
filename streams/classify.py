"""Classify an inbound message: what should the bot do about it?

Pure: the conversation stage supplies the chat's rule and the bot's recent message ids (to
recognise feedback and replies to the bot). Greetings and thanks are recognised only when they
are the *whole* message ("hi" is a greeting, "hi, how do I reset my VPN?" is a question).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Any

from streams.commands import parse_command

GREETINGS = {
    "hi", "hello", "hey", "hiya", "yo", "good morning", "good afternoon", "good evening",
    "hola", "buenos dias", "buenas", "bonjour", "salut", "hallo", "guten tag", "ola", "oi",
    "ciao", "مرحبا", "السلام عليكم", "👋", "namaste",
}  # fmt: skip
THANKS = {
    "thanks", "thank you", "thx", "ty", "thanks a lot", "thank you so much", "many thanks",
    "merci", "merci beaucoup", "gracias", "muchas gracias", "danke", "danke schon", "obrigado",
    "obrigada", "grazie", "شكرا", "🙏", "👍🙏", "cheers",
}  # fmt: skip
POSITIVE = {"👍", "❤", "❤️", "😍", "🙏", "👏", "💯"}
NEGATIVE = {"👎", "😡", "😠"}
_URL = re.compile(r"https?://", re.I)
_FLOOD = re.compile(r"(.)\1{40,}", re.S)
MAX_URLS = 5


@dataclass(frozen=True)
class ChatRule:
    """What the chat config says about answering in this chat."""

    respond_tag_only: bool = False
    allowed_senders: frozenset[str] | None = None
    disabled: bool = False


_NOT_WORDS = re.compile(r"[\s!¡?¿.,;:~]+")


def _plain(text: str) -> str:
    """Lower-case, accents and punctuation stripped, for greeting/thanks matching."""
    text = text.lower()
    if not text.isascii():  # ASCII has no accents to strip (NFKD leaves it unchanged)
        decomposed = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _NOT_WORDS.sub(" ", text).strip()


def _strip_skin_tone(emoji: str) -> str:
    return "".join(c for c in emoji if not 0x1F3FB <= ord(c) <= 0x1F3FF)


def parse_feedback_id(value: str | None) -> tuple[str, str, bool] | None:
    """``fb:<tenant>:<answer_ref>:up|down`` → (tenant, answer_ref, is_positive)."""
    if not value or not value.startswith("fb:"):
        return None
    parts = value.split(":")
    if len(parts) != 4 or parts[3] not in ("up", "down") or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2], parts[3] == "up"


def _addressed(
    message: dict[str, Any],
    bot_message_ids: Container[str],
    bot_phone: str | None,
    bot_names: Sequence[str],
) -> tuple[bool, str]:
    """Is a group message for the bot, and its text with the mention removed."""
    text = message.get("text") or ""
    handles = [h for h in (bot_phone, *bot_names) if h]
    mentioned = any(h and h in (message.get("mentions") or []) for h in handles)
    for handle in handles:
        pattern = re.compile(r"@\+?" + re.escape(handle.lstrip("+")) + r"\b", re.I)
        if pattern.search(text):
            mentioned = True
            text = pattern.sub("", text)
    replied = (message.get("context_message_id") or "") in bot_message_ids
    return mentioned or replied, " ".join(text.split())


def _result(message: dict[str, Any], kind: str, **fields: Any) -> dict[str, Any]:
    record = {
        "kind": kind,
        "question": None,
        "command": None,
        "command_arg": None,
        "feedback_positive": None,
        "feedback_target": None,
        "reason": None,
        "message": message,
    }
    record.update(fields)
    return record


def classify(
    message: dict[str, Any],
    *,
    bot_message_ids: Container[str],
    chat_rule: ChatRule,
    bot_phone: str | None = None,
    bot_names: Sequence[str] = (),
) -> dict[str, Any]:
    """A ClassifiedMessage record (schemas/classified_message.avsc) for ``message``."""
    mtype = message["message_type"]
    text = message.get("text") or ""
    if chat_rule.disabled:
        return _result(message, "ignored", reason="chat disabled")
    if chat_rule.allowed_senders is not None and not (
        {message.get("sender_id"), message.get("sender_phone"), message.get("sender_bsuid")}
        & chat_rule.allowed_senders
    ):
        return _result(message, "ignored", reason="sender not allowed")
    # feedback taps and reactions come first: they are never questions
    feedback = parse_feedback_id(message.get("interactive_id"))
    if feedback is not None:
        tenant, ref, positive = feedback
        if tenant != message["tenant_id"]:
            return _result(message, "ignored", reason="feedback for another tenant")
        return _result(message, "feedback", feedback_positive=positive, feedback_target=ref)
    if mtype == "reaction":
        emoji = _strip_skin_tone(message.get("reaction_emoji") or "")
        target = message.get("target_message_id")
        if target and target in bot_message_ids and (emoji in POSITIVE or emoji in NEGATIVE):
            return _result(
                message, "feedback", feedback_positive=emoji in POSITIVE, feedback_target=target
            )
        return _result(message, "reaction", reason="removed" if not emoji else None)
    if mtype == "edit":
        return _result(message, "edit", question=text or None)
    if mtype == "revoke":
        return _result(message, "revoke")
    if mtype == "unsupported":
        return _result(message, "unsupported")
    if mtype in ("system", "order"):
        return _result(message, "ignored", reason=f"{mtype} message")
    if message.get("chat_type") == "group":
        addressed, text = _addressed(message, bot_message_ids, bot_phone, bot_names)
        if chat_rule.respond_tag_only and not addressed:
            return _result(message, "ignored", reason="not addressed to the bot")
    command = parse_command(text)
    if command is not None:
        if command.name == "unknown":
            return _result(message, "command", command="help", command_arg=command.arg)
        return _result(message, "command", command=command.name, command_arg=command.arg)
    media = message.get("media")
    if media or mtype in ("location", "contacts", "sticker", "audio", "video"):
        kind = (media or {}).get("kind") or mtype
        if text and kind in ("image", "document", "video"):
            return _result(message, "question", question=f"[{kind} attached] {text}")
        reason = "voice" if kind == "audio" else kind
        return _result(message, "media", reason=reason)
    if not text.strip():
        return _result(message, "ignored", reason="empty")
    if len(_URL.findall(text)) > MAX_URLS or _FLOOD.search(text):
        return _result(message, "spam", reason="too many links or a character flood")
    plain = _plain(text)
    if plain in GREETINGS or text.strip() in GREETINGS:
        return _result(message, "greeting")
    if plain in THANKS or text.strip() in THANKS:
        return _result(message, "thanks")
    return _result(message, "question", question=text.strip())
