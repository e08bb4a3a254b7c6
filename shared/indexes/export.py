"""An index's segments as files: JSON Lines (every video) or WebVTT (one video's captions)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator


def vtt_timestamp(seconds: float) -> str:
    """WebVTT's ``hh:mm:ss.ttt``."""
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"


def _cue_text(text: str | None) -> str:
    """A cue's payload may not hold a blank line or "-->"; "&" and "<" are escaped."""
    cleaned = (text or "").replace("&", "&amp;").replace("<", "&lt;").replace("-->", "→")
    lines = [line.strip() for line in cleaned.splitlines() if line.strip()]
    return "\n".join(lines) or "…"


def webvtt(segments: Iterable[dict]) -> Iterator[str]:
    yield "WEBVTT\n"
    for number, segment in enumerate(segments, start=1):
        yield (f"\n{number}\n{vtt_timestamp(segment['start_s'])} --> {vtt_timestamp(segment['end_s'])}\n"
               f"{_cue_text(segment['text'])}\n")


def jsonl(segments: Iterable[dict]) -> Iterator[str]:
    for segment in segments:
        yield json.dumps(segment, ensure_ascii=False) + "\n"
