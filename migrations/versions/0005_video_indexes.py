"""video indexes, their videos and segments, with full-text search

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIME = sa.DateTime(timezone=True)

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite: an FTS5 table over the segment texts, kept in step by triggers (external content).
_SQLITE_FTS = [
    "CREATE VIRTUAL TABLE index_segments_fts USING fts5(text, content='index_segments', content_rowid='id',"
    " tokenize='porter unicode61')",
    "CREATE TRIGGER index_segments_fts_insert AFTER INSERT ON index_segments BEGIN"
    " INSERT INTO index_segments_fts(rowid, text) VALUES (new.id, coalesce(new.text, '')); END",
    "CREATE TRIGGER index_segments_fts_delete AFTER DELETE ON index_segments BEGIN"
    " INSERT INTO index_segments_fts(index_segments_fts, rowid, text) VALUES ('delete', old.id, coalesce(old.text, ''));"
    " END",
    "CREATE TRIGGER index_segments_fts_update AFTER UPDATE OF text ON index_segments BEGIN"
    " INSERT INTO index_segments_fts(index_segments_fts, rowid, text) VALUES ('delete', old.id, coalesce(old.text, ''));"
    " INSERT INTO index_segments_fts(rowid, text) VALUES (new.id, coalesce(new.text, '')); END",
]
# PostgreSQL: an expression GIN index; shared.indexes.search queries the very same expression.
_POSTGRESQL_FTS = (
    "CREATE INDEX ix_index_segments_text_fts ON index_segments"
    " USING gin (to_tsvector('english', coalesce(text, '')))"
)


def upgrade() -> None:
    op.create_table(
        "video_indexes",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(64), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("segment_s", sa.Float(), nullable=False),
        sa.Column("frames_per_segment", sa.Integer(), nullable=False),
        sa.Column("max_new_tokens", sa.Integer(), nullable=False),
        sa.Column("webhook", JSON_TYPE, nullable=True),
        sa.Column("metadata", JSON_TYPE, nullable=False),
        sa.Column("videos_total", sa.Integer(), nullable=False),
        sa.Column("videos_done", sa.Integer(), nullable=False),
        sa.Column("videos_failed", sa.Integer(), nullable=False),
        sa.Column("segments_done", sa.Integer(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("started_at", TIME, nullable=True),
        sa.Column("finished_at", TIME, nullable=True),
    )
    op.create_index("ix_video_indexes_tenant_id_id", "video_indexes", ["tenant_id", "id"])
    op.create_table(
        "index_videos",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("index_id", sa.String(40), sa.ForeignKey("video_indexes.id", ondelete="CASCADE"), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(512), nullable=False),
        sa.Column("source", JSON_TYPE, nullable=False),
        sa.Column("object_key", sa.String(512), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", JSON_TYPE, nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("segments_total", sa.Integer(), nullable=True),
        sa.Column("segments_done", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_expires_at", TIME, nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("finished_at", TIME, nullable=True),
    )
    op.create_index("ix_index_videos_index_id_position", "index_videos", ["index_id", "position"])
    op.create_index("ix_index_videos_status_lease_expires_at", "index_videos", ["status", "lease_expires_at"])
    op.create_table(
        "index_segments",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("index_id", sa.String(40), sa.ForeignKey("video_indexes.id", ondelete="CASCADE"), nullable=False),
        sa.Column("video_id", sa.String(40), sa.ForeignKey("index_videos.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(512), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("start_s", sa.Float(), nullable=False),
        sa.Column("end_s", sa.Float(), nullable=False),
        sa.Column("frames", JSON_TYPE, nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("thumbnail_key", sa.String(512), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
    )
    op.create_index("ux_index_segments_video_id_seq", "index_segments", ["video_id", "seq"], unique=True)
    op.create_index("ix_index_segments_index_id_position_seq", "index_segments", ["index_id", "position", "seq"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_POSTGRESQL_FTS)
    else:
        for statement in _SQLITE_FTS:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_index_segments_text_fts")
    else:
        for name in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS index_segments_fts_{name}")
        op.execute("DROP TABLE IF EXISTS index_segments_fts")
    op.drop_table("index_segments")
    op.drop_table("index_videos")
    op.drop_table("video_indexes")
