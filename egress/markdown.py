"""Markdown (as LLMs write it) → WhatsApp formatting, by walking markdown-it's syntax tree.

Why a parser and not regexes: code must be protected, ``__init__`` and ``2 * 3`` must stay
literal, nested lists need indentation and tables need restructuring. markdown-it already knows
all of that; this renderer only decides how each node looks in WhatsApp:
``*bold*`` ``_italic_`` ``~strike~`` `` `code` `` ```` ```block``` ```` ``- `` ``1. `` ``> ``.
Links become ``text (url)``, headings bold lines, tables ``*Header:* value`` lines, rules vanish.

Decisions a reader would otherwise have to reverse-engineer:

- WhatsApp has no escape character. A *literal* ``*``, ``_`` or ``~`` in plain text (say from
  ``\\*not bold\\*``) that WhatsApp would pair into formatting has its opening character swapped
  for a look-alike (``∗`` U+2217, ``＿`` U+FF3F, ``∼`` U+223C): the text reads the same and no
  formatting appears. Markers WhatsApp could never pair (``2 * 3``, ``snake_case``, ``__init__``,
  ``**kwargs``) are left exactly as written.
- WhatsApp formatting does not span lines, so emphasis over a line break is closed and reopened
  on every line.
- Emphasis glued to a Latin letter or digit on the outside (``2*3*4``) cannot be rendered by
  WhatsApp; it is left as written instead of being turned into stray ``_``.
- ``__name__`` where name is a lowercase identifier of two or more characters is a Python dunder
  (``__init__``, ``__main__``) even though CommonMark parses it as bold, and stays literal.
- Code (spans and blocks) is copied byte for byte; the fence's language tag is dropped because
  WhatsApp would show it as text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

# commonmark preset: raw HTML is recognised (and passed through as text), no typographer, no
# linkify (WhatsApp links bare URLs itself).
_MD = MarkdownIt("commonmark").enable(["table", "strikethrough"])

MARKERS = "*_~"
_LOOKALIKE = {"*": "\u2217", "_": "\uff3f", "~": "\u223c"}
_DUNDER = re.compile(r"[a-z][a-z0-9_]*[a-z0-9]")
_BR = re.compile(r"<br\s*/?>", re.I)
_MARKER_RE = re.compile(r"[*_~]")


# --- WhatsApp's emphasis rules (shared with egress.split) -----------------------------------------
def _is_opener(text: str, i: int, start: int, end: int) -> bool:
    """A marker WhatsApp would read as opening: after a boundary, before a non-space."""
    m = text[i]
    prev = text[i - 1] if i > start else ""
    nxt = text[i + 1] if i + 1 < end else ""
    if not nxt or nxt.isspace() or nxt == m:
        return False
    return not prev or prev.isspace() or (not prev.isalnum() and prev != m)


def _is_closer(text: str, i: int, start: int, end: int) -> bool:
    """A marker WhatsApp would read as closing: after a non-space, before a boundary."""
    m = text[i]
    prev = text[i - 1] if i > start else ""
    nxt = text[i + 1] if i + 1 < end else ""
    if not prev or prev.isspace() or prev == m:
        return False
    return not nxt or (not nxt.isalnum() and nxt != m)


def emphasis_pairs(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Index pairs (opener, closer) that WhatsApp would format in ``text[start:end]``.

    Pairs never cross a line break (WhatsApp formatting does not), a marker pairs with the next
    closer of the same character, and runs like ``**`` or ``__`` never pair. The caller removes
    code first: inside code nothing is formatting.
    """
    end = len(text) if end is None else end
    pairs: list[tuple[int, int]] = []
    pending: dict[str, int] = {}
    for match in _MARKER_RE.finditer(text, start, end):
        i = match.start()
        m = text[i]
        # a line break between the opener and here cancels it
        if m in pending and "\n" in text[pending[m] : i]:
            del pending[m]
        if m in pending and i > pending[m] + 1 and _is_closer(text, i, start, end):
            pairs.append((pending.pop(m), i))
        elif m not in pending and _is_opener(text, i, start, end):
            pending[m] = i
    pairs.sort()
    return pairs


def _defuse(text: str) -> str:
    """Swap the opener of literal marker pairs for a look-alike so WhatsApp shows them as typed."""
    if not any(m in text for m in MARKERS):
        return text
    pairs = emphasis_pairs(text)
    if not pairs:
        return text
    chars = list(text)
    for opener, _closer in pairs:
        chars[opener] = _LOOKALIKE[chars[opener]]
    return "".join(chars)


# --- citations ------------------------------------------------------------------------------------
# [[n]](link), [n](link), [[n]] and a bare [n], but not an index (arr[1]), the label of a
# reference link ([text][2]) or a reference definition ([3]: url).
_URL = r"(?:[^()\s]|\([^()\s]*\))*"
_NOT_AFTER = r"(?<![\w\[])(?<![^\d]\])"
_CITATION = re.compile(
    rf"\[\[(\d{{1,4}})\]\]\({_URL}\)"
    rf"|{_NOT_AFTER}\[(\d{{1,4}})\]\({_URL}\)"
    r"|\[\[(\d{1,4})\]\]"
    rf"|{_NOT_AFTER}\[(\d{{1,4}})\](?![(:\]])"
)
_FENCE_LINE = re.compile(r" {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)")


def _code_ranges(text: str) -> list[tuple[int, int]]:
    """Where code sits (fenced blocks, then backtick spans), so citations there stay untouched."""
    ranges: list[tuple[int, int]] = []
    fence: str | None = None
    start = offset = 0
    for line in text.splitlines(keepends=True):
        match = _FENCE_LINE.match(line)
        if fence is None and match:
            fence, start = match.group(1), offset
        elif (
            fence is not None
            and match
            and match.group(1)[0] == fence[0]
            and len(match.group(1)) >= len(fence)
            and not line[match.end() :].strip()
        ):
            ranges.append((start, offset + len(line)))
            fence = None
        offset += len(line)
    if fence is not None:
        ranges.append((start, len(text)))
    spans: list[tuple[int, int]] = []
    gaps = [(0, 0), *ranges, (len(text), len(text))]
    for (_, gap_start), (gap_end, _) in zip(gaps, gaps[1:], strict=False):
        runs = list(_CODE_SPAN.finditer(text, gap_start, gap_end))
        used = -1
        for i, run in enumerate(runs):
            if run.start() <= used:
                continue
            closing = next((r for r in runs[i + 1 :] if len(r.group(1)) == len(run.group(1))), None)
            if closing is not None:
                spans.append((run.start(), closing.end()))
                used = closing.end() - 1
    return sorted(ranges + spans)


def extract_citations(text: str) -> tuple[str, list[int]]:
    """Onyx's ``[[n]](link)`` (and ``[n](link)``, ``[[n]]``, ``[n]``) → ``[n]``, outside code.

    Done before Markdown parsing so citations never turn into links. Returns the new text and the
    cited numbers in order of first use (each once).
    """
    order: list[int] = []
    seen: set[int] = set()

    def replace(match: re.Match[str]) -> str:
        number = int(next(g for g in match.groups() if g is not None))
        if number not in seen:
            seen.add(number)
            order.append(number)
        return f"[{number}]"

    out: list[str] = []
    pos = 0
    for code_start, code_end in _code_ranges(text):
        out.append(_CITATION.sub(replace, text[pos:code_start]))
        out.append(text[code_start:code_end])
        pos = code_end
    out.append(_CITATION.sub(replace, text[pos:]))
    return "".join(out), order


# --- the renderer ---------------------------------------------------------------------------------
_LISTS = ("bullet_list", "ordered_list")
_CODE_BLOCKS = ("fence", "code_block")


class _Renderer:
    """One render: remembers which emphasis is open so nested same-type emphasis is not doubled."""

    def __init__(self) -> None:
        self._active: list[str] = []

    def render(self, markdown: str) -> str:
        root = SyntaxTreeNode(_MD.parse(markdown))
        return "\n\n".join(self._blocks(root.children, 0)).strip("\n")

    # blocks ---------------------------------------------------------------------------------------
    def _blocks(self, nodes: list[SyntaxTreeNode], depth: int) -> Iterator[str]:
        for node in nodes:
            text = self._block(node, depth)
            if text.strip():
                yield text

    def _block(self, node: SyntaxTreeNode, depth: int) -> str:
        kind = node.type
        if kind == "paragraph":
            return self._inline_children(node)
        if kind == "heading":
            return self._emphasis("*", node)
        if kind in _CODE_BLOCKS:
            return _code_block(node.content)
        if kind == "blockquote":
            inner = "\n\n".join(self._blocks(node.children, depth))
            return "\n".join(f"> {line}" if line else ">" for line in inner.split("\n"))
        if kind in _LISTS:
            return self._list(node, depth)
        if kind == "table":
            return self._table(node)
        if kind == "hr":
            return ""
        if kind == "html_block":
            return node.content.rstrip("\n")
        return "\n\n".join(self._blocks(node.children, depth))

    def _list(self, node: SyntaxTreeNode, depth: int) -> str:
        ordered = node.type == "ordered_list"
        number = int(node.attrs.get("start", 1)) if ordered else 0
        indent = "  " * depth
        lines: list[str] = []
        for item in node.children:
            marker = f"{number}. " if ordered else "- "
            number += 1
            first = True
            for child in item.children:
                if child.type in _LISTS:
                    if first:
                        lines.append(indent + marker.rstrip())
                    lines.append(self._list(child, depth + 1))
                elif child.type in _CODE_BLOCKS:
                    # code stays byte-exact: no indentation added inside the fence
                    if first:
                        lines.append(indent + marker.rstrip())
                    lines.append(_code_block(child.content))
                else:
                    text = self._block(child, depth + 1)
                    if not text.strip():
                        continue
                    cont = "\n" + indent + " " * len(marker)
                    lead = indent + marker if first else indent + " " * len(marker)
                    lines.append(lead + text.replace("\n", cont))
                first = False
            if first:  # an empty item
                lines.append(indent + marker.rstrip())
        return "\n".join(lines)

    def _table(self, node: SyntaxTreeNode) -> str:
        rows = [row for section in node.children for row in section.children]
        if not rows:
            return ""
        header = [self._plain_emphasis(cell) for cell in rows[0].children]
        if len(rows) == 1:
            return " | ".join(f"*{h}*" for h in header if h)
        out = []
        for row in rows[1:]:
            lines = []
            for name, cell in zip(header, row.children, strict=False):
                value = self._inline_children(cell).strip()
                if value:
                    lines.append(f"*{name}:* {value}" if name else value)
            if lines:
                out.append("\n".join(lines))
        return "\n\n".join(out)

    # inline ---------------------------------------------------------------------------------------
    def _plain_emphasis(self, node: SyntaxTreeNode) -> str:
        """Inline text rendered inside a bold wrapper we add ourselves (table headers)."""
        self._active.append("*")
        try:
            return self._inline_children(node).strip()
        finally:
            self._active.pop()

    def _inline_children(self, node: SyntaxTreeNode) -> str:
        children = node.children
        if len(children) == 1 and children[0].type == "inline":
            children = children[0].children
        out = []
        for i, child in enumerate(children):
            if child.type in ("strong", "em", "s") and _glued(children, i):
                out.append(child.markup + self._inline_children(child) + child.markup)
            else:
                out.append(self._inline(child))
        return "".join(out)

    def _inline(self, node: SyntaxTreeNode) -> str:
        kind = node.type
        if kind == "text":
            return _defuse(node.content)
        if kind == "code_inline":
            # WhatsApp's inline code cannot hold a backtick; its monospace form can
            return f"```{node.content}```" if "`" in node.content else f"`{node.content}`"
        if kind == "strong":
            inner = node.children
            if (
                node.markup == "__"
                and len(inner) == 1
                and inner[0].type == "text"
                and _DUNDER.fullmatch(inner[0].content)
            ):
                return f"__{inner[0].content}__"
            return self._emphasis("*", node)
        if kind == "em":
            return self._emphasis("_", node)
        if kind == "s":
            return self._emphasis("~", node)
        if kind == "link":
            return self._link(node)
        if kind == "image":
            alt = _plain_text(node).strip()
            src = _display_url(str(node.attrs.get("src", "")))
            return f"{alt} ({src})" if alt and src else alt or src
        if kind in ("softbreak", "hardbreak"):
            return "\n"
        if kind == "html_inline":
            return "\n" if _BR.fullmatch(node.content.strip()) else node.content
        return self._inline_children(node) if node.children else node.content

    def _link(self, node: SyntaxTreeNode) -> str:
        href = _display_url(str(node.attrs.get("href", "")))
        if node.markup == "autolink":
            return _plain_text(node) or href
        text = self._inline_children(node).strip()
        bare = _plain_text(node).strip()
        target = href.removeprefix("mailto:")
        if not href:
            return text
        if not bare or bare in (href, target):
            return target
        return f"{text} ({target})"

    def _emphasis(self, marker: str, node: SyntaxTreeNode) -> str:
        if marker in self._active:  # already inside the same formatting: do not double it
            return self._inline_children(node)
        self._active.append(marker)
        try:
            inner = self._inline_children(node)
        finally:
            self._active.pop()
        return "\n".join(_wrap_line(marker, line) for line in inner.split("\n"))


def _wrap_line(marker: str, line: str) -> str:
    """Markers hug the text (WhatsApp ignores ``* bold *``); blank lines stay blank."""
    stripped = line.strip()
    if not stripped:
        return line
    lead = line[: len(line) - len(line.lstrip())]
    trail = line[len(line.rstrip()) :]
    return f"{lead}{marker}{stripped}{marker}{trail}"


def _glued(siblings: list[SyntaxTreeNode], i: int) -> bool:
    """Emphasis touching a Latin letter or digit outside it (``2*3*4``): WhatsApp cannot format
    that, and the source probably did not mean formatting."""
    before = siblings[i - 1] if i > 0 else None
    after = siblings[i + 1] if i + 1 < len(siblings) else None
    left = before.content[-1:] if before is not None and before.type == "text" else ""
    right = after.content[:1] if after is not None and after.type == "text" else ""
    # ASCII only: scripts written without spaces (CJK, Thai) still get their emphasis
    return (left.isascii() and left.isalnum()) or (right.isascii() and right.isalnum())


def _plain_text(node: SyntaxTreeNode) -> str:
    """The visible text under a node with no formatting (image alt text, link comparison)."""
    if node.type in ("text", "code_inline", "html_inline"):
        return node.content
    if node.type in ("softbreak", "hardbreak"):
        return " "
    return "".join(_plain_text(child) for child in node.children)


def _display_url(url: str) -> str:
    """markdown-it percent-encodes URLs; show them as written unless that would break linking."""
    shown = _MD.normalizeLinkText(url)
    if any(c.isspace() for c in shown):  # keep spaces encoded so WhatsApp links the whole URL
        shown = re.sub(r"\s", lambda m: f"%{ord(m.group()):02X}", shown)
    return shown


def _code_block(content: str) -> str:
    body = content.rstrip("\n")
    return f"```\n{body}\n```" if body.strip() else ""


def to_whatsapp(markdown: str) -> str:
    """Render Markdown for WhatsApp (extract citations first so they do not become links)."""
    return _Renderer().render(markdown)
