"""The local answer backend: extractive answers with real citations from a folder of documents.

It stands in for Onyx in the embedded default and in tests: retrieve sections by BM25, pick the
sentences that best cover the question, and cite the documents they came from as ``[[n]](link)``
— the same convention Onyx uses, so the rest of the pipeline cannot tell the difference. When
nothing relevant is found it says so, without citations, rather than inventing an answer.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from answers.index import DocumentIndex, Hit, query_terms
from answers.model import Answer, Source, Turn

NO_ANSWER = "I couldn't find that in the documents I can search."
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_ANAPHORA = {"it", "that", "this", "them", "those", "they", "there", "one", "these"}
MIN_SCORE = 0.5


def default_corpus_dir() -> Path:
    """The sample corpus shipped with the package."""
    return Path(__file__).resolve().parent / "corpus"


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


class LocalAnswerBackend:
    """AnswerBackend over a DocumentIndex; deterministic for a given corpus."""

    def __init__(self, corpus_dir: Path, index_path: Path, *, top_k: int = 5) -> None:
        self.index = DocumentIndex(corpus_dir, index_path)
        self.top_k = top_k
        self._synced = False
        self._sync_lock = asyncio.Lock()

    async def _ensure_synced(self) -> None:
        if self._synced:
            return
        async with self._sync_lock:
            if not self._synced:
                await asyncio.to_thread(self.index.sync)
                self._synced = True

    async def refresh(self) -> dict[str, int]:
        """Re-scan the folder (picks up edited, added and removed documents)."""
        counts = await asyncio.to_thread(self.index.sync)
        self._synced = True
        return counts

    def _query(self, question: str, history: Sequence[Turn]) -> str:
        """The question, plus the previous user turn's terms for short anaphoric follow-ups."""
        words = set(re.findall(r"\w+", question.lower()))
        if history and (len(query_terms(question)) <= 3 or words & _ANAPHORA):
            previous = [t.text for t in history if t.role == "user"]
            if previous:
                return f"{question} {previous[-1]}"
        return question

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
        started = time.perf_counter()
        await self._ensure_synced()
        query = self._query(question, history)
        hits = await asyncio.to_thread(
            self.index.search, query, limit=self.top_k, document_sets=tuple(document_sets)
        )
        hits = [h for h in hits if h.score >= MIN_SCORE]
        text, sources = self._compose(question, query, hits)
        top = [self._source(i + 1, h) for i, h in enumerate(self._unique_docs(hits))]
        return Answer(
            text=text,
            sources=sources,
            top_documents=top,
            chat_session_id=session_id or f"local-{abs(hash(question)) % 10**8}",
            latency_ms=int((time.perf_counter() - started) * 1000),
        )

    @staticmethod
    def _unique_docs(hits: list[Hit]) -> list[Hit]:
        seen: dict[str, Hit] = {}
        for hit in hits:
            seen.setdefault(hit.document_id, hit)
        return list(seen.values())

    @staticmethod
    def _source(number: int, hit: Hit) -> Source:
        return Source(
            number=number,
            document_id=hit.document_id,
            title=hit.title,
            link=hit.link,
            source_type="file",
            updated_at=hit.updated_at,
            blurb=hit.body[:200],
        )

    def _compose(self, question: str, query: str, hits: list[Hit]) -> tuple[str, list[Source]]:
        if not hits:
            return NO_ANSWER, []
        terms = {_stem(t) for t in query_terms(question)} or {_stem(t) for t in query_terms(query)}
        scored: list[tuple[float, int, int, str, Hit]] = []
        for rank, hit in enumerate(hits[:3]):
            section_terms = {_stem(t) for t in query_terms(hit.section)}
            for pos, sentence in enumerate(_SENTENCE.split(hit.body.replace("\n", " "))):
                words = {_stem(t) for t in query_terms(sentence)}
                overlap = len(terms & (words | section_terms))
                if overlap:
                    # earlier hits and earlier sentences win ties: deterministic
                    scored.append((overlap - rank * 0.5, -rank, -pos, sentence.strip(), hit))
        if not scored:
            return NO_ANSWER, []
        scored.sort(key=lambda s: (s[0], s[1], s[2]), reverse=True)
        best = scored[0][0]
        chosen = [s for s in scored if s[0] >= best - 1][:3]
        chosen.sort(key=lambda s: (-s[1], -s[2]))  # reading order
        numbers: dict[str, int] = {}
        sources: list[Source] = []
        parts: list[str] = []
        for i, (_, _, _, sentence, hit) in enumerate(chosen):
            if hit.document_id not in numbers:
                numbers[hit.document_id] = len(numbers) + 1
                sources.append(self._source(numbers[hit.document_id], hit))
            following = chosen[i + 1][4].document_id if i + 1 < len(chosen) else None
            if following == hit.document_id:
                parts.append(sentence)  # cite once, after the last sentence from this document
            else:
                parts.append(f"{sentence} [[{numbers[hit.document_id]}]]({hit.link})")
        return " ".join(parts), sources

    async def aclose(self) -> None:
        await asyncio.to_thread(self.index.close)
