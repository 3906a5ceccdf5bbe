"""A folder of Markdown/text documents indexed in SQLite FTS5 (BM25), section by section.

Why FTS5: it ships with Python's sqlite3, ranks with BM25, stems with Porter, and needs no server
— the right retrieval for the embedded default and for tests. The index is a cache of the folder:
incremental (only files whose mtime/size and then content hash changed are re-read, removed ones
are dropped), rebuilt from scratch when its layout version or corpus folder changes or the file
is corrupt. Several worker processes may share one index file: WAL mode plus ``BEGIN IMMEDIATE``
serialise their syncs. Calls are blocking; callers run them in a worker thread.

User text never reaches FTS5's query syntax: every term is a quoted string, so quotes, ``*``,
``-``, ``NEAR``, ``AND``/``OR`` and parentheses are just words (or nothing).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIXES = frozenset({".md", ".markdown", ".txt"})
MAX_CHUNK = 1200
MAX_QUERY_TERMS = 32
SCHEMA_VERSION = "2"
TOKENIZER = "porter unicode61 remove_diacritics 2"
# bm25() column weights for (title, section, body): a match in a heading says more.
BM25_WEIGHTS = (4.0, 2.0, 1.0)

STOP_WORDS = frozenset(
    """a about above after again all also am an and any are as at be been before being below
    between both but by can could did do does doing down during each else few for from further
    get gets got had has have having he her here hers him his how i i'm if im in into is it it's
    its just me more most much my no nor not now of off on once only or other our ours out over
    own please same she should so some such tell than thank thanks that the their theirs them
    then there these they this those through to too under until up us very was we were what
    when where which while who whom why will with would you your yours
    hi hey hello ok okay quick question questions know want need like many lot lots
    anyone somebody someone something thing things""".split()
)
_TOKEN = re.compile(r"\w+", re.UNICODE)
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_META_LINE = re.compile(r"^([A-Za-z][\w-]*)\s*:\s*(.*?)\s*$")
_META_KEYS = frozenset({"link", "url", "title", "tags"})
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Plain statements, not executescript(): that would COMMIT our BEGIN IMMEDIATE half-way.
_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE docs (
        id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, mtime_ns INTEGER NOT NULL,
        size INTEGER NOT NULL, sha256 TEXT NOT NULL, title TEXT NOT NULL, link TEXT,
        docset TEXT NOT NULL, updated TEXT NOT NULL, tags TEXT NOT NULL DEFAULT '[]')""",
    """CREATE TABLE chunks (
        id INTEGER PRIMARY KEY,
        doc_id INTEGER NOT NULL REFERENCES docs(id) ON DELETE CASCADE,
        ord INTEGER NOT NULL)""",
    "CREATE INDEX chunks_doc ON chunks(doc_id)",
    "CREATE VIRTUAL TABLE chunk_text USING fts5(title, section, body, tokenize='{tokenizer}')",
)


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk; ``score`` is the positive BM25 relevance (higher is better)."""

    chunk_id: int
    document_id: str
    title: str
    section: str
    body: str
    link: str | None
    updated_at: datetime | None
    document_set: str
    score: float


@dataclass(frozen=True)
class SearchFilters:
    """Restrictions on which documents may be returned; empty means no restriction."""

    document_sets: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    updated_since: datetime | None = None


@dataclass
class SyncReport:
    """What one :meth:`DocumentIndex.sync` changed."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: list[str] = field(default_factory=list)

    @property
    def files(self) -> int:
        return self.added + self.changed + self.unchanged


@dataclass(frozen=True)
class ParsedDocument:
    """A document split into searchable chunks, with its metadata."""

    title: str
    link: str | None
    tags: tuple[str, ...]
    chunks: tuple[tuple[str, str], ...]  # (section heading, body)


def query_terms(text: str, *, limit: int = MAX_QUERY_TERMS) -> list[str]:
    """Search terms from free text: lower-cased words minus stop words, first ``limit`` kept."""
    seen: dict[str, None] = {}
    for token in _TOKEN.findall(text.lower()):
        token = token.strip("_")
        if not token or token in STOP_WORDS or (len(token) == 1 and not token.isdigit()):
            continue
        seen.setdefault(token, None)
        if len(seen) >= limit:
            break
    return list(seen)


def fts_phrase(term: str) -> str:
    """``term`` as an FTS5 string literal: always a plain term, never an operator."""
    return '"' + term.replace('"', '""') + '"'


def match_expression(terms: Iterable[str]) -> str:
    """OR of quoted terms: any term may match, BM25 ranks documents matching more of them."""
    return " OR ".join(fts_phrase(t) for t in terms)


def split_sentences(text: str) -> list[str]:
    """Sentences and list items of a chunk body, markdown list markers removed."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n|\n(?=\s*(?:[-*+]|\d+[.)])\s)", text):
        block = re.sub(r"^\s*(?:[-*+]|\d+[.)])\s+", "", block.strip())
        block = re.sub(r"\s+", " ", block)
        out.extend(s.strip() for s in _SENTENCE_END.split(block) if s.strip())
    return out


def _front_matter(lines: list[str]) -> tuple[dict[str, str], int]:
    """Leading ``key: value`` metadata (bare lines or a ``---`` block) and where the text starts."""
    meta: dict[str, str] = {}
    if lines and lines[0].strip() == "---":
        for end in range(1, min(len(lines), 200)):
            if lines[end].strip() in ("---", "..."):
                for line in lines[1:end]:
                    if m := _META_LINE.match(line):
                        meta[m.group(1).lower()] = m.group(2).strip("'\"")
                return meta, end + 1
        return {}, 0
    start = 0
    while start < len(lines):
        m = _META_LINE.match(lines[start])
        if not m or m.group(1).lower() not in _META_KEYS:
            break
        meta[m.group(1).lower()] = m.group(2).strip("'\"")
        start += 1
    return meta, start


def _split_long(paragraph: str) -> list[str]:
    """A paragraph longer than MAX_CHUNK cut at sentence (else word) boundaries."""
    pieces: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(paragraph):
        while len(sentence) > MAX_CHUNK:
            cut = sentence.rfind(" ", 0, MAX_CHUNK)
            cut = cut if cut > MAX_CHUNK // 2 else MAX_CHUNK
            if current:
                pieces.append(current)
                current = ""
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if current and len(current) + 1 + len(sentence) > MAX_CHUNK:
            pieces.append(current)
            current = ""
        current = f"{current} {sentence}".strip()
    if current:
        pieces.append(current)
    return pieces


def _pack(heading: str, body: str) -> list[tuple[str, str]]:
    """Paragraphs of one section packed into chunks of at most MAX_CHUNK characters."""
    out: list[tuple[str, str]] = []
    current = ""
    for para in re.split(r"\n\s*\n", body):
        para = para.strip()
        if not para:
            continue
        parts = _split_long(para) if len(para) > MAX_CHUNK else [para]
        for part in parts:
            if current and len(current) + 2 + len(part) > MAX_CHUNK:
                out.append((heading, current))
                current = ""
            current = f"{current}\n\n{part}" if current else part
    if current:
        out.append((heading, current))
    return out


def parse_document(text: str, fallback_title: str) -> ParsedDocument:
    """Title, link, tags and (heading, body) chunks of one Markdown or plain-text document."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    meta, start = _front_matter(lines)
    title = meta.get("title") or ""
    sections: list[tuple[str, list[str]]] = [("", [])]
    in_fence = False
    for line in lines[start:]:
        if _FENCE.match(line):
            in_fence = not in_fence
        heading = None if in_fence else _HEADING.match(line)
        if heading:
            text_ = heading.group(2).strip()
            if not title and heading.group(1) == "#":
                title = text_
            sections.append((text_, []))
        else:
            sections[-1][1].append(line)
    chunks: list[tuple[str, str]] = []
    for heading, body_lines in sections:
        chunks.extend(_pack(heading, "\n".join(body_lines).strip()))
    tags = tuple(
        t.strip().lower() for t in meta.get("tags", "").strip("[]").split(",") if t.strip()
    )
    link = meta.get("link") or meta.get("url") or None
    return ParsedDocument(title or fallback_title, link, tags, tuple(chunks))


def _fallback_title(rel: str) -> str:
    stem = Path(rel).stem.replace("-", " ").replace("_", " ").strip()
    return stem[:1].upper() + stem[1:] if stem else rel


class DocumentIndex:
    """The FTS5 index of one corpus folder, stored in ``index_path``.

    Thread-safe: one connection guarded by a lock (searches take milliseconds, so serialising
    them costs less than a connection per thread).
    """

    def __init__(self, corpus_dir: Path, index_path: Path) -> None:
        self.corpus_dir = Path(corpus_dir).resolve()
        self.index_path = Path(index_path)
        self._lock = threading.Lock()
        self.index_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):  # locked, disk full...: not corruption
                raise
            # The index is only a cache of the folder: a corrupt file is rebuilt, not fatal.
            log.warning("answer index %s unreadable (%s); rebuilding", self.index_path, exc)
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{self.index_path}{suffix}").unlink(missing_ok=True)
            self._db = self._open()
        self._scratch = sqlite3.connect(":memory:", check_same_thread=False)
        self._scratch.execute(f"CREATE VIRTUAL TABLE s USING fts5(t, tokenize='{TOKENIZER}')")

    # --- schema ----------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.index_path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("BEGIN IMMEDIATE")
            try:
                self._ensure_schema(db)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except BaseException:
            db.close()
            raise
        return db

    def _ensure_schema(self, db: sqlite3.Connection) -> None:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = root = None
        if "meta" in tables:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            version, root = meta.get("schema_version"), meta.get("corpus_root")
        if version != SCHEMA_VERSION:
            for name in ("chunk_text", "chunks", "docs", "meta", "files"):
                db.execute(f"DROP TABLE IF EXISTS {name}")
            for statement in _SCHEMA:
                db.execute(statement.format(tokenizer=TOKENIZER))
            db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        if root != str(self.corpus_dir):
            self._clear(db)
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('corpus_root', ?)", (str(self.corpus_dir),)
            )

    @staticmethod
    def _clear(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM chunk_text")
        db.execute("DELETE FROM chunks")
        db.execute("DELETE FROM docs")

    # --- indexing --------------------------------------------------------------------------
    def _scan(self) -> dict[str, Path]:
        """Indexable files by corpus-relative POSIX path; hidden files and folders skipped."""
        found: dict[str, Path] = {}
        if not self.corpus_dir.is_dir():
            return found
        for path in self.corpus_dir.rglob("*"):
            rel = path.relative_to(self.corpus_dir)
            if any(part.startswith(".") for part in rel.parts):
                continue
            if path.suffix.lower() in SUFFIXES and path.is_file():
                found[rel.as_posix()] = path
        return dict(sorted(found.items()))

    def sync(self) -> SyncReport:
        """Bring the index up to date with the folder."""
        report = SyncReport()
        present = self._scan()
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")  # one syncing process at a time
            try:
                known = {
                    row[0]: row[1:]
                    for row in db.execute("SELECT path, id, mtime_ns, size, sha256 FROM docs")
                }
                for rel in sorted(set(known) - set(present)):
                    self._delete_doc(db, known[rel][0])
                    report.removed += 1
                for rel, path in present.items():
                    self._sync_file(db, rel, path, known.get(rel), report)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        if report.added or report.changed or report.removed or report.failed:
            log.info(
                "answer index synced: %d added, %d changed, %d removed, %d failed",
                report.added, report.changed, report.removed, len(report.failed),
            )  # fmt: skip
        return report

    def _sync_file(
        self,
        db: sqlite3.Connection,
        rel: str,
        path: Path,
        old: tuple[int, int, int, str] | None,
        report: SyncReport,
    ) -> None:
        try:
            stat = path.stat()
            if old and old[1] == stat.st_mtime_ns and old[2] == stat.st_size:
                report.unchanged += 1
                return
            raw = path.read_bytes()
        except OSError as exc:  # vanished or unreadable since the scan: keep what we had
            log.warning("answer index: cannot read %s: %s", rel, exc)
            report.failed.append(rel)
            return
        sha = hashlib.sha256(raw).hexdigest()
        if old and old[3] == sha:  # touched, not changed
            db.execute(
                "UPDATE docs SET mtime_ns = ?, size = ? WHERE id = ?",
                (stat.st_mtime_ns, stat.st_size, old[0]),
            )
            report.unchanged += 1
            return
        if old:
            self._delete_doc(db, old[0])
        doc = parse_document(raw.decode("utf-8-sig", "replace"), _fallback_title(rel))
        updated = datetime.fromtimestamp(stat.st_mtime, UTC).isoformat()
        link = doc.link or (self.corpus_dir / rel).as_uri()
        docset = rel.split("/", 1)[0] if "/" in rel else ""
        cur = db.execute(
            "INSERT INTO docs (path, mtime_ns, size, sha256, title, link, docset, updated, tags)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rel, stat.st_mtime_ns, stat.st_size, sha, doc.title, link, docset, updated,
                json.dumps(list(doc.tags)),
            ),
        )  # fmt: skip
        doc_id = cur.lastrowid
        for order, (section, body) in enumerate(doc.chunks):
            chunk = db.execute("INSERT INTO chunks (doc_id, ord) VALUES (?, ?)", (doc_id, order))
            db.execute(
                "INSERT INTO chunk_text (rowid, title, section, body) VALUES (?, ?, ?, ?)",
                (chunk.lastrowid, doc.title, section, body),
            )
        if old:
            report.changed += 1
        else:
            report.added += 1

    @staticmethod
    def _delete_doc(db: sqlite3.Connection, doc_id: int) -> None:
        db.execute(
            "DELETE FROM chunk_text WHERE rowid IN (SELECT id FROM chunks WHERE doc_id = ?)",
            (doc_id,),
        )
        db.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))
        db.execute("DELETE FROM docs WHERE id = ?", (doc_id,))

    # --- querying --------------------------------------------------------------------------
    def search(
        self, terms: Sequence[str], *, limit: int = 5, filters: SearchFilters | None = None
    ) -> list[Hit]:
        """The ``limit`` best chunks matching any of ``terms``, best first (BM25)."""
        if not terms or limit <= 0:
            return []
        filters = filters or SearchFilters()
        sql = (
            "SELECT c.id, d.path, d.title, f.section, f.body, d.link, d.updated, d.docset, "
            "bm25(chunk_text, ?, ?, ?) AS score "
            "FROM chunk_text f JOIN chunks c ON c.id = f.rowid JOIN docs d ON d.id = c.doc_id "
            "WHERE chunk_text MATCH ?"
        )
        params: list[object] = [*BM25_WEIGHTS, match_expression(terms)]
        if filters.document_sets:
            sql += f" AND d.docset IN ({','.join('?' * len(filters.document_sets))})"
            params += list(filters.document_sets)
        if filters.tags:
            sql += (
                " AND EXISTS (SELECT 1 FROM json_each(d.tags) WHERE value IN "
                f"({','.join('?' * len(filters.tags))}))"
            )
            params += [t.lower() for t in filters.tags]
        if filters.updated_since is not None:
            since = filters.updated_since
            since = since if since.tzinfo else since.replace(tzinfo=UTC)
            sql += " AND d.updated >= ?"
            params.append(since.astimezone(UTC).isoformat())
        sql += " ORDER BY score, c.id LIMIT ?"
        params.append(limit)
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [
            Hit(
                chunk_id=row[0],
                document_id=row[1],
                title=row[2],
                section=row[3],
                body=row[4],
                link=row[5],
                updated_at=datetime.fromisoformat(row[6]) if row[6] else None,
                document_set=row[7],
                score=-float(row[8]),
            )
            for row in rows
        ]

    def term_weights(self, terms: Sequence[str]) -> dict[str, float]:
        """BM25-style IDF of each term over all chunks: rare words decide what a question is about.

        A term found nowhere weighs as much as the rarest term found, so a question about
        something the corpus does not cover is not "answered" by its common words alone.
        """
        with self._lock:
            total = self._db.execute("SELECT count(*) FROM chunks").fetchone()[0]
            weights: dict[str, float | None] = {}
            for term in terms:
                df = self._db.execute(
                    "SELECT count(*) FROM chunk_text WHERE chunk_text MATCH ?", (fts_phrase(term),)
                ).fetchone()[0]
                weights[term] = math.log(1.0 + (total - df + 0.5) / (df + 0.5)) if df else None
        known = [w for w in weights.values() if w is not None]
        # An unknown word weighs as much as the rarest known one: enough to stop a question
        # about something else being "answered" by one shared word, without letting one typo
        # outweigh everything the question does share with the corpus.
        ceiling = max(known, default=1.0)
        return {t: ceiling if w is None else w for t, w in weights.items()}

    def terms_in(self, texts: Sequence[str], terms: Sequence[str]) -> list[set[str]]:
        """Which of ``terms`` each text contains, with the index's own stemming and folding."""
        found: list[set[str]] = [set() for _ in texts]
        if not texts or not terms:
            return found
        with self._lock:
            db = self._scratch
            db.execute("DELETE FROM s")
            db.executemany("INSERT INTO s (rowid, t) VALUES (?, ?)", enumerate(texts))
            for term in terms:
                for (rowid,) in db.execute(
                    "SELECT rowid FROM s WHERE s MATCH ?", (fts_phrase(term),)
                ):
                    found[rowid].add(term)
        return found

    def document_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM docs").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._scratch.close()
