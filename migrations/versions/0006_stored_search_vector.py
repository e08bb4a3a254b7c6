"""PostgreSQL search: a stored tsvector column with a GIN index instead of an expression index

Revision ID: 0006
Revises: 0005

Ranking (ts_rank_cd) needs each matching row's tsvector; with only an expression index PostgreSQL
parsed every matching text again per query (p99 of 146 ms over 100,000 segments in
bench/index_scale.py). A stored generated column is parsed once, when the caption is written.
SQLite searches its FTS5 table and is unchanged.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX IF EXISTS ix_index_segments_text_fts")
    op.execute(
        "ALTER TABLE index_segments ADD COLUMN text_search tsvector"
        " GENERATED ALWAYS AS (to_tsvector('english', coalesce(text, ''))) STORED"
    )
    op.execute("CREATE INDEX ix_index_segments_text_search ON index_segments USING gin (text_search)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX IF EXISTS ix_index_segments_text_search")
    op.execute("ALTER TABLE index_segments DROP COLUMN IF EXISTS text_search")
    op.execute(
        "CREATE INDEX ix_index_segments_text_fts ON index_segments USING gin (to_tsvector('english', coalesce(text, '')))"
    )
