"""The local answer backend: extractive answers with real citations from a folder of documents.

It stands in for Onyx in the embedded default and in tests: retrieve sections by BM25, pick the
sentences that best cover the question (terms weighted by rarity, matched with the index's own
Porter stemmer), and cite the documents they came from as ``[[n]](link)`` — the convention Onyx
uses, so the rest of the pipeline cannot tell the difference. When the best sentence covers too
little of the question it says so, without citations, rather than inventing an answer.

Everything is deterministic for a given corpus: ties break on rank and position, never on hash
order, so tests and replays see the same text.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from answers.index import (
    DocumentIndex,
    Hit,
    SearchFilters,
    SyncReport,
    query_terms,
    split_sentences,
)
from answers.model import Answer, Source, Turn

NO_ANSWER = (
    "I couldn't find that in the documents I can search. Try rephrasing the question, or ask "
    "about a different topic."
)
# Share of the question's (IDF-weighted) terms the best sentence must cover to be an answer.
MIN_COVERAGE = 0.5
# Extra sentences must score at least this share of the best one.
KEEP_RATIO = 0.75
MAX_SENTENCES = 3
MAX_SENTENCE_CHARS = 600
HISTORY_WEIGHT = 0.5  # terms carried over from the previous question count half
HEADING_WEIGHT = 0.5  # a term only in the section heading or title counts half
CHUNK_PRIOR = 0.4  # how much a sentence's score depends on its chunk's BM25 rank
_ANAPHORA = frozenset(
    "it its that this them those they there these one ones he she his her such same".split()
)
_CONTINUATION = re.compile(r"^\s*(and|also|but|so|what about|how about|then|or)\b", re.I)
SHORT_QUESTION_TERMS = 2
DEFAULT_REFRESH_INTERVAL_S = 60.0
# Local documents are files; a source_type filter without "file" excludes all of them.
SOURCE_TYPE = "file"


def default_corpus_dir() -> Path:
    """The sample corpus shipped with the package (package data ``answers/corpus/*.md``)."""
    return Path(__file__).resolve().parent / "corpus"


@dataclass(frozen=True)
class _Candidate:
    """One sentence that could go into the answer."""

    score: float
    coverage: float
    rank: int  # the hit's position in the BM25 order
    position: int  # the sentence's position in its chunk
    text: str
    hit: Hit


def is_follow_up(question: str, history: Sequence[Turn]) -> bool:
    """Whether the question leans on the previous one ("and how long does that take?")."""
    if not any(t.role == "user" for t in history):
        return False
    words = set(re.findall(r"\w+", question.lower()))
    return (
        len(query_terms(question)) <= SHORT_QUESTION_TERMS
        or bool(words & _ANAPHORA)
        or bool(_CONTINUATION.match(question))
    )


def _filters(document_sets: Sequence[str], filters: Mapping[str, Any]) -> SearchFilters | None:
    """Onyx-style filters mapped onto the index; None when they exclude every local document."""
    source_types = filters.get("source_type") or filters.get("source_types")
    if source_types:
        wanted = [source_types] if isinstance(source_types, str) else list(source_types)
        if SOURCE_TYPE not in {str(s).lower() for s in wanted}:
            return None
    since = None
    days = filters.get("time_cutoff_days")
    if days:
        since = datetime.now(UTC) - timedelta(days=float(days))
    cutoff = filters.get("time_cutoff")
    if isinstance(cutoff, datetime):
        since = max(since, cutoff) if since else cutoff
    tags = filters.get("tags") or ()
    return SearchFilters(
        document_sets=tuple(str(d) for d in document_sets),
        tags=tuple(str(t) for t in ([tags] if isinstance(tags, str) else tags)),
        updated_since=since,
    )


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit - 1)
    return text[: cut if cut > limit // 2 else limit - 1].rstrip() + "…"


class LocalAnswerBackend:
    """AnswerBackend over a :class:`DocumentIndex` of ``corpus_dir``.

    The folder is indexed on first use and re-scanned (a stat per file; only changed files are
    re-read) before an answer once ``refresh_interval_s`` has passed, so edits to the documents
    show up without a restart; ``None`` disables that, :meth:`refresh` forces a re-scan.
    """

    def __init__(
        self,
        corpus_dir: Path,
        index_path: Path,
        *,
        top_k: int = 5,
        refresh_interval_s: float | None = DEFAULT_REFRESH_INTERVAL_S,
    ) -> None:
        self.corpus_dir = Path(corpus_dir)
        self.index = DocumentIndex(self.corpus_dir, Path(index_path))
        self.top_k = max(1, top_k)
        self.refresh_interval_s = refresh_interval_s
        self._synced_at: float | None = None
        self._sync_lock = asyncio.Lock()

    async def refresh(self) -> SyncReport:
        """Re-scan the folder now; returns what changed."""
        async with self._sync_lock:
            return await self._sync()

    async def _sync(self) -> SyncReport:
        report = await asyncio.to_thread(self.index.sync)
        self._synced_at = time.monotonic()
        return report

    def _stale(self) -> bool:
        if self._synced_at is None:
            return True
        interval = self.refresh_interval_s
        return interval is not None and time.monotonic() - self._synced_at >= interval

    async def _ensure_synced(self) -> None:
        if self._stale():
            async with self._sync_lock:
                if self._stale():  # another request may have synced while we waited
                    await self._sync()

    async def answer(
        self,
        question: str,
        *,
        history: Sequence[Turn] = (),
        session_id: str | None = None,
        persona_id: int | None = None,
        document_sets: Sequence[str] = (),
        filters: Mapping[str, Any] | None = None,
    ) -> Answer:
        """Answer from the documents; never raises for any user text."""
        started = time.perf_counter()
        await self._ensure_synced()
        text, sources, top = await asyncio.to_thread(
            self._answer_sync, question, tuple(history), tuple(document_sets), dict(filters or {})
        )
        return Answer(
            text=text,
            sources=sources,
            top_documents=top,
            onyx_message_id=None,
            chat_session_id=session_id or self._new_session_id(question),
            latency_ms=int((time.perf_counter() - started) * 1000),
        )

    @staticmethod
    def _new_session_id(question: str) -> str:
        """A stable id for a new conversation, so replays produce the same records."""
        return "local-" + hashlib.sha256(question.encode("utf-8", "replace")).hexdigest()[:16]

    # --- the blocking part, run in a worker thread --------------------------------------------
    def _answer_sync(
        self,
        question: str,
        history: tuple[Turn, ...],
        document_sets: tuple[str, ...],
        filters: dict[str, Any],
    ) -> tuple[str, list[Source], list[Source]]:
        own = query_terms(question)
        carried: list[str] = []
        if is_follow_up(question, history):
            previous = next(t.text for t in reversed(history) if t.role == "user")
            carried = [t for t in query_terms(previous) if t not in own]
        search_filters = _filters(document_sets, filters)
        if (not own and not carried) or search_filters is None:
            return NO_ANSWER, [], []
        hits = self.index.search([*own, *carried], limit=self.top_k, filters=search_filters)
        if not hits:
            return NO_ANSWER, [], []
        idf = self.index.term_weights([*own, *carried])
        weights = {t: idf[t] for t in own}
        weights.update({t: idf[t] * HISTORY_WEIGHT for t in carried})
        chosen = self._choose(self._candidates(hits, weights))
        numbers: dict[str, int] = {}
        text = self._compose(chosen, numbers) if chosen else NO_ANSWER
        best_sentence: dict[str, str] = {}
        for cand in chosen:
            best_sentence.setdefault(cand.hit.document_id, cand.text)
        sources: list[Source] = []
        top: list[Source] = []
        seen: set[str] = set()
        for hit in hits:
            if hit.document_id in seen:
                continue
            seen.add(hit.document_id)
            if hit.document_id in numbers:
                source = self._source(numbers[hit.document_id], hit, best_sentence[hit.document_id])
                sources.append(source)
            else:
                source = self._source(len(numbers) + len(top) - len(sources) + 1, hit, hit.body)
            top.append(source)
        sources.sort(key=lambda s: s.number)
        return text, sources, top

    def _candidates(self, hits: list[Hit], weights: dict[str, float]) -> list[_Candidate]:
        """Every sentence of the retrieved chunks with its weighted term overlap."""
        total = sum(weights.values()) or 1.0
        terms = list(weights)
        best_hit = max(hits[0].score, 1e-9)
        sentences: list[tuple[int, int, str, Hit]] = []
        for rank, hit in enumerate(hits):
            for position, sentence in enumerate(split_sentences(hit.body)):
                sentences.append((rank, position, sentence, hit))
        headings = [f"{hit.title}\n{hit.section}" for hit in hits]
        in_sentence = self.index.terms_in([s[2] for s in sentences], terms)
        in_heading = self.index.terms_in(headings, terms)
        out: list[_Candidate] = []
        for (rank, position, sentence, hit), matched in zip(sentences, in_sentence, strict=True):
            if not matched:
                continue
            heading_only = in_heading[rank] - matched
            score = sum(weights[t] for t in matched)
            score += HEADING_WEIGHT * sum(weights[t] for t in heading_only)
            # The chunk's own BM25 relevance breaks near-ties between sentences of different
            # sections ("offices" in the locations section beats "office" under parking).
            score *= 1.0 - CHUNK_PRIOR + CHUNK_PRIOR * min(1.0, hit.score / best_hit)
            coverage = sum(weights[t] for t in matched | in_heading[rank]) / total
            out.append(_Candidate(score, coverage, rank, position, sentence, hit))
        return out

    @staticmethod
    def _choose(candidates: list[_Candidate]) -> list[_Candidate]:
        """The best sentence plus up to two close runners-up, in reading order."""
        if not candidates:
            return []
        ordered = sorted(candidates, key=lambda c: (-c.score, c.rank, c.position))
        best = ordered[0]
        if best.coverage < MIN_COVERAGE:
            return []
        chosen: list[_Candidate] = []
        texts: set[str] = set()
        for cand in ordered:
            if cand.score < best.score * KEEP_RATIO or len(chosen) == MAX_SENTENCES:
                break
            if cand.text.lower() not in texts:
                texts.add(cand.text.lower())
                chosen.append(cand)
        # Reading order, grouped by document in the order the documents first rank.
        doc_rank: dict[str, int] = {}
        for cand in sorted(chosen, key=lambda c: c.rank):
            doc_rank.setdefault(cand.hit.document_id, cand.rank)
        return sorted(chosen, key=lambda c: (doc_rank[c.hit.document_id], c.rank, c.position))

    @staticmethod
    def _compose(chosen: list[_Candidate], numbers: dict[str, int]) -> str:
        """Sentences with one ``[[n]](link)`` after each run of sentences from one document."""
        parts: list[str] = []
        for i, cand in enumerate(chosen):
            doc = cand.hit.document_id
            number = numbers.setdefault(doc, len(numbers) + 1)
            sentence = _clip(cand.text, MAX_SENTENCE_CHARS)
            following = chosen[i + 1].hit.document_id if i + 1 < len(chosen) else None
            if following == doc:
                parts.append(sentence)
            else:
                link = cand.hit.link or ""
                parts.append(f"{sentence} [[{number}]]({link})")
        return " ".join(parts)

    @staticmethod
    def _source(number: int, hit: Hit, blurb: str) -> Source:
        return Source(
            number=number,
            document_id=hit.document_id,
            title=hit.title,
            link=hit.link,
            source_type=SOURCE_TYPE,
            updated_at=hit.updated_at,
            blurb=_clip(re.sub(r"\s+", " ", blurb).strip(), 200),
        )

    async def aclose(self) -> None:
        """Close the index (waits for an in-flight sync)."""
        async with self._sync_lock:
            await asyncio.to_thread(self.index.close)
