"""Where the processes of one pod or host write their samples.

prometheus-client decides once, when it is first imported, whether values live in memory or in
files under ``PROMETHEUS_MULTIPROC_DIR``; so this runs before any ``import prometheus_client``
(``shared.metrics.series`` calls it first). The first process of a process tree (the API's server,
a Celery worker's main process) picks the directory and hands it down through the environment; its
forked or spawned children only find it set.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def ensure_multiprocess_dir() -> Path:
    """The directory in use, choosing it if this is the first process of its tree.

    A configured ``VLMQ_METRICS_DIR`` is emptied when chosen: files of a previous run (a restarted
    container keeps its volume) would otherwise be summed into this run's counters.
    """
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    configured = os.environ.get("VLMQ_METRICS_DIR")
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
    else:
        directory = Path(tempfile.mkdtemp(prefix="vlmq-metrics-"))
        atexit.register(_remove_if_creator, directory, os.getpid())
    os.environ[ENV] = str(directory)
    return directory


def start_process_tree() -> Path:
    """For a process role's entry point (the API server, a Celery worker's main process): a
    directory of its own, even if whoever started it had one (a supervisor, a test runner) and
    passed it down. Metric values are created on first use, so this is early enough as long as no
    sample was recorded yet."""
    os.environ.pop(ENV, None)
    return ensure_multiprocess_dir()


def _remove_if_creator(directory: Path, creator_pid: int) -> None:
    """Forked children inherit atexit hooks: only the process that made the directory removes it."""
    if os.getpid() == creator_pid:
        shutil.rmtree(directory, ignore_errors=True)


def forget_process(pid: int | None = None) -> None:
    """A pool process is exiting: its live gauges (GPU memory) stop counting."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid or os.getpid())
