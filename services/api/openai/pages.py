"""OpenAI's cursor pages (files, batches): newest first, the next page ``after`` the last id."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session


def newest_first(session: Session, query: Select, id_column: InstrumentedAttribute, *, limit: int,
                 after: str | None) -> tuple[list[Any], bool]:
    """A page of ``query``'s rows by descending id (ids sort by creation time) and whether more follow."""
    if after:
        query = query.where(id_column < after)
    rows = list(session.scalars(query.order_by(id_column.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """OpenAI's list object, which its client follows with ``after=last_id``."""
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}
