"""A multipart body reads the same however the network cuts it: a part's headers may arrive in
pieces (python-multipart reports each piece as it comes)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import pytest
from starlette.requests import Request

from services.api.multipart import parse_streaming_form
from tests.conftest import TENANT_KEYS
from tests.support.media import png_bytes
from tests.support.raw_http import RawConnection

BOUNDARY = "vlmqsplit"
REQUEST_TEXT = json.dumps({"task": "caption", "options": {"max_new_tokens": 1}})


def multipart_body(files: list[tuple[str, bytes]], request_text: str = REQUEST_TEXT) -> bytes:
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="request"\r\n\r\n{request_text}\r\n'.encode()]
    for filename, data in files:
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                     f'Content-Type: application/octet-stream\r\n\r\n'.encode() + data + b"\r\n")
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(parts)


class MemorySink:
    """A file part's bytes kept in memory, as the parser hands them over."""

    def __init__(self, filename: str | None) -> None:
        self.filename, self.data = filename, bytearray()

    async def feed(self, chunk: bytes) -> None:
        self.data += chunk

    async def finish(self) -> tuple[str | None, bytes]:
        return self.filename, bytes(self.data)

    async def abort(self) -> None:
        pass


def parse_in_chunks(body: bytes, cuts: list[int]) -> tuple[dict[str, str], list[tuple[str | None, bytes]]]:
    """``body`` through the API's multipart reader, delivered as the pieces between ``cuts``."""
    edges = [0, *cuts, len(body)]
    messages = [{"type": "http.request", "body": body[start:end], "more_body": True}
                for start, end in itertools.pairwise(edges)]
    messages[-1]["more_body"] = False

    async def receive() -> dict:
        return messages.pop(0)

    scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"",
             "headers": [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())]}
    return asyncio.run(parse_streaming_form(Request(scope, receive), open_file=MemorySink, text_fields=("request",),
                                            discard=lambda _done: None))


FILES = [("first.png", b"\x89PNG first image bytes"), ("second.png", b"\x89PNG second image bytes")]


def test_a_body_split_at_any_byte_reads_the_same():
    # given a request part and two file parts
    body = multipart_body(FILES)

    # when the body arrives in two reads, cut at every byte offset in turn
    for offset in range(1, len(body)):
        texts, files = parse_in_chunks(body, [offset])

        # then every cut gives the request part and both files, whole and in order
        assert texts == {"request": REQUEST_TEXT}, offset
        assert files == FILES, offset


def test_a_body_arriving_one_byte_at_a_time_reads_the_same():
    # given the same body, when every byte is a read of its own
    body = multipart_body(FILES)
    texts, files = parse_in_chunks(body, list(range(1, len(body))))

    # then nothing is lost either
    assert texts == {"request": REQUEST_TEXT}
    assert files == FILES


def send_in_two_writes(api_url: str, body: bytes, cut_after: bytes, occurrence: int) -> dict:
    """POST ``body`` to /v1/jobs/plan as two TCP writes, the first ending just after the
    ``occurrence``-th ``cut_after``, a pause between them."""
    position = -1
    for _ in range(occurrence):
        position = body.index(cut_after, position + 1)
    cut = position + len(cut_after)
    with RawConnection(api_url) as connection:
        connection.send(connection.head("POST", "/v1/jobs/plan", {
            "Authorization": f"Bearer {TENANT_KEYS['acme']}",
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "Content-Length": str(len(body)),
        }) + body[:cut])
        time.sleep(0.3)  # the server reads what has come before the rest arrives
        connection.send(body[cut:])
        response = connection.read_response(timeout_s=60)
    assert response.status == 200, response.body
    return response.json()


@pytest.mark.parametrize("cut_after, occurrence", [(b'name="fi', 2), (b'name="req', 1), (b"Content-Disp", 1)],
                         ids=["inside-the-second-file-name", "inside-the-request-name", "inside-a-header-name"])
def test_the_api_reads_a_body_whose_part_headers_arrive_in_two_writes(stack, cut_after, occurrence):
    # given two images and a request part, sent to the API in two TCP writes cut inside a part's headers
    body = multipart_body([("a.png", png_bytes(64, 48)), ("b.png", png_bytes(48, 64))])

    # when the plan comes back
    plan = send_in_two_writes(stack.api_url, body, cut_after, occurrence)

    # then both images and the request were read
    assert [(image["width"], image["height"]) for image in plan["images"]] == [(64, 48), (48, 64)]
    assert plan["model"] == "internvl-tiny"
