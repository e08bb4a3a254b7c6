"""Streaming multipart/form-data: file parts go to storage as they arrive, never whole in memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from services.api.errors import ValidationFailed
from services.api.ingest import MediaIngest, StoredMedia
from shared.storage import ObjectStore

T_co = TypeVar("T_co", covariant=True)
T = TypeVar("T")
MAX_FIELD_BYTES = 64 * 1024
MAX_PART_HEADER_BYTES = 8 * 1024
FILE_PART = "file"
REQUEST_PART = "request"


class _Events:
    """The push parser's callbacks, recorded so they can be handled with ``await``.

    python-multipart reports a header's name and value in as many pieces as the reads that carried
    them (a network cuts a body anywhere): they are joined, and the header recorded only at its end."""

    def __init__(self) -> None:
        self.items: list[tuple] = []
        self._name = bytearray()
        self._value = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": lambda: self.items.append(("begin",)),
            "on_header_field": lambda data, start, end: self._add(self._name, data[start:end]),
            "on_header_value": lambda data, start, end: self._add(self._value, data[start:end]),
            "on_header_end": self._header_end,
            "on_part_data": lambda data, start, end: self.items.append(("data", bytes(data[start:end]))),
            "on_part_end": lambda: self.items.append(("end",)),
            "on_end": lambda: self.items.append(("body_end",)),
        }

    def _add(self, into: bytearray, piece: bytes) -> None:
        into += piece
        if len(self._name) + len(self._value) > MAX_PART_HEADER_BYTES:
            raise ValidationFailed(f"a part's header is larger than {MAX_PART_HEADER_BYTES} bytes")

    def _header_end(self) -> None:
        self.items.append(("header", bytes(self._name).lower(), bytes(self._value)))
        self._name.clear()
        self._value.clear()

    def drain(self) -> list[tuple]:
        items, self.items = self.items, []
        return items


def discard_new_media(store: ObjectStore, media: list[StoredMedia]) -> None:
    for item in media:
        if item.newly_stored:
            store.delete(item.object_key)


class PartSink(Protocol[T_co]):
    """Where one file part's bytes go as they arrive (``MediaIngest``, a batch file's writer)."""

    async def feed(self, chunk: bytes) -> None: ...

    async def finish(self) -> T_co: ...

    async def abort(self) -> None: ...


async def parse_streaming_form(
    request: Request, *, open_file: Callable[[str | None], PartSink[T]], text_fields: tuple[str, ...],
    discard: Callable[[list[T]], None], max_files: int | None = None,
) -> tuple[dict[str, str], list[T]]:
    """The text (UTF-8) of each of ``text_fields`` that came, and every ``file`` part (at most
    ``max_files``), streamed in order through a sink ``open_file(filename)`` opens. On any failure
    the sinks are aborted and ``discard`` gets what finished sinks produced."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise ValidationFailed("expected multipart/form-data with a boundary")
    events = _Events()
    parser = MultipartParser(boundary, events.callbacks())
    finished: list[T] = []
    texts: dict[str, bytearray] = {}
    current_name: str | None = None
    sink: PartSink[T] | None = None
    complete = False
    try:
        async for chunk in request.stream():
            try:
                parser.write(chunk)
            except MultipartParseError as error:
                raise ValidationFailed(f"malformed multipart body: {error}") from error
            for event in events.drain():
                kind = event[0]
                if kind == "begin":
                    current_name = None
                elif kind == "header" and event[1] == b"content-disposition":
                    _, disposition = parse_options_header(event[2])
                    current_name = disposition.get(b"name", b"").decode()
                    if current_name == FILE_PART:
                        if max_files is not None and len(finished) >= max_files:
                            raise ValidationFailed(
                                f"at most {max_files} file parts are allowed", details={"errors": [
                                    {"loc": [FILE_PART], "message": f"at most {max_files} file parts"}]})
                        filename = disposition.get(b"filename")
                        sink = open_file(filename.decode("utf-8", errors="replace") if filename else None)
                    elif current_name in text_fields:
                        texts.setdefault(current_name, bytearray())
                elif kind == "data":
                    if sink is not None:
                        await sink.feed(event[1])
                    elif current_name in texts:
                        texts[current_name] += event[1]
                        if len(texts[current_name]) > MAX_FIELD_BYTES:
                            raise ValidationFailed(f"the {current_name} part is larger than {MAX_FIELD_BYTES} bytes")
                elif kind == "end" and sink is not None:
                    done, sink = sink, None
                    finished.append(await done.finish())
                elif kind == "body_end":
                    complete = True
        if not complete:
            raise ValidationFailed("the multipart body ended before its closing boundary")
        return {name: _utf8(name, text) for name, text in texts.items()}, finished
    except BaseException:
        if sink is not None:
            await sink.abort()
        await run_in_threadpool(discard, finished)
        raise


def _utf8(name: str, text: bytearray) -> str:
    """Refused as a JSON body with such bytes is, never with the bytes silently replaced."""
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValidationFailed(f"the {name} part is not valid UTF-8 (byte {error.start})") from None


async def parse_media_form(
    request: Request, *, new_ingest: Callable[[], MediaIngest], store: ObjectStore, max_files: int
) -> tuple[str | None, list[StoredMedia]]:
    """The ``request`` part's text and every ``file`` part, stored (or inspected) in order."""
    texts, stored = await parse_streaming_form(
        request, open_file=lambda _filename: new_ingest(), text_fields=(REQUEST_PART,),
        discard=lambda media: discard_new_media(store, media), max_files=max_files,
    )
    return texts.get(REQUEST_PART), stored
