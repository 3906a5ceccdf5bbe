"""A folder of Markdown/text documents indexed in SQLite FTS5 (BM25), section by section.

Why FTS5: it ships with Python's sqlite3, ranks with BM25, stems with Porter, and needs no server
— the right retrieval for the embedded default and tests. Indexing is incremental (only changed
files are re-read) and every call runs in a worker thread so the event loop never blocks.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SUFFIXES = {".md", ".markdown", ".txt"}
MAX_CHUNK = 1200
STOP_WORDS = frozenset(
    """a an and are as at be by can do does for from get has have how i if in is it its me my
    of on or our so that the their them then there these they this to was we what when where
    which who why will with you your about into any i'm im much many""".split()
)
_TOKEN = re.compile(r"\w+", re.UNICODE)
_FRONT = re.compile(r"^(?:link|url):\s*(\S+)\s*$", re.I | re.M)


@dataclass(frozen=True)
class Hit:
    document_id: str
    title: str
    section: str
    body: str
    link: str | None
    updated_at: datetime | None
    document_set: str
    score: float


def query_terms(text: str) -> list[str]:
    """Search terms from free text: words minus stop words, never FTS5 syntax."""
    seen: dict[str, None] = {}
    for token in _TOKEN.findall(text.lower()):
        if token not in STOP_WORDS and (len(token) > 1 or token.isdigit()):
            seen.setdefault(token, None)
    return list(seen)


def _chunks(text: str) -> list[tuple[str, str]]:
    """(section heading, body) pieces, split on headings and then on paragraphs."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    for line in text.splitlines():
        heading = re.match(r"^#{1,6}\s+(.*)", line)
        if heading:
            sections.append((heading.group(1).strip(), []))
        else:
            sections[-1][1].append(line)
    out: list[tuple[str, str]] = []
    for heading, lines in sections:
        body = "\n".join(lines).strip()
        if not body:
            continue
        piece = ""
        for para in re.split(r"\n\s*\n", body):
            if piece and len(piece) + len(para) > MAX_CHUNK:
                out.append((heading, piece.strip()))
                piece = ""
            piece += para + "\n\n"
        if piece.strip():
            out.append((heading, piece.strip()))
    return out


class DocumentIndex:
    """The FTS5 index of one corpus folder, stored in ``index_path``."""

    def __init__(self, corpus_dir: Path, index_path: Path) -> None:
        self.corpus_dir = Path(corpus_dir)
        self.index_path = Path(index_path)
        self._lock = threading.Lock()
        self.index_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.index_path, check_same_thread=False)
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS files (
                path TEXT PRIMARY KEY, mtime REAL, size INTEGER, sha TEXT);
            CREATE VIRTUAL TABLE IF NOT EXISTS chunks USING fts5(
                path UNINDEXED, title, section, body, link UNINDEXED, updated UNINDEXED,
                docset UNINDEXED, tokenize='porter unicode61 remove_diacritics 2');
            """
        )

    def sync(self) -> dict[str, int]:
        """Bring the index up to date with the folder; returns counts of what changed."""
        with self._lock:
            return self._sync()

    def _sync(self) -> dict[str, int]:
        known = {
            row[0]: row[1:] for row in self._db.execute("SELECT path, mtime, size, sha FROM files")
        }
        present = {}
        for path in sorted(self.corpus_dir.rglob("*")):
            if path.is_file() and path.suffix.lower() in SUFFIXES:
                present[path.relative_to(self.corpus_dir).as_posix()] = path
        changed = added = removed = 0
        with self._db:
            for rel in set(known) - set(present):
                self._db.execute("DELETE FROM chunks WHERE path = ?", (rel,))
                self._db.execute("DELETE FROM files WHERE path = ?", (rel,))
                removed += 1
            for rel, path in present.items():
                stat = path.stat()
                old = known.get(rel)
                if old and old[0] == stat.st_mtime and old[1] == stat.st_size:
                    continue
                raw = path.read_bytes()
                sha = hashlib.sha256(raw).hexdigest()
                if old and old[2] == sha:
                    self._db.execute(
                        "UPDATE files SET mtime = ?, size = ? WHERE path = ?",
                        (stat.st_mtime, stat.st_size, rel),
                    )
                    continue
                self._index_file(rel, raw.decode("utf-8", "replace"), stat.st_mtime)
                self._db.execute(
                    "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                    (rel, stat.st_mtime, stat.st_size, sha),
                )
                changed += bool(old)
                added += not old
        return {"added": added, "changed": changed, "removed": removed, "files": len(present)}

    def _index_file(self, rel: str, text: str, mtime: float) -> None:
        self._db.execute("DELETE FROM chunks WHERE path = ?", (rel,))
        title_match = re.search(r"^#\s+(.+)$", text, re.M)
        title = title_match.group(1).strip() if title_match else Path(rel).stem.replace("-", " ")
        link_match = _FRONT.search(text[:500])
        link = link_match.group(1) if link_match else (self.corpus_dir / rel).resolve().as_uri()
        docset = rel.split("/", 1)[0] if "/" in rel else ""
        updated = datetime.fromtimestamp(mtime, UTC).isoformat()
        for section, body in _chunks(_FRONT.sub("", text)):
            if section == title and not body:
                continue
            self._db.execute(
                "INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)",
                (rel, title, section, body, link, updated, docset),
            )

    def search(
        self, text: str, *, limit: int = 5, document_sets: tuple[str, ...] = ()
    ) -> list[Hit]:
        terms = query_terms(text)
        if not terms:
            return []
        match = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
        sql = (
            "SELECT path, title, section, body, link, updated, docset, "
            "bm25(chunks, 0, 4.0, 2.0, 1.0) AS score FROM chunks WHERE chunks MATCH ?"
        )
        params: list[object] = [match]
        if document_sets:
            sql += f" AND docset IN ({','.join('?' * len(document_sets))})"
            params += list(document_sets)
        sql += " ORDER BY score LIMIT ?"
        params.append(limit)
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [
            Hit(
                document_id=row[0],
                title=row[1],
                section=row[2],
                body=row[3],
                link=row[4],
                updated_at=datetime.fromisoformat(row[5]) if row[5] else None,
                document_set=row[6],
                score=-float(row[7]),
            )
            for row in rows
        ]

    def close(self) -> None:
        with self._lock:
            self._db.close()
