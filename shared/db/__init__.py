"""Database engine, sessions and ORM models (PostgreSQL in production, SQLite embedded)."""

from shared.db.engine import get_engine, get_sessionmaker, session_scope
from shared.db.models import ApiKey, Base, Job, JobResult, Media, Tenant, Upload

__all__ = [
    "ApiKey",
    "Base",
    "Job",
    "JobResult",
    "Media",
    "Tenant",
    "Upload",
    "get_engine",
    "get_sessionmaker",
    "session_scope",
]
