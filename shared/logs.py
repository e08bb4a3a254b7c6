"""Logging of every process role: one JSON object per line (``VLMQ_LOG_FORMAT=json``, the default)
or plain text, and the id of the job a line is about in its ``job_id`` field.

The job id comes from ``about_job`` (a context variable, so each thread and task sees its own) or
from ``extra={"job_id": …}`` where a line names a job outside one.
"""

from __future__ import annotations

import logging
import logging.config
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from shared.config.settings import CommonSettings

_current_job: ContextVar[str | None] = ContextVar("vlmq_job_id", default=None)

# Libraries that log every request at INFO; their warnings still come through.
QUIET_LIBRARIES = ("httpx", "httpcore", "botocore", "boto3", "urllib3", "s3transfer")


@contextmanager
def about_job(job_id: str) -> Iterator[None]:
    """Every line logged inside (in this thread or task) carries ``job_id``."""
    token = _current_job.set(job_id)
    try:
        yield
    finally:
        _current_job.reset(token)


class JobIdFilter(logging.Filter):
    def __init__(self, role: str = ""):
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None and _current_job.get() is not None:
            record.job_id = _current_job.get()
        record.role = self.role
        record.__dict__.pop("color_message", None)  # uvicorn's ANSI-coloured copy of the message
        return True


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return f"{line} [job_id={record.job_id}]" if getattr(record, "job_id", None) else line


def logging_config(settings: CommonSettings, *, role: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` document: uvicorn takes it as ``log_config`` (and applies it
    in each of its worker processes), Celery workers apply it from their ``setup_logging`` signal."""
    if settings.log_format == "json":
        formatter = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            # job_id is an extra field: present on the lines about a job, absent on the others.
            "fmt": "{levelname}{name}{processName}{role}{message}",
            "style": "{",
            "timestamp": "time",  # ISO 8601, UTC
            "rename_fields": {"levelname": "level", "name": "logger", "processName": "process"},
        }
    else:
        formatter = {"()": TextFormatter, "fmt": "%(asctime)s %(levelname)s %(processName)s %(name)s %(message)s"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"job_id": {"()": JobIdFilter, "role": role}},
        "formatters": {"vlmq": formatter},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "vlmq", "filters": ["job_id"],
                       "stream": "ext://sys.stderr"},
        },
        "root": {"level": settings.log_level.upper(), "handlers": ["stderr"]},
        "loggers": {
            # uvicorn's and Celery's own lines go through the same handler, in the same format.
            **{name: {"handlers": [], "propagate": True} for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
            **{name: {"level": "WARNING"} for name in QUIET_LIBRARIES},
        },
    }


def configure_logging(settings: CommonSettings, *, role: str) -> None:
    logging.config.dictConfig(logging_config(settings, role=role))
