"""WhatsApp formatting: golden conversions, citations, splitting properties, spec-valid payloads."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.compose import (
    DOWN_TITLE,
    UP_TITLE,
    feedback_button_id,
    feedback_buttons,
    feedback_hint_text,
    fit,
    mark_read,
    parse_feedback_button_id,
    reaction,
    render_answer,
    sources_footer,
    sources_list,
    text_message,
)
from egress.markdown import emphasis_pairs, extract_citations, to_whatsapp
from egress.split import split_message
from tests.spec_validation import message_errors, spec_available, validate_message_payload

GOLDEN = Path(__file__).parent / "golden" / "format"
CASES = sorted(p.stem for p in GOLDEN.glob("*.md"))
SUFFIX = re.compile(r" \(\d+/\d+\)$")


# --- golden files ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_golden(name):
    """NAME.md → NAME.txt; with NAME.sources.json the whole answer pipeline runs."""
    source = (GOLDEN / f"{name}.md").read_text(encoding="utf-8")
    expected = (GOLDEN / f"{name}.txt").read_text(encoding="utf-8").rstrip("\n")
    sources_file = GOLDEN / f"{name}.sources.json"
    if sources_file.exists():
        sources = json.loads(sources_file.read_text(encoding="utf-8"))
        assert render_answer(source, sources, show_sources=True, top_n=5) == [expected]
    else:
        assert to_whatsapp(source) == expected


def test_there_are_enough_golden_cases():
    assert len(CASES) >= 12
    assert all((GOLDEN / f"{name}.txt").exists() for name in CASES)


# --- the renderer ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("**b** and __b__", "*b* and *b*"),
        ("*i* and _i_", "_i_ and _i_"),
        ("~~s~~", "~s~"),
        ("call __init__ or obj.__repr__()", "call __init__ or obj.__repr__()"),
        ("2 * 3 = 6 and 2*3*4", "2 * 3 = 6 and 2*3*4"),
        ("snake_case_names and a_b", "snake_case_names and a_b"),
        ("f(*args, **kwargs)", "f(*args, **kwargs)"),
        ("**bold\nacross**", "*bold*\n*across*"),
        ("***both***", "_*both*_"),
        ("**outer **inner** outer**", "*outer inner outer*"),
        ("# Title with **bold**", "*Title with bold*"),
        ("5. five\n6. six", "5. five\n6. six"),
        ("> a\n>\n> > b", "> a\n>\n> > b"),
        ("a  \nb", "a\nb"),
        ("[same](https://x.example)", "same (https://x.example)"),
        ("[https://x.example](https://x.example)", "https://x.example"),
        ("![](https://x.example/i.png)", "https://x.example/i.png"),
        ("`a*b*c`", "`a*b*c`"),
        ("``a`b``", "```a`b```"),
        ("    indented *code*", "```\nindented *code*\n```"),
        ("***", ""),
        ("", ""),
    ],
)
def test_rendering_rules(markdown, expected):
    assert to_whatsapp(markdown) == expected


def test_literal_markers_that_would_pair_are_defused_not_dropped():
    out = to_whatsapp(r"\*not bold\* and \~not struck\~")
    assert emphasis_pairs(out) == []  # WhatsApp formats nothing
    assert out == "\u2217not bold* and \u223cnot struck~"


def test_code_is_copied_byte_for_byte():
    code = "x = a_b * c  # **no** [[1]](http://x) __init__ ~~s~~\n\n\ttab\n"
    out = to_whatsapp(f"```python\n{code}```")
    assert out == f"```\n{code.rstrip(chr(10))}\n```"
    text, cited = extract_citations(f"See [[2]](http://y)\n```\n{code}```\n`arr[3]`")
    assert cited == [2] and "[[1]](http://x)" in text and "`arr[3]`" in text


def test_emoji_rtl_and_cjk_pass_through():
    family = "👨\u200d👩\u200d👧\u200d👦 👍🏽 🇵🇹"
    for text in (family, "مرحبا بالعالم", "שלום עולם", "休假政策 한국어 日本語"):
        assert to_whatsapp(text) == text


def test_tables_without_body_and_with_empty_cells():
    assert to_whatsapp("| A | B |\n|---|---|") == "*A* | *B*"
    assert to_whatsapp("| A | B |\n|---|---|\n| 1 |  |") == "*A:* 1"


# --- citations and sources -------------------------------------------------------------------------
def test_extract_citations_orders_by_first_use_and_accepts_variants():
    text, cited = extract_citations("a [[3]](http://x/(y)) b [1] c [[3]] d [[2]] e [4](http://z)")
    assert cited == [3, 1, 2, 4]
    assert text == "a [3] b [1] c [3] d [2] e [4]"


def test_extract_citations_ignores_indexes_and_definitions():
    text, cited = extract_citations("arr[1] and [x][2] and [3]: http://ref")
    assert cited == []
    assert text == "arr[1] and [x][2] and [3]: http://ref"


SOURCES = [
    SimpleNamespace(number=1, title="Leave Policy", link="https://i.example/leave"),
    {"number": 2, "title": "HR Portal", "link": "https://i.example/hr"},
    SimpleNamespace(number=3, title="Unused", link=None),
]


def test_sources_footer_puts_cited_first_and_trims():
    long = {"number": 9, "title": "  A  very\nlong title " + "x" * 200, "link": "https://l"}
    footer = sources_footer([*SOURCES, long], [2, 9], top_n=3)
    lines = footer.splitlines()
    assert lines[0] == "*Sources*"
    assert lines[1] == "[2] HR Portal (https://i.example/hr)"
    assert lines[2].startswith("[9] A very long title x") and "\n" not in lines[2]
    assert len(lines[2].split(" (https")[0]) <= len("[9] ") + 80
    assert lines[2].split(" (https")[0].endswith("…")
    assert lines[3] == "[1] Leave Policy (https://i.example/leave)"
    assert len(lines) == 4
    assert sources_footer(SOURCES, [], top_n=0) == ""
    assert sources_footer([], [1], top_n=5) == ""
    assert sources_footer(SOURCES, [], top_n=5).endswith("[3] Unused")


def test_render_answer_lists_cited_sources_only():
    answer = (
        "You get **25** days [[2]](https://i.example/hr) per year [[1]](https://i.example/leave)."
    )
    [part] = render_answer(answer, SOURCES, show_sources=True, top_n=5)
    body, footer = part.split("\n\n*Sources*\n")
    assert body == "You get *25* days [2] per year [1]."
    assert footer.splitlines() == [
        "[2] HR Portal (https://i.example/hr)",
        "[1] Leave Policy (https://i.example/leave)",
    ]
    assert render_answer(answer, SOURCES, show_sources=False, top_n=5) == [body]
    [uncited] = render_answer("No citations.", SOURCES, show_sources=True, top_n=2)
    assert uncited.endswith(
        "[1] Leave Policy (https://i.example/leave)\n[2] HR Portal (https://i.example/hr)"
    )


def test_long_answers_split_with_numbering_under_the_limit():
    answer = "\n\n".join(f"Paragraph {i}. " + "Words and **more** words. " * 40 for i in range(20))
    parts = render_answer(answer, SOURCES, show_sources=True, top_n=5)
    assert len(parts) > 1
    assert all(len(p) <= 4096 for p in parts)
    assert all(p.endswith(f"({i}/{len(parts)})") for i, p in enumerate(parts, 1))
    assert all(SUFFIX.sub("", p).startswith("Paragraph") for p in parts)


# --- splitting -------------------------------------------------------------------------------------
def test_split_boundaries_in_order_of_preference():
    para = "First paragraph is here.\n\nSecond paragraph is here, longer than the first."
    assert split_message(para, 50, numbering=False)[0] == "First paragraph is here."
    lines = "Line one is here\nLine two is here too\nLine three follows on"
    assert split_message(lines, 45, numbering=False)[0] == "Line one is here\nLine two is here too"
    sentences = "The first sentence ends. The second one ends too! The third never ends"
    assert split_message(sentences, 55, numbering=False)[0] == (
        "The first sentence ends. The second one ends too!"
    )
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda"
    assert split_message(words, 40, numbering=False)[0] == "alpha beta gamma delta epsilon zeta eta"
    cjk = "第一句话在这里结束。第二句话也在这里结束。第三句话还没有结束呢呢呢"
    assert (
        split_message(cjk, 32, numbering=False)[0] == "第一句话在这里结束。第二句话也在这里结束。"
    )


def test_hard_split_never_breaks_a_grapheme():
    text = "👍🏽" * 40 + "e\u0301" * 40
    parts = split_message(text, 33, numbering=False)
    assert "".join(parts) == text
    for part in parts:
        assert not part.startswith(("\U0001f3fd", "\u0301"))
        assert len(part) <= 33


def test_a_fenced_block_that_fits_moves_whole_to_the_next_part():
    code = "```\nline a\nline b\nline c\n```"
    doc = "Intro sentence that is fairly long. " * 2 + code + "\nAfter."
    parts = split_message(doc, 70, numbering=False)
    assert code in parts[1]
    assert all(p.count("```") % 2 == 0 for p in parts)


def test_a_block_too_big_is_closed_and_reopened_keeping_indentation():
    doc = "```\n" + "\n".join(f"    line {i}" for i in range(60)) + "\n```"
    parts = split_message(doc, 120)
    assert len(parts) > 1
    for part in parts:
        body = SUFFIX.sub("", part)
        assert body.startswith("```\n    line ") and body.endswith("\n```")
        assert len(part) <= 120
    lines = [ln for p in parts for ln in SUFFIX.sub("", p).splitlines() if ln != "```"]
    assert lines == [f"    line {i}" for i in range(60)]


def test_emphasis_open_at_a_cut_is_closed_and_reopened():
    doc = "Start. *this bold sentence is far too long to fit in one part of the message* end."
    parts = split_message(doc, 50, numbering=False)
    assert len(parts) > 1
    for part in parts:
        assert part.count("*") % 2 == 0, part
    assert parts[1].startswith("*")


def test_many_parts_account_for_two_digit_suffixes():
    doc = " ".join(f"word{i}" for i in range(400))
    parts = split_message(doc, 40)
    assert len(parts) >= 10
    assert all(len(p) <= 40 for p in parts), max(map(len, parts))
    assert parts[-1].endswith(f"({len(parts)}/{len(parts)})")


def test_split_edges():
    assert split_message("   ") == []
    assert split_message("x" * 4096) == ["x" * 4096]
    assert len(split_message("x" * 4097)) == 2
    with pytest.raises(ValueError, match="at least"):
        split_message("text", 10)


def _visible(parts: list[str]) -> str:
    joined = "".join(SUFFIX.sub("", p) for p in parts)
    return re.sub(r"[\s*_~`]", "", joined)


any_word = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=14
)
plain_word = st.text(
    alphabet=st.characters(
        codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), exclude_characters="*_~`"
    ),
    min_size=1,
    max_size=14,
)


@st.composite
def documents(draw: st.DrawFn, word: st.SearchStrategy[str]) -> str:
    paragraph = st.lists(word, min_size=1, max_size=50).map(" ".join)
    blocks = []
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["para", "bold", "italic", "code", "lines"]))
        if kind in ("bold", "italic"):
            mark = "*" if kind == "bold" else "_"
            words = draw(st.lists(plain_word, min_size=1, max_size=20))
            blocks.append("Text " + mark + " ".join(words) + mark + " more.")
        elif kind == "code":
            blocks.append("```\n" + "\n".join(draw(st.lists(paragraph, max_size=6))) + "\n```")
        elif kind == "lines":
            blocks.append("\n".join(draw(st.lists(paragraph, min_size=1, max_size=5))))
        else:
            blocks.append(draw(paragraph))
    return "\n\n".join(blocks)


@settings(max_examples=150, deadline=None)
@given(doc=documents(any_word), limit=st.integers(40, 500), numbering=st.booleans())
def test_split_never_exceeds_the_limit_and_loses_nothing(doc, limit, numbering):
    parts = split_message(doc, limit, numbering=numbering)
    assert all(len(p) <= limit for p in parts), [len(p) for p in parts]
    assert all(p.strip() for p in parts)
    assert _visible(parts) == re.sub(r"[\s*_~`]", "", doc)


@settings(max_examples=150, deadline=None)
@given(doc=documents(plain_word), limit=st.integers(40, 400))
def test_split_parts_balance_fences_and_emphasis(doc, limit):
    for part in split_message(doc, limit):
        body = SUFFIX.sub("", part)
        assert body.count("```") % 2 == 0, body
        prose = re.sub(r"```.*?```", "", body, flags=re.S)
        for marker in "*_":
            assert prose.count(marker) % 2 == 0, (marker, body)


# --- payload builders ------------------------------------------------------------------------------
needs_spec = pytest.mark.skipif(not spec_available(), reason="Meta's OpenAPI spec not found")
MANY = [
    SimpleNamespace(number=i, title=f"Document number {i} with a long title", link=f"https://x/{i}")
    for i in range(1, 13)
]


@needs_spec
@pytest.mark.parametrize(
    "payload",
    [
        text_message("15551234567", "hi", reply_to="wamid.X"),
        text_message("15551234567", "https://x.example", preview_url=True),
        text_message(None, "hi", recipient="US.13491208655302741918"),
        text_message("120363025246125244", "hello group", group=True, reply_to="wamid.G"),
        feedback_buttons("15551234567", body="Helpful?", answer_ref="ans-1", tenant_id="acme"),
        feedback_buttons(
            None, body="b" * 5000, answer_ref="r", tenant_id="t", recipient="US.1", footer="f" * 99
        ),
        sources_list("15551234567", body="Sources", sources=MANY, footer="All of them"),
        sources_list("15551234567", body="Sources", sources=[{"number": 1, "title": "T"}]),
        mark_read("wamid.X"),
        mark_read("wamid.X", typing=False),
        reaction("15551234567", "wamid.X", "👍"),
        reaction("15551234567", "wamid.X", ""),
        reaction("120363025246125244", "wamid.X", "👍", group=True),
    ],
    ids=[
        "text",
        "preview",
        "bsuid",
        "group",
        "buttons",
        "buttons-long",
        "list",
        "list-dict",
        "read",
        "read-no-typing",
        "reaction",
        "unreact",
        "group-reaction",
    ],
)
def test_every_builder_output_validates_against_meta_spec(payload):
    validate_message_payload(payload)


@needs_spec
@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p.update(foo=1),
        lambda p: p["text"].update(extra=True),
        lambda p: p.update(type="nope"),
        lambda p: p.update(recipient_type="broadcast"),
        lambda p: p.pop("messaging_product"),
    ],
    ids=["extra-top", "extra-text", "bad-type", "bad-recipient-type", "no-product"],
)
def test_the_spec_helper_rejects_what_meta_rejects(mutate):
    payload = text_message("1", "hi")
    mutate(payload)
    assert message_errors(payload)
    with pytest.raises(AssertionError, match="rejected by Meta's spec"):
        validate_message_payload(payload)


@needs_spec
def test_the_spec_helper_rejects_over_limit_interactive_fields():
    payload = feedback_buttons("1", body="?", answer_ref="r", tenant_id="t")
    payload["interactive"]["action"]["buttons"][0]["reply"]["title"] = "x" * 21
    assert message_errors(payload)
    listed = sources_list("1", body="b", sources=MANY)
    listed["interactive"]["action"]["sections"][0]["rows"][0]["title"] = "x" * 25
    assert message_errors(listed)
    assert message_errors({**mark_read("w"), "typing_indicator": {"type": "audio"}})
    assert message_errors({**mark_read("w"), "to": "1"})


def test_limits_are_enforced_by_builders():
    with pytest.raises(ValueError, match="4096"):
        text_message("1", "x" * 4097)
    with pytest.raises(ValueError, match="empty"):
        text_message("1", "  ")
    with pytest.raises(ValueError, match="recipient"):
        text_message(None, "x")
    with pytest.raises(ValueError, match="group"):
        text_message(None, "x", group=True)
    listed = sources_list("1", body="b" * 2000, sources=MANY)
    rows = listed["interactive"]["action"]["sections"][0]["rows"]
    assert len(rows) == 10
    assert len({r["id"] for r in rows}) == 10
    assert all(len(r["title"]) <= 24 and len(r["description"]) <= 72 for r in rows)
    assert rows[0]["title"] == "[1] Document number 1…"
    assert len(listed["interactive"]["body"]["text"]) == 1024
    assert listed["interactive"]["body"]["text"].endswith("…")
    with pytest.raises(ValueError, match="row"):
        sources_list("1", body="b", sources=[])
    buttons = feedback_buttons("1", body="?", answer_ref="r", tenant_id="t")
    titles = [b["reply"]["title"] for b in buttons["interactive"]["action"]["buttons"]]
    assert titles == [UP_TITLE, DOWN_TITLE] and all(len(t) <= 20 for t in titles)
    with pytest.raises(ValueError, match="different"):
        feedback_buttons("1", body="?", answer_ref="r", tenant_id="t", down_title=UP_TITLE)


def test_fit_truncates_with_an_ellipsis_at_a_word_or_grapheme():
    assert fit("short", 24) == "short"
    assert fit("Quarterly revenue report for all regions", 24) == "Quarterly revenue…"
    assert fit("x" * 30, 24) == "x" * 23 + "…"
    emoji = "👍🏽" * 20
    cut = fit(emoji, 24)
    assert len(cut) <= 24 and cut.endswith("👍🏽…")
    assert fit("a\n\n  b", 10) == "a b"
    with pytest.raises(ValueError):
        fit("x", 0)


def test_feedback_button_ids_round_trip_and_reject_ambiguity():
    payload = feedback_buttons("1", body="?", answer_ref="ans-9", tenant_id="acme")
    ids = [b["reply"]["id"] for b in payload["interactive"]["action"]["buttons"]]
    assert ids == ["fb:acme:ans-9:up", "fb:acme:ans-9:down"]
    assert [parse_feedback_button_id(i) for i in ids] == [
        ("acme", "ans-9", True),
        ("acme", "ans-9", False),
    ]
    for bad in (
        "fb:acme:x",
        "fb:acme:x:maybe",
        "xx:acme:x:up",
        "fb::x:up",
        "",
        None,
        "fb:a:b:c:up",
    ):
        assert parse_feedback_button_id(bad) is None
    with pytest.raises(ValueError, match="':'"):
        feedback_button_id("acme:eu", "r", True)
    with pytest.raises(ValueError, match="256"):
        feedback_button_id("acme", "r" * 260, True)


def test_read_receipt_reaction_and_group_hint_shapes():
    assert mark_read("w") == {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": "w",
        "typing_indicator": {"type": "text"},
    }
    assert "typing_indicator" not in mark_read("w", typing=False)
    with pytest.raises(ValueError):
        mark_read("")
    assert reaction(None, "w", "👍", recipient="US.9")["recipient"] == "US.9"
    assert reaction("g", "w", "👍", group=True)["recipient_type"] == "group"
    hint = feedback_hint_text()
    assert "👍" in hint and "👎" in hint
