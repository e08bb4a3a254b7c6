"""Reading a request body safely: capped before it is read, parsed off the event loop when large,
and never read (nor drained) at all once the API has answered without it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fastapi import Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.errors import PayloadTooLarge, ValidationFailed

T = TypeVar("T")
MAX_JSON_BODY = 1024 * 1024
# Parsing holds the event loop for as long as it runs (about 15 ms per MB of small JSON values on a
# modest core): above this size it runs in the thread pool, so other requests are served meanwhile.
PARSE_OFF_LOOP_BYTES = 64 * 1024


def body_too_large(message: str) -> PayloadTooLarge:
    return PayloadTooLarge(message, code="request_too_large")


async def read_capped_body(request: Request, limit: int, message: str) -> bytes:
    """The whole body, refused with 413 (``{limit}`` in ``message``) before any of it is read when its
    Content-Length is over ``limit``, and as soon as a body of unannounced length passes it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise body_too_large(message.format(limit=limit))
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise body_too_large(message.format(limit=limit))
    return bytes(body)


async def parse_body(parse: Callable[[bytes], T], body: bytes) -> T:
    """``parse(body)``; a large body in the thread pool rather than on the event loop."""
    if len(body) > PARSE_OFF_LOOP_BYTES:
        return await run_in_threadpool(parse, body)
    return parse(body)


def validation_failure(error: ValidationError) -> ValidationFailed:
    problems = [
        {"loc": [str(part) for part in item["loc"]], "message": item["msg"]} for item in error.errors()
    ]
    message = "; ".join(f"{'.'.join(p['loc']) or 'body'}: {p['message']}" for p in problems)
    return ValidationFailed(message, details={"errors": problems})


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"", b"0")):
            return True
    return False


class CloseUnreadBodies:
    """A response sent before its request's body was read to the end (a 401 before the body, a
    413 from its Content-Length, a route that takes no body) says ``Connection: close``, and the
    server closes the connection after it: otherwise it would go on receiving the rest of a body
    nobody reads, however large, to reach the next request on that connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        body_read = False

        async def receive_noting_the_end() -> Message:
            nonlocal body_read
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_read = True
            return message

        async def send_closing_if_unread(message: Message) -> None:
            if message["type"] == "http.response.start" and not body_read:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive_noting_the_end, send_closing_if_unread)
