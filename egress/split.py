"""Split long WhatsApp text into parts within the limit, on the most natural boundary available.

Order of preference: paragraph, line, sentence, word, then a hard cut (never inside a grapheme:
an emoji with a skin tone or a letter with its combining mark stays whole). A fenced code block
that fits in a part is never split; one that cannot fit is closed at the end of a part and
reopened at the start of the next. Emphasis (``*``, ``_``, ``~``) open at a cut is closed and
reopened the same way, so every part renders on its own. With several parts each gets a
`` (i/k)`` suffix, and the limit includes it.

The limit counts characters (Python code points), like WhatsApp's 4096-character text limit:
it is not a byte limit, so Arabic, CJK and emoji do not shrink a part.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from egress.markdown import emphasis_pairs

FENCE = "```"
MIN_LIMIT = 32
_MIN_FILL = 0.3  # a boundary must keep at least this share of the part, else try a weaker one
_SENTENCE_END = re.compile(
    r"[.!?\u2026][\"'\u201d\u2019)\]]*\s+|[\u3002\uff01\uff1f\u061f\u0964\u06d4]+[\"'\u201d\u2019\u300d\u300f)\]]*\s*"
)
_INLINE_CODE = re.compile(r"`[^`\n]+`")


@dataclass(frozen=True)
class _Layout:
    """Where code and emphasis sit in the whole text, computed once per split."""

    fences: list[tuple[int, int]]  # [open, close_end) of each paired ``` block
    spans: list[tuple[int, int]]  # inline `code` outside fences
    pairs: list[tuple[int, int]]  # WhatsApp emphasis (opener, closer) outside code


def _layout(text: str) -> _Layout:
    marks = [m.start() for m in re.finditer(re.escape(FENCE), text)]
    fences = [(marks[i], marks[i + 1] + len(FENCE)) for i in range(0, len(marks) - 1, 2)]
    spans: list[tuple[int, int]] = []
    pairs: list[tuple[int, int]] = []
    gaps = [(0, 0), *fences, (len(text), len(text))]
    for (_, start), (end, _) in zip(gaps, gaps[1:], strict=False):
        cursor = start
        for match in _INLINE_CODE.finditer(text, start, end):
            spans.append(match.span())
            pairs += emphasis_pairs(text, cursor, match.start())
            cursor = match.end()
        pairs += emphasis_pairs(text, cursor, end)
    return _Layout(fences, spans, sorted(pairs))


def _inside(ranges: list[tuple[int, int]], at: int) -> tuple[int, int] | None:
    return next(((a, b) for a, b in ranges if a < at < b), None)


def _grapheme_safe(text: str, cut: int, floor: int) -> int:
    """Move a hard cut left until it does not separate a character from what modifies it."""
    while cut > floor + 1:
        here, before = text[cut], text[cut - 1]
        joins = (
            unicodedata.combining(here)
            or unicodedata.category(here) in ("Mn", "Me", "Mc")
            or here in "\u200d\ufe0f\ufe0e"
            or before == "\u200d"
            or "\U0001f3fb" <= here <= "\U0001f3ff"  # skin tones
            or "\U000e0020" <= here <= "\U000e007f"  # tag sequences (flags)
            or ("\U0001f1e6" <= here <= "\U0001f1ff" and "\U0001f1e6" <= before <= "\U0001f1ff")
        )
        if not joins:
            return cut
        cut -= 1
    return cut


def _boundary(text: str, lo: int, hi: int, *, code: bool) -> int:
    """Best cut in ``text[lo:hi]`` (the next part starts there); natural boundaries first."""
    floor = lo + max(1, int((hi - lo) * _MIN_FILL))
    kinds = ("\n",) if code else ("\n\n", "\n")
    for sep in kinds:
        at = text.rfind(sep, lo, hi)
        if at >= floor:
            return at + len(sep)
    if not code:
        ends = [m.end() for m in _SENTENCE_END.finditer(text, lo, hi)]
        if ends and ends[-1] >= floor:
            return ends[-1]
    for at in range(hi - 1, floor - 1, -1):
        if text[at] in " \t":
            return at + 1
    return _grapheme_safe(text, hi, lo)


def _split(text: str, budget: int) -> list[str]:
    layout = _layout(text)
    parts: list[str] = []
    pos, prefix = 0, ""
    while pos < len(text):
        rest = text[pos:].rstrip()
        if not rest:
            break
        if len(prefix) + len(rest) <= budget:
            parts.append(prefix + rest)
            break
        room = budget - len(prefix)
        while True:
            piece, closing, reopen, cut = _plan(text, layout, pos, pos + max(room, 1), budget)
            overflow = len(prefix) + len(piece) + len(closing) - budget
            if overflow <= 0:
                break
            room -= overflow
        parts.append(prefix + piece + closing)
        prefix = reopen
        pos = cut
        if not reopen.startswith(FENCE):  # inside code, leading whitespace is indentation
            while pos < len(text) and text[pos].isspace():
                pos += 1
    return parts


def _plan(text: str, layout: _Layout, pos: int, hi: int, budget: int) -> tuple[str, str, str, int]:
    """One part from ``pos``: (text, what closes it, what reopens the next, where next starts)."""
    fence = _inside(layout.fences, hi)
    if fence is not None and fence[0] > pos and fence[1] - fence[0] <= budget:
        # the block would fit in a part of its own: end this part before it
        open_at = fence[0]
        if text[pos:open_at].strip():
            return text[pos:open_at].rstrip(), "", "", open_at
    if fence is not None and fence[0] + len(FENCE) < hi - 1:
        code_from = max(pos, fence[0] + len(FENCE))
        cut = _boundary(text, code_from, hi, code=True)
        if text[fence[0] + len(FENCE) : cut].strip():
            piece = text[pos:cut].rstrip("\n")
            return piece, "\n" + FENCE, FENCE + "\n", cut
        if fence[0] > pos and text[pos : fence[0]].strip():
            return text[pos : fence[0]].rstrip(), "", "", fence[0]
    cut = _boundary(text, pos, hi, code=False)
    fence = _inside(layout.fences, cut)
    if fence is not None:
        # the block ends before ``hi``: keep it whole, here or in the next part
        cut = fence[0] if fence[0] > pos and text[pos : fence[0]].strip() else fence[1]
    span = _inside(layout.spans, cut)
    if span is not None and span[0] > pos and text[pos : span[0]].strip():
        cut = span[0]
    while True:
        open_pairs = [(o, c) for o, c in layout.pairs if o < cut <= c]
        # an opener with nothing after it in this part moves to the next part whole
        dangling = [o for o, _ in open_pairs if o >= pos and not text[o + 1 : cut].strip()]
        if not dangling or min(dangling) <= pos or not text[pos : min(dangling)].strip():
            break
        cut = min(dangling)
    piece = text[pos:cut].rstrip()
    markers = [text[o] for o, _ in open_pairs if text[pos:cut].strip()]
    closing = "".join(reversed(markers))
    return piece, closing, "".join(markers), cut


def split_message(text: str, limit: int = 4096, *, numbering: bool = True) -> list[str]:
    """Parts of ``text``, each at most ``limit`` characters including its `` (i/k)`` suffix."""
    if limit < MIN_LIMIT:
        raise ValueError(f"limit must be at least {MIN_LIMIT} characters")
    text = text.strip()
    if not text:
        return []
    if len(text) <= limit:
        return [text]
    if not numbering:
        return _split(text, limit)
    digits = 1
    while True:
        reserve = len(f" ({'9' * digits}/{'9' * digits})")
        parts = _split(text, limit - reserve)
        if len(str(len(parts))) <= digits or limit - reserve - 2 < MIN_LIMIT // 2:
            break
        digits += 1
    total = len(parts)
    if total == 1:
        return parts
    return [f"{part} ({i}/{total})" for i, part in enumerate(parts, 1)]
