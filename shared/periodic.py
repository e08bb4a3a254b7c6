"""A pass repeated on a background thread: the reaper, the webhook outbox relay, the batch sweeper.

Each pass is independent and idempotent: one that fails (the database or broker away) is logged
and the next one tries again, so the thread itself never dies of it.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod


class PeriodicPass(ABC):
    name = "vlmq-periodic"  # the thread's name, and what a failed pass is logged as

    def __init__(self, interval_s: float, log: logging.Logger) -> None:
        self._interval_s, self._log = interval_s, log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.run_once()
            except Exception:  # noqa: BLE001  (whatever broke this pass, the next one tries again)
                self._log.warning("%s pass failed", self.name, exc_info=True)

    @abstractmethod
    def run_once(self) -> object: ...
