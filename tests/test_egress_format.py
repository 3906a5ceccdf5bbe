"""WhatsApp formatting: golden conversions, citations, splitting properties, spec-valid payloads."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.compose import (
    feedback_buttons,
    mark_read,
    parse_feedback_button_id,
    reaction,
    render_answer,
    sources_list,
    text_message,
)
from egress.markdown import extract_citations, to_whatsapp
from egress.split import split_message
from sim.spec import load_validator

GOLDEN = Path(__file__).parent / "golden" / "format"
CASES = sorted(p.stem for p in GOLDEN.glob("*.md"))


@pytest.mark.parametrize("name", CASES)
def test_golden(name):
    source = (GOLDEN / f"{name}.md").read_text()
    expected = (GOLDEN / f"{name}.txt").read_text().rstrip("\n")
    assert to_whatsapp(source) == expected


def test_there_are_enough_golden_cases():
    assert len(CASES) >= 12


def test_citations_become_numbers_with_a_sources_footer():
    sources = [
        SimpleNamespace(number=1, title="Leave Policy", link="https://i.example/leave"),
        SimpleNamespace(number=2, title="HR Portal", link="https://i.example/hr"),
        SimpleNamespace(number=3, title="Unused", link="https://i.example/x"),
    ]
    text = (
        "You get **25** days [[2]](https://i.example/hr) per year [[1]](https://i.example/leave)."
    )
    [part] = render_answer(text, sources, show_sources=True, top_n=5)
    assert part.startswith("You get *25* days [2] per year [1].")
    footer = part.split("*Sources*\n", 1)[1].splitlines()
    assert footer == [
        "[2] HR Portal (https://i.example/hr)",
        "[1] Leave Policy (https://i.example/leave)",
    ]
    [plain] = render_answer(text, sources, show_sources=False, top_n=5)
    assert "Sources" not in plain


def test_extract_citations_orders_by_first_use_and_accepts_variants():
    text, cited = extract_citations("a [[3]](http://x) b [1] c [[3]] d [[2]]")
    assert cited == [3, 1, 2]
    assert "[[" not in text


def test_long_answers_split_with_numbering_under_the_limit():
    answer = "\n\n".join(f"Paragraph {i}. " + "Words and more words. " * 40 for i in range(20))
    parts = render_answer(answer, [], show_sources=False, top_n=5)
    assert len(parts) > 1
    assert all(len(p) <= 4096 for p in parts)
    assert all(p.endswith(f"({i}/{len(parts)})") for i, p in enumerate(parts, 1))


def _strip_added(parts: list[str]) -> str:
    joined = " ".join(re.sub(r" \(\d+/\d+\)$", "", p) for p in parts)
    return re.sub(r"[\s*_~`]", "", joined)


words = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12
)
paragraph = st.lists(words, min_size=1, max_size=60).map(" ".join)


@st.composite
def documents(draw: st.DrawFn) -> str:
    blocks = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["para", "bold", "code", "lines"]))
        text = draw(paragraph)
        if kind == "bold":
            blocks.append(f"*{text.strip() or 'x'}*")
        elif kind == "code":
            blocks.append("```\n" + text + "\n```")
        elif kind == "lines":
            blocks.append("\n".join(draw(st.lists(paragraph, min_size=1, max_size=5))))
        else:
            blocks.append(text)
    return "\n\n".join(blocks)


@settings(max_examples=200, deadline=None)
@given(doc=documents(), limit=st.integers(60, 600))
def test_split_properties(doc, limit):
    parts = split_message(doc, limit)
    assert all(len(p) <= limit for p in parts), [len(p) for p in parts]
    # nothing lost, nothing reordered (ignoring whitespace and the markers we add)
    assert _strip_added(parts) == re.sub(r"[\s*_~`]", "", doc)
    for part in parts:
        assert part.count("```") % 2 == 0, part


def test_split_prefers_paragraph_boundaries():
    doc = "First paragraph is here.\n\nSecond paragraph is here.\n\nThird one."
    parts = split_message(doc, 50, numbering=False)
    assert parts[0] == "First paragraph is here."


def test_split_closes_and_reopens_a_code_block_that_cannot_fit():
    doc = "```\n" + "\n".join(f"line {i}" for i in range(100)) + "\n```"
    parts = split_message(doc, 200)
    assert len(parts) > 1
    for part in parts:
        body = re.sub(r" \(\d+/\d+\)$", "", part)
        assert body.startswith("```") and body.rstrip().endswith("```")


def test_empty_text_gives_no_parts():
    assert split_message("   ") == []


VALIDATOR = load_validator()
needs_spec = pytest.mark.skipif(not VALIDATOR.uses_spec, reason="Meta's OpenAPI spec not found")


@needs_spec
@pytest.mark.parametrize(
    "payload",
    [
        text_message("15551234567", "hi", reply_to="wamid.X"),
        text_message(None, "hi", recipient="US.13491208655302741918"),
        text_message("120363025246125244", "hello group", group=True),
        feedback_buttons(
            "15551234567", body="Was this helpful?", answer_ref="ans-1", tenant_id="acme"
        ),
        sources_list(
            "15551234567",
            body="Sources",
            sources=[
                SimpleNamespace(
                    number=i, title=f"Document number {i} with a long title", link=f"https://x/{i}"
                )
                for i in range(1, 13)
            ],
        ),
        mark_read("wamid.X"),
        reaction("15551234567", "wamid.X", "👍"),
    ],
    ids=["text", "bsuid", "group", "buttons", "list", "read", "reaction"],
)
def test_every_builder_output_validates_against_meta_spec(payload):
    assert VALIDATOR.validate_send(payload) == []


def test_limits_are_enforced_by_builders():
    with pytest.raises(ValueError, match="4096"):
        text_message("1", "x" * 4097)
    with pytest.raises(ValueError):
        text_message(None, "x")
    lst = sources_list(
        "1", body="b" * 2000, sources=[SimpleNamespace(number=1, title="T" * 50, link="L" * 100)]
    )
    row = lst["interactive"]["action"]["sections"][0]["rows"][0]
    assert len(row["title"]) <= 24 and len(row["description"]) <= 72
    assert len(lst["interactive"]["body"]["text"]) <= 1024
    buttons = feedback_buttons("1", body="?", answer_ref="r", tenant_id="t")["interactive"][
        "action"
    ]["buttons"]
    assert all(len(b["reply"]["title"]) <= 20 for b in buttons)


def test_feedback_button_ids_round_trip():
    payload = feedback_buttons("1", body="?", answer_ref="ans-9", tenant_id="acme")
    ids = [b["reply"]["id"] for b in payload["interactive"]["action"]["buttons"]]
    assert [parse_feedback_button_id(i) for i in ids] == [
        ("acme", "ans-9", True),
        ("acme", "ans-9", False),
    ]
    assert parse_feedback_button_id("fb:acme:x") is None
