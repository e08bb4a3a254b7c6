"""Prometheus metrics of every process role (``series``), and how they are served (``exposition``).

prometheus-client runs in multiprocess mode everywhere: Celery's prefork pool and uvicorn's worker
processes each write their samples to files in one directory, and whoever serves ``/metrics`` reads
them all. The directory must be chosen before prometheus-client is first imported, so the package
does it on import: any ``shared.metrics`` module imported first is early enough.
"""

from shared.metrics.multiprocess import ensure_multiprocess_dir

ensure_multiprocess_dir()
