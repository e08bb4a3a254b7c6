"""Full-text search over an index's segment texts: PostgreSQL's text search (a GIN index over the
texts' stored tsvector, ranked by ts_rank) or SQLite's FTS5 (ranked by bm25). Every word of the query
must match (both engines stem English words); a higher ``score`` is a better match."""

from __future__ import annotations

import re

from sqlalchemy import text
from sqlalchemy.orm import Session

# text_search is the stored tsvector of the text (migration 0006), under a GIN index.
_POSTGRESQL = text(
    "SELECT s.id, s.external_id, s.start_s, s.end_s, s.text, s.thumbnail_key,"
    " ts_rank(s.text_search, query) AS score"
    " FROM index_segments AS s, plainto_tsquery('english', :q) AS query"
    " WHERE s.index_id = :index_id AND s.text_search @@ query"
    " ORDER BY score DESC, s.id LIMIT :limit"
)
_SQLITE = text(
    "SELECT s.id, s.external_id, s.start_s, s.end_s, s.text, s.thumbnail_key, -bm25(index_segments_fts) AS score"
    " FROM index_segments_fts JOIN index_segments AS s ON s.id = index_segments_fts.rowid"
    " WHERE index_segments_fts MATCH :q AND s.index_id = :index_id"
    " ORDER BY bm25(index_segments_fts), s.id LIMIT :limit"
)
_WORD = re.compile(r"\w+", re.UNICODE)


def fts5_query(query: str) -> str:
    """The words of a user's query as FTS5 phrases joined by AND: FTS5's own syntax (quotes,
    column filters, NEAR, …) never reaches the engine."""
    return " ".join(f'"{word}"' for word in _WORD.findall(query))


def search_segments(session: Session, index_id: str, query: str, *, limit: int) -> list[dict]:
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(_POSTGRESQL, {"q": query, "index_id": index_id, "limit": limit})
    else:
        match = fts5_query(query)
        if not match:
            return []
        rows = session.execute(_SQLITE, {"q": match, "index_id": index_id, "limit": limit})
    return [dict(row._mapping) for row in rows]
