"""Split long WhatsApp text into parts ≤ the limit, on the most natural boundary available.

Order of preference: paragraph, line, sentence, word, then a hard cut. A fenced code block that
fits in a part is never split; one that cannot fit is closed at the end of a part and reopened at
the start of the next. Emphasis markers left open by a cut are closed and reopened the same way.
Parts get a ``(i/k)`` suffix when there are several, and the limit includes it. WhatsApp counts
characters, so lengths here are Python ``len`` (code points).
"""

from __future__ import annotations

import re

FENCE = "```"
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


def _suffix(i: int, k: int) -> str:
    return f" ({i}/{k})"


def _cut_point(text: str, limit: int) -> int:
    """Where to cut ``text`` so the first piece is ≤ limit, preferring natural boundaries."""
    window = text[:limit]
    for pattern in ("\n\n", "\n"):
        at = window.rfind(pattern)
        if at > limit // 3:
            return at + len(pattern)
    ends = [m.end() for m in _SENTENCE_END.finditer(window)]
    if ends and ends[-1] > limit // 3:
        return ends[-1]
    at = window.rfind(" ")
    if at > limit // 3:
        return at + 1
    return limit


def _open_markers(piece: str) -> list[str]:
    """Emphasis markers left open at the end of ``piece`` (outside code)."""
    outside = re.sub(r"```.*?(```|$)|`[^`\n]*`", "", piece, flags=re.S)
    open_: list[str] = []
    for marker in ("*", "_", "~"):
        # a marker opens when followed by non-space and closes when preceded by non-space;
        # count word-boundary markers only, so 2 * 3 and snake_case do not count
        pattern = (
            rf"(?:(?<=\s)|^){re.escape(marker)}(?=\S)|(?<=\S){re.escape(marker)}(?=\s|$|[.,;:!?)])"
        )
        if len(re.findall(pattern, outside, flags=re.M)) % 2:
            open_.append(marker)
    return open_


def _in_fence(piece: str) -> bool:
    return piece.count(FENCE) % 2 == 1


def _split_raw(text: str, limit: int) -> list[str]:
    parts: list[str] = []
    carry = ""  # markers/fence to reopen at the start of the next part
    rest = text
    while rest:
        rest = carry + rest
        carry = ""
        if len(rest) <= limit:
            parts.append(rest)
            break
        budget = limit - 4  # room to close a fence or markers
        cut = _cut_point(rest, budget)
        piece, rest = rest[:cut], rest[cut:]
        # do not split a fenced block that would fit whole in the next part
        if _in_fence(piece):
            start = piece.rfind(FENCE)
            block_end = rest.find(FENCE)
            block_len = len(piece) - start + block_end + len(FENCE)
            if start > 0 and block_end >= 0 and block_len <= budget:
                piece, rest = piece[:start], piece[start:] + rest
        piece = piece.rstrip()
        if _in_fence(piece):
            piece += "\n" + FENCE
            carry = FENCE + "\n"
        else:
            markers = _open_markers(piece)
            if markers:
                piece += "".join(reversed(markers))
                carry = "".join(markers)
        if piece.strip():
            parts.append(piece)
        rest = rest.lstrip("\n ") if not carry.startswith(FENCE) else rest.lstrip("\n")
    return parts


def split_message(text: str, limit: int = 4096, *, numbering: bool = True) -> list[str]:
    """Parts of ``text``, each ≤ ``limit`` characters including any ``(i/k)`` suffix."""
    if limit < 40:
        raise ValueError("limit too small to split sensibly")
    text = text.strip()
    if len(text) <= limit:
        return [text] if text else []
    reserve = len(_suffix(99, 99)) if numbering else 0
    parts = _split_raw(text, limit - reserve)
    if numbering and len(parts) > 1:
        k = len(parts)
        parts = [p + _suffix(i, k) for i, p in enumerate(parts, 1)]
    return parts
