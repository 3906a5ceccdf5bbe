"""Slash commands users can type: /help, /reset, /sources on|off, /lang xx, /stop, /start, /forget.

Tolerant on purpose: phones auto-capitalise ("/Help"), users add spaces, and in groups the
message often starts with the bot's mention ("@Acme /reset").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KNOWN = ("help", "reset", "sources", "lang", "stop", "start", "forget")
_COMMAND = re.compile(r"^\s*(?:@\S+\s+)*/(?P<name>[A-Za-z]+)(?:\s+(?P<arg>.*?))?\s*$", re.S)
_LANG = re.compile(r"^[a-z]{2,3}(?:-[A-Za-z]{2,4})?$")


@dataclass(frozen=True)
class Command:
    name: str  # one of KNOWN, or "unknown"
    arg: str | None = None


def parse_command(text: str | None) -> Command | None:
    """The command in ``text``, or None when it is not a command at all."""
    if not text:
        return None
    match = _COMMAND.match(text)
    if not match:
        return None
    name = match["name"].lower()
    arg = (match["arg"] or "").strip() or None
    if name not in KNOWN:
        return Command("unknown", name)
    if name == "sources":
        value = (arg or "").lower()
        return Command("sources", value if value in ("on", "off") else None)
    if name == "lang":
        value = (arg or "").strip()
        return Command("lang", value.lower() if value and _LANG.match(value.lower()) else None)
    return Command(name, None)
