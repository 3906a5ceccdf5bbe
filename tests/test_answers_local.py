"""The local answer backend over real SQLite FTS5 files: retrieval, citations, re-indexing."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fastavro
import pytest
from fastavro.validation import validate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from answers.index import MAX_CHUNK, DocumentIndex, parse_document, query_terms
from answers.local import NO_ANSWER, LocalAnswerBackend, default_corpus_dir, is_follow_up
from answers.model import Answer, Source, Turn, answer_to_avro_fields, source_to_avro

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "answer_result.avsc"
CITATION = re.compile(r"\[\[(\d+)\]\]\(([^)]*)\)")


def cited_numbers(text: str) -> list[int]:
    return [int(m.group(1)) for m in CITATION.finditer(text)]


@pytest.fixture
async def sample(tmp_path: Path):
    backend = LocalAnswerBackend(default_corpus_dir(), tmp_path / "index.sqlite3")
    try:
        yield backend
    finally:
        await backend.aclose()


def write(path: Path, text: str, *, mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


# --- the sample corpus: known questions, known sources ---------------------------------------
QUESTIONS = [
    ("How many vacation days do I get?", "leave-policy.md", "25 paid vacation days"),
    ("How do I connect to the VPN?", "it-vpn-setup.md", "GlobalProtect"),
    ("How do I report a security incident?", "security-incidents.md", "security@acme.example"),
    ("What is the daily meal allowance when travelling?", "expenses.md", "75 USD"),
    ("When are the offices open?", "offices.md", "7:00 to 20:00"),
    ("What is the uptime SLA of Acme Cloud?", "product-faq.md", "99.9%"),
    ("How big is the learning budget?", "benefits.md", "1,500 USD"),
    ("Who meets me on my first day?", "onboarding.md", "buddy"),
    ("How long is parental leave?", "leave-policy.md", "16 weeks"),
    ("How do I reset my password?", "it-vpn-setup.md", "id.acme.example"),
    ("How many sick days do employees have?", "leave-policy.md", "10 paid sick days"),
    ("Does Acme match retirement contributions?", "benefits.md", "5%"),
    ("How many days can I work from home?", "remote-work.md", "three days per week"),
    ("Which regions is Acme Cloud available in?", "product-faq.md", "Frankfurt"),
    ("Where is the Berlin office?", "offices.md", "Torstrasse 45"),
]


@pytest.mark.parametrize(("question", "document_id", "fact"), QUESTIONS)
async def test_sample_questions_cite_the_right_document(sample, question, document_id, fact):
    answer = await sample.answer(question, history=[], session_id=None, persona_id=None,
                                 document_sets=[], filters={})  # fmt: skip
    assert fact in answer.text
    assert [s.document_id for s in answer.sources] == [document_id]
    assert cited_numbers(answer.text) == [1]
    source = answer.sources[0]
    assert source.number == 1 and source.source_type == "file"
    assert source.link and source.link.startswith("https://intranet.acme.example/docs/")
    assert f"[[1]]({source.link})" in answer.text
    assert source.updated_at is not None and source.updated_at.tzinfo is not None
    assert source.blurb and len(source.blurb) <= 200
    assert answer.top_documents[0].document_id == document_id
    assert answer.error is None and answer.latency_ms >= 0


async def test_titles_come_from_the_first_heading(sample):
    answer = await sample.answer("How many vacation days do I get?")
    assert answer.sources[0].title == "Vacation and Leave Policy"


async def test_follow_up_resolves_to_the_previous_questions_document(sample):
    history = [
        Turn("user", "How do I connect to the VPN?"),
        Turn("assistant", "Install the GlobalProtect client... [[1]](https://x)"),
    ]
    answer = await sample.answer("and how long does that take?", history=history)
    assert [s.document_id for s in answer.sources] == ["it-vpn-setup.md"]
    assert "ten minutes" in answer.text


@pytest.mark.parametrize(
    ("previous", "document_id", "fact"),
    [
        ("Tell me about sick leave", "leave-policy.md", "10 paid sick days"),
        ("Can I work from another country?", "remote-work.md", "20 working days"),
    ],
)
async def test_the_same_follow_up_follows_each_conversation(sample, previous, document_id, fact):
    history = [Turn("user", previous), Turn("assistant", "...")]
    answer = await sample.answer("how many days?", history=history)
    assert [s.document_id for s in answer.sources] == [document_id]
    assert fact in answer.text


async def test_follow_up_prefers_its_own_terms_within_the_previous_topic(sample):
    history = [Turn("user", "How many vacation days do I get?"), Turn("assistant", "25 days")]
    answer = await sample.answer("and how do I request them?", history=history)
    assert [s.document_id for s in answer.sources] == ["leave-policy.md"]
    assert "HR portal at least two weeks in advance" in answer.text


def test_follow_up_detection():
    history = [Turn("user", "How do I connect to the VPN?")]
    assert is_follow_up("and how long does that take?", history)
    assert is_follow_up("what about Berlin?", history)
    assert not is_follow_up("How many vacation days do employees get per year?", history)
    assert not is_follow_up("and how long does that take?", [])
    assert not is_follow_up("and that?", [Turn("assistant", "hi")])  # no earlier question


@pytest.mark.parametrize(
    "question",
    [
        "What is the capital of France?",
        "What's the weather in Lisbon tomorrow?",
        "Who won the football world cup in 1998?",
        "?!",
        "",
    ],
)
async def test_unanswerable_questions_get_an_honest_no_answer(sample, question):
    answer = await sample.answer(question)
    assert answer.text == NO_ANSWER
    assert answer.sources == [] and "[[" not in answer.text
    assert answer.error is None


NASTY = [
    '"',
    '""',
    'vacation" OR "*',
    "vacation*",
    "-vacation -days",
    "NEAR(vacation days, 2)",
    "vacation AND NOT days",
    "(vpn OR) AND (",
    "title:vacation body:days",
    "^vacation + days",
    "{vpn}: [x] 'y' `z` ~ \\ / ; --",
    "🙂🔥💥 vacation 🏖️",
    "كم عدد أيام الإجازة؟",
    "כמה ימי חופשה יש לי?",
    "ｖａｃａｔｉｏｎ ｄａｙｓ",
    "x" * 5000,
    " ".join(f"word{i}" for i in range(400)),
    "\x00\x01 vacation \u202e days",
]


@pytest.mark.parametrize("question", NASTY)
async def test_query_syntax_in_questions_never_breaks_search(sample, question):
    answer = await sample.answer(question)
    assert isinstance(answer.text, str) and answer.error is None
    assert sorted(cited_numbers(answer.text)) == [s.number for s in answer.sources]


async def test_fts_operators_are_searched_as_words(sample):
    answer = await sample.answer('vacation" OR "* days NEAR(')
    assert [s.document_id for s in answer.sources] == ["leave-policy.md"]


async def test_full_width_and_accented_text_is_folded(sample):
    answer = await sample.answer("How many vacatión days?")
    assert [s.document_id for s in answer.sources] == ["leave-policy.md"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_any_text_is_a_safe_query(tmp_path_factory, text):
    index = _fuzz_index(tmp_path_factory)
    terms = query_terms(text)
    assert len(terms) <= 32
    index.search(terms, limit=3)
    index.terms_in([text, "vacation days"], terms)


_FUZZ: dict[str, DocumentIndex] = {}


def _fuzz_index(tmp_path_factory) -> DocumentIndex:
    if "index" not in _FUZZ:
        index = DocumentIndex(default_corpus_dir(), tmp_path_factory.mktemp("fuzz") / "i.sqlite3")
        index.sync()
        _FUZZ["index"] = index
    return _FUZZ["index"]


# --- composition -----------------------------------------------------------------------------
async def test_sentences_from_several_documents_are_numbered_in_order(tmp_path):
    corpus = tmp_path / "corpus"
    write(corpus / "alpha.md", "# Alpha Guide\n\nThe zebra quota is 7 per team.\n")
    write(corpus / "beta.md", "# Beta Guide\n\nThe zebra quota for contractors is 3.\n")
    backend = LocalAnswerBackend(corpus, tmp_path / "i.sqlite3")
    try:
        answer = await backend.answer("What is the zebra quota?")
    finally:
        await backend.aclose()
    assert cited_numbers(answer.text) == [1, 2]
    assert [s.number for s in answer.sources] == [1, 2]
    assert {s.document_id for s in answer.sources} == {"alpha.md", "beta.md"}
    for source in answer.sources:
        assert f"[[{source.number}]]({source.link})" in answer.text
        assert source.link == (corpus / source.document_id).resolve().as_uri()
    by_number = {s.number: s.document_id for s in answer.top_documents}
    assert by_number == {s.number: s.document_id for s in answer.sources}


async def test_output_is_deterministic_across_indexes(tmp_path):
    one = LocalAnswerBackend(default_corpus_dir(), tmp_path / "a.sqlite3")
    two = LocalAnswerBackend(default_corpus_dir(), tmp_path / "b.sqlite3")
    try:
        for question, _, _ in QUESTIONS[:6]:
            a, b = await one.answer(question), await two.answer(question)
            assert (a.text, a.sources, a.top_documents) == (b.text, b.sources, b.top_documents)
        assert (await one.answer("x vacation")).chat_session_id == (
            await two.answer("x vacation")
        ).chat_session_id
    finally:
        await one.aclose()
        await two.aclose()


async def test_session_id_is_kept_for_follow_ups(sample):
    answer = await sample.answer("How do I connect to the VPN?", session_id="sess-123")
    assert answer.chat_session_id == "sess-123"
    fresh = await sample.answer("How do I connect to the VPN?")
    assert fresh.chat_session_id and fresh.chat_session_id.startswith("local-")


async def test_concurrent_answers_share_one_index(sample):
    questions = [q for q, _, _ in QUESTIONS] * 4
    answers = await asyncio.gather(*(sample.answer(q) for q in questions))
    for (question, document_id, fact), answer in zip(QUESTIONS * 4, answers, strict=True):
        assert fact in answer.text, question
        assert answer.sources[0].document_id == document_id


# --- indexing ----------------------------------------------------------------------------------
async def test_incremental_reindex_picks_up_edits_and_deletions(tmp_path):
    corpus = tmp_path / "corpus"
    write(corpus / "parking.md", "# Parking\n\nThe garage code is 1111.\n", mtime=1_700_000_000)
    write(corpus / "lunch.md", "# Lunch\n\nThe canteen serves lunch from noon.\n")
    write(corpus / "notes" / "misc.txt", "Plain text: the printer lives on floor 3.\n")
    write(corpus / "ignored.pdf", "not indexed")
    write(corpus / ".hidden" / "secret.md", "# Secret\n\nThe garage code is 9999.\n")
    backend = LocalAnswerBackend(corpus, tmp_path / "i.sqlite3")
    try:
        report = await backend.refresh()
        assert (report.added, report.changed, report.removed, report.files) == (3, 0, 0, 3)
        assert "1111" in (await backend.answer("What is the garage code?")).text
        assert "floor 3" in (await backend.answer("Where is the printer?")).text

        write(corpus / "parking.md", "# Parking\n\nThe garage code is 2222.\n", mtime=1_700_000_500)
        (corpus / "lunch.md").unlink()
        report = await backend.refresh()
        assert (report.added, report.changed, report.removed, report.unchanged) == (0, 1, 1, 1)
        answer = await backend.answer("What is the garage code?")
        assert "2222" in answer.text and "1111" not in answer.text
        assert (await backend.answer("When does the canteen serve lunch?")).text == NO_ANSWER

        # touched but identical: the hash says unchanged, nothing is re-indexed
        os.utime(corpus / "parking.md", (1_700_009_999, 1_700_009_999))
        report = await backend.refresh()
        assert (report.added, report.changed, report.removed, report.unchanged) == (0, 0, 0, 2)
        assert backend.index.document_count() == 2
    finally:
        await backend.aclose()


async def test_index_survives_a_restart_without_rereading(tmp_path):
    corpus = tmp_path / "corpus"
    write(corpus / "a.md", "# A\n\nThe walrus count is 12.\n")
    first = LocalAnswerBackend(corpus, tmp_path / "i.sqlite3")
    assert (await first.refresh()).added == 1
    await first.aclose()
    second = LocalAnswerBackend(corpus, tmp_path / "i.sqlite3")
    try:
        report = await second.refresh()
        assert (report.added, report.unchanged) == (0, 1)
        assert "12" in (await second.answer("What is the walrus count?")).text
    finally:
        await second.aclose()


def test_two_indexes_syncing_one_file_at_once_do_not_duplicate(tmp_path):
    corpus = tmp_path / "corpus"
    for i in range(30):
        write(corpus / f"doc{i}.md", f"# Doc {i}\n\nThe okapi number {i} lives here.\n")
    path = tmp_path / "shared.sqlite3"
    indexes = [DocumentIndex(corpus, path) for _ in range(2)]
    errors: list[BaseException] = []

    def run(index: DocumentIndex) -> None:
        try:
            index.sync()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(ix,)) for ix in indexes]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    try:
        assert errors == []
        db = sqlite3.connect(path)
        assert db.execute("SELECT count(*) FROM docs").fetchone()[0] == 30
        assert db.execute("SELECT count(*) FROM chunks").fetchone()[0] == 30
        assert db.execute("SELECT count(*) FROM chunk_text").fetchone()[0] == 30
        db.close()
    finally:
        for ix in indexes:
            ix.close()


def test_corrupt_or_legacy_index_files_are_rebuilt(tmp_path):
    corpus = tmp_path / "corpus"
    write(corpus / "a.md", "# A\n\nThe narwhal budget is 40.\n")
    corrupt = tmp_path / "corrupt.sqlite3"
    corrupt.write_bytes(b"this is not a sqlite database at all" * 100)
    index = DocumentIndex(corpus, corrupt)
    assert index.sync().added == 1
    index.close()

    legacy = tmp_path / "legacy.sqlite3"
    db = sqlite3.connect(legacy)
    db.execute("CREATE TABLE files (path TEXT PRIMARY KEY, mtime REAL, size INTEGER, sha TEXT)")
    db.execute("INSERT INTO files VALUES ('a.md', 0, 0, 'x')")
    db.commit()
    db.close()
    index = DocumentIndex(corpus, legacy)
    try:
        assert index.sync().added == 1
        assert index.search(["narwhal"])[0].document_id == "a.md"
    finally:
        index.close()


def test_pointing_an_index_at_another_folder_starts_over(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    write(one / "same.md", "# Same\n\nThe lemur colour is blue.\n", mtime=1_700_000_000)
    write(two / "same.md", "# Same\n\nThe lemur colour is red!\n", mtime=1_700_000_000)
    index = DocumentIndex(one, tmp_path / "i.sqlite3")
    index.sync()
    index.close()
    index = DocumentIndex(two, tmp_path / "i.sqlite3")
    try:
        assert index.sync().added == 1
        assert "red" in index.search(["lemur"])[0].body
    finally:
        index.close()


def test_missing_corpus_folder_indexes_nothing(tmp_path):
    index = DocumentIndex(tmp_path / "does-not-exist", tmp_path / "i.sqlite3")
    try:
        report = index.sync()
        assert report.files == 0 and index.search(["anything"]) == []
    finally:
        index.close()


def test_parsing_titles_links_sections_and_chunks():
    doc = parse_document(
        "---\ntitle: Handbook\nurl: https://wiki.example/handbook\ntags: [HR, Policy]\n---\n"
        "Intro paragraph.\n\n## Travel\nBook trains.\n\n```\n# not a heading\n```\n",
        "fallback",
    )
    assert (doc.title, doc.link, doc.tags) == ("Handbook", "https://wiki.example/handbook",
                                               ("hr", "policy"))  # fmt: skip
    assert doc.chunks[0] == ("", "Intro paragraph.")
    assert doc.chunks[1][0] == "Travel" and "# not a heading" in doc.chunks[1][1]
    bare = parse_document("link: https://x.example/a\n\n# Real Title\n\nurl: not-meta\n", "f")
    assert (bare.title, bare.link) == ("Real Title", "https://x.example/a")
    assert bare.chunks == (("Real Title", "url: not-meta"),)
    plain = parse_document("no heading here", "My file")
    assert plain.title == "My file" and plain.link is None


def test_long_sections_are_chunked_at_sentence_boundaries():
    sentence = "The capybara policy covers swimming pools and snacks in detail. "
    one_paragraph = sentence * 60  # ~3,800 chars in one paragraph
    paragraphs = "\n\n".join(sentence * 4 for _ in range(20))
    unbroken = "x" * 3000
    doc = parse_document(f"# T\n\n## A\n{one_paragraph}\n\n## B\n{paragraphs}\n\n{unbroken}", "t")
    assert len(doc.chunks) > 6
    assert all(len(body) <= MAX_CHUNK for _, body in doc.chunks)
    assert {section for section, _ in doc.chunks} == {"A", "B"}
    a_text = " ".join(body for section, body in doc.chunks if section == "A")
    assert a_text.count("capybara") == 60
    assert all(b.rstrip().endswith(".") for s, b in doc.chunks if s == "A")


async def test_file_uri_and_filename_title_for_plain_documents(tmp_path):
    corpus = tmp_path / "corpus with space"
    write(corpus / "wifi_guest-access.txt", "The guest wifi password rotates every Monday.\n")
    backend = LocalAnswerBackend(corpus, tmp_path / "i.sqlite3")
    try:
        answer = await backend.answer("When does the guest wifi password rotate?")
    finally:
        await backend.aclose()
    [source] = answer.sources
    assert source.title == "Wifi guest access"
    assert source.link == (corpus / "wifi_guest-access.txt").resolve().as_uri()
    assert source.link.startswith("file://") and "%20" in source.link


# --- filters -----------------------------------------------------------------------------------
@pytest.fixture
async def sets_backend(tmp_path: Path):
    corpus = tmp_path / "corpus"
    write(corpus / "hr" / "parking.md", "# HR Parking\n\nHR staff park in garage P1.\n")
    write(corpus / "it" / "parking.md", "# IT Parking\n\nIT staff park in garage P9.\n")
    write(corpus / "general.md", "# General\n\nVisitors park in garage P5.\n")
    backend = LocalAnswerBackend(corpus, tmp_path / "i.sqlite3")
    try:
        yield backend
    finally:
        await backend.aclose()


async def test_document_sets_are_top_level_folders(sets_backend):
    everything = await sets_backend.answer("Where do staff park in the garage?")
    assert {s.document_id for s in everything.top_documents} == {
        "hr/parking.md", "it/parking.md", "general.md",
    }  # fmt: skip
    hr = await sets_backend.answer("Where do staff park in the garage?", document_sets=["hr"])
    assert [s.document_id for s in hr.sources] == ["hr/parking.md"] and "P1" in hr.text
    assert [s.document_id for s in hr.top_documents] == ["hr/parking.md"]
    both = await sets_backend.answer("Where do staff park?", document_sets=["it", "hr"])
    assert {s.document_id for s in both.top_documents} == {"hr/parking.md", "it/parking.md"}
    none = await sets_backend.answer("Where do staff park?", document_sets=["finance"])
    assert none.text == NO_ANSWER and none.sources == [] and none.top_documents == []


async def test_source_type_tag_and_time_filters(tmp_path):
    corpus = tmp_path / "corpus"
    old = (datetime.now(UTC) - timedelta(days=400)).timestamp()
    write(corpus / "old.md", "# Old\n\nThe ferret fund is 10.\n", mtime=old)
    write(corpus / "new.md", "tags: finance, Budget\n\n# New\n\nThe ferret fund is 20.\n")
    backend = LocalAnswerBackend(corpus, tmp_path / "i.sqlite3")
    try:
        q = "How big is the ferret fund?"
        assert (await backend.answer(q, filters={"source_type": ["confluence"]})).text == NO_ANSWER
        ok = await backend.answer(q, filters={"source_type": ["FILE", "web"]})
        assert ok.sources
        recent = await backend.answer(q, filters={"time_cutoff_days": 30})
        assert [s.document_id for s in recent.top_documents] == ["new.md"]
        tagged = await backend.answer(q, filters={"tags": ["budget"]})
        assert [s.document_id for s in tagged.top_documents] == ["new.md"]
        untagged = await backend.answer(q, filters={"tags": ["legal"]})
        assert untagged.text == NO_ANSWER
    finally:
        await backend.aclose()


# --- the Avro contract -------------------------------------------------------------------------
def _result_record(answer: Answer) -> dict:
    return {
        "request_id": "req-answers-local-1",
        "tenant_id": "tenant-answers-local",
        "phone_number_id": "100200300",
        "chat_id": "15550001111",
        "recipient": "15550001111",
        "question_message_id": "wamid.answers.local",
        "show_sources": True,
        "language": None,
        "finished_at": datetime.now(UTC),
        **answer_to_avro_fields(answer),
    }


async def test_answers_validate_against_the_answer_result_schema(sample):
    schema = fastavro.parse_schema(json.loads(SCHEMA_PATH.read_text()))
    answered = await sample.answer("How do I report a security incident?")
    unanswered = await sample.answer("What is the capital of France?")
    failed = Answer("", error="timeout: Onyx did not answer in 30 s", error_retryable=True)
    naive = Answer(
        "x [[1]](https://e.example)",
        sources=[Source(1, "d", "T", None, "web", datetime(2024, 5, 1, 12, 0), "")],
        onyx_message_id=2**40,
        chat_session_id="s",
        latency_ms=-5,
    )
    for answer in (answered, unanswered, failed, naive):
        record = _result_record(answer)
        assert validate(record, schema, raise_errors=True)
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, record)
        buf.seek(0)
        back = fastavro.schemaless_reader(buf, schema)
        assert back["citations"] == record["citations"]
        assert back["answer"] == record["answer"]
    assert _result_record(answered)["status"] == "ok"
    record = _result_record(failed)
    assert (record["status"], record["error_code"], record["answer"]) == ("failed", "timeout", "")
    assert failed.error_code == "timeout" and answered.error_code is None
    assert _result_record(naive)["latency_ms"] == 0
    assert source_to_avro(naive.sources[0])["updated_at"] == "2024-05-01T12:00:00+00:00"
    assert source_to_avro(naive.sources[0])["blurb"] is None
    cited = source_to_avro(answered.sources[0])
    assert datetime.fromisoformat(cited["updated_at"]).tzinfo is not None


async def test_answers_rescan_the_folder_after_the_refresh_interval(tmp_path):
    corpus = tmp_path / "corpus"
    write(corpus / "a.md", "# A\n\nThe tapir quota is 5.\n", mtime=1_700_000_000)
    backend = LocalAnswerBackend(corpus, tmp_path / "i.sqlite3", refresh_interval_s=0.0)
    cached = LocalAnswerBackend(corpus, tmp_path / "j.sqlite3", refresh_interval_s=None)
    try:
        assert "5" in (await backend.answer("What is the tapir quota?")).text
        assert "5" in (await cached.answer("What is the tapir quota?")).text
        write(corpus / "a.md", "# A\n\nThe tapir quota is 8.\n", mtime=1_700_000_100)
        assert "8" in (await backend.answer("What is the tapir quota?")).text
        assert "5" in (await cached.answer("What is the tapir quota?")).text  # until refresh()
        assert (await cached.refresh()).changed == 1
        assert "8" in (await cached.answer("What is the tapir quota?")).text
    finally:
        await backend.aclose()
        await cached.aclose()
