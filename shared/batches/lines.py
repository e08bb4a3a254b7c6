"""A JSONL file read as it streams from storage: one line at a time, never the whole file."""

from __future__ import annotations

from collections.abc import Iterable, Iterator


class LineCounter:
    """Counts the lines of a file fed in chunks that hold more than whitespace (what becomes a request)."""

    def __init__(self) -> None:
        self.lines = 0
        self._open = False  # the current line has content

    def feed(self, chunk: bytes) -> None:
        *complete, rest = chunk.split(b"\n")
        for segment in complete:
            if self._open or segment.strip():
                self.lines += 1
            self._open = False
        self._open = self._open or bool(rest.strip())

    def finish(self) -> int:
        if self._open:
            self.lines += 1
            self._open = False
        return self.lines


def jsonl_lines(chunks: Iterable[bytes], *, max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number from 1, the line's bytes) for every line with content; ``None`` for a line longer
    than ``max_line_bytes`` (skipped to its end without being held)."""
    number, held, too_long = 0, bytearray(), False
    for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not too_long:
                held += piece
                if len(held) > max_line_bytes:
                    too_long, held = True, bytearray()
            if end < 0:
                break
            number += 1
            if too_long:
                yield number, None
            elif held.strip():
                yield number, bytes(held)
            held, too_long, start = bytearray(), False, end + 1
    if too_long:
        yield number + 1, None
    elif held.strip():
        yield number + 1, bytes(held)
