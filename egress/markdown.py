"""Markdown (as LLMs write it) → WhatsApp formatting, by walking markdown-it's token tree.

Why a parser and not regexes: code spans must be protected, ``__init__`` and ``2 * 3`` must stay
literal, nested lists need indentation, tables need restructuring. The parser already knows all
of that; the renderer only decides how each node looks in WhatsApp:
``*bold*`` ``_italic_`` ``~strike~`` `` `code` `` ```` ```block``` ```` ``- `` ``1. `` ``> ``.
Links become ``text (url)``, headings bold lines, tables ``*Header:* value`` lines, rules vanish.
"""

from __future__ import annotations

import re

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

_MD = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable(["table", "strikethrough"])

CITATION = re.compile(r"\[\[(\d+)\]\]\([^)\s]*\)|\[\[(\d+)\]\]|\[(\d+)\](?!\()")


def extract_citations(text: str) -> tuple[str, list[int]]:
    """Onyx's ``[[n]](link)``, ``[[n]]`` and ``[n]`` → ``[n]``; numbers in first-use order."""
    order: list[int] = []

    def repl(match: re.Match[str]) -> str:
        number = int(next(g for g in match.groups() if g))
        if number not in order:
            order.append(number)
        return f"\u2063[{number}]\u2063"  # invisible separators keep it out of link syntax

    converted = CITATION.sub(repl, text)
    return converted, order


class _Renderer:
    def render(self, text: str) -> str:
        root = SyntaxTreeNode(_MD.parse(text))
        blocks = [self.block(child, 0) for child in root.children]
        out = "\n\n".join(b for b in blocks if b.strip())
        out = out.replace("\u2063", "")
        return re.sub(r"\n{3,}", "\n\n", out).strip()

    # --- blocks ---------------------------------------------------------------------------------
    def block(self, node: SyntaxTreeNode, depth: int) -> str:
        kind = node.type
        if kind == "paragraph":
            return self.inline_children(node)
        if kind == "heading":
            return f"*{self.inline_children(node).strip('*')}*"
        if kind in ("fence", "code_block"):
            return f"```\n{node.content.rstrip(chr(10))}\n```"
        if kind == "blockquote":
            inner = "\n\n".join(self.block(c, depth) for c in node.children)
            return "\n".join(f"> {line}" if line else ">" for line in inner.splitlines())
        if kind in ("bullet_list", "ordered_list"):
            return self.list_(node, depth)
        if kind == "table":
            return self.table(node)
        if kind == "hr":
            return ""
        if kind in ("html_block",):
            return node.content.strip()
        return "\n".join(self.block(c, depth) for c in node.children) if node.children else ""

    def list_(self, node: SyntaxTreeNode, depth: int) -> str:
        start = int(node.attrs.get("start", 1)) if node.type == "ordered_list" else 1
        lines = []
        indent = "  " * depth
        for i, item in enumerate(node.children):
            marker = f"{start + i}. " if node.type == "ordered_list" else "- "
            parts = []
            for child in item.children:
                if child.type in ("bullet_list", "ordered_list"):
                    parts.append(self.list_(child, depth + 1))
                else:
                    text = self.block(child, depth + 1)
                    parts.append(text.replace("\n", "\n" + indent + "  "))
            first, *rest = parts or [""]
            lines.append(indent + marker + first)
            lines.extend(rest)
        return "\n".join(lines)

    def table(self, node: SyntaxTreeNode) -> str:
        rows = [r for section in node.children for r in section.children]
        if not rows:
            return ""
        header = [self.inline_children(cell).strip() for cell in rows[0].children]
        out = []
        for row in rows[1:]:
            cells = [self.inline_children(cell).strip() for cell in row.children]
            lines = [
                f"*{h}:* {v}" if h else v for h, v in zip(header, cells, strict=False) if v or h
            ]
            out.append("\n".join(lines))
        return "\n\n".join(out)

    # --- inline ---------------------------------------------------------------------------------
    def inline_children(self, node: SyntaxTreeNode) -> str:
        return "".join(self.inline(c) for c in node.children)

    def inline(self, node: SyntaxTreeNode) -> str:
        kind = node.type
        if kind == "inline":
            return self.inline_children(node)
        if kind == "text":
            return node.content
        if kind == "code_inline":
            return f"`{node.content}`"
        if kind == "strong":
            inner = self.inline_children(node)
            if node.markup == "__" and re.fullmatch(r"\w+", inner):
                return f"__{inner}__"  # a Python dunder like __init__, not emphasis
            return self.wrap("*", inner)
        if kind == "em":
            return self.wrap("_", self.inline_children(node))
        if kind == "s":
            return self.wrap("~", self.inline_children(node))
        if kind == "link":
            href = node.attrs.get("href", "")
            text = self.inline_children(node)
            plain = text.strip("*_~`")
            if not plain or plain == href or plain == href.removeprefix("mailto:"):
                return href.removeprefix("mailto:")
            return f"{text} ({href})"
        if kind == "image":
            alt = "".join(self.inline(c) for c in node.children) or node.attrs.get("alt", "")
            return f"{alt} ({node.attrs.get('src', '')})" if alt else str(node.attrs.get("src"))
        if kind in ("softbreak", "hardbreak"):
            return "\n"
        if kind == "html_inline":
            return node.content
        return self.inline_children(node) if node.children else node.content

    @staticmethod
    def wrap(marker: str, text: str) -> str:
        """Emphasis markers hug the text (WhatsApp ignores ``* bold *``)."""
        stripped = text.strip()
        if not stripped:
            return text
        lead = text[: len(text) - len(text.lstrip())]
        trail = text[len(text.rstrip()) :]
        return f"{lead}{marker}{stripped}{marker}{trail}"


def to_whatsapp(markdown: str) -> str:
    """Render Markdown for WhatsApp (citations should be extracted first)."""
    return _Renderer().render(markdown)
