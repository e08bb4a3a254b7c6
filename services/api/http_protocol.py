"""The API's HTTP/1.1 connections: uvicorn's h11 protocol with the bounds a public server needs.

uvicorn's default, httptools, puts no limit on a request head (megabytes of headers, any number of
them) and neither implementation times out a request that is still arriving: ``timeout_keep_alive``
only covers the wait between requests and is cleared by any byte. h11 refuses a head larger than
``h11_max_incomplete_event_size`` (which bounds the number of headers too); this subclass answers that
with 431 instead of 400, gives each request head a deadline (counted from the connection's start, or
from the first byte of its next request, and not extended by a trickle of bytes), and closes a
connection whose request body stops arriving for ``api_body_idle_timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from shared.config.settings import get_api_settings

log = logging.getLogger("vlmq.api")


class BoundedH11Protocol(H11Protocol):
    """Selected with ``uvicorn.run(http=...)``; uvicorn builds one per connection in every worker
    process, so the limits come from the API settings here rather than from uvicorn's Config."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        settings = get_api_settings()
        self.header_timeout_s = settings.api_header_timeout_s
        self.body_idle_timeout_s = settings.api_body_idle_timeout_s
        self.max_head_bytes = self.config.h11_max_incomplete_event_size or h11.DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        self._head_deadline: asyncio.TimerHandle | None = None
        self._body_idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        if self._head_deadline is None and self.conn.their_state is h11.IDLE:
            self._arm_head_deadline()  # the first bytes of this connection's next request
        super().data_received(data)
        self._follow_request(data_arrived=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow_request(data_arrived=False)  # a pipelined request may have been parsed

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_deadline, self._body_idle):
            if timer is not None:
                timer.cancel()
        self._head_deadline = self._body_idle = None
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        # h11 keeps what it could not parse; over the limit, that was a head too large (RFC 6585).
        if len(self.conn.trailing_data[0]) > self.max_head_bytes:
            self._send_error(431, f"the request head is larger than {self.max_head_bytes} bytes")
        else:
            self._send_error(400, msg)

    def _send_error(self, status: int, message: str) -> None:
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
        for event in (h11.Response(status_code=status, headers=headers), h11.Data(data=message.encode()),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def _follow_request(self, *, data_arrived: bool) -> None:
        state = self.conn.their_state
        if state is not h11.IDLE and self._head_deadline is not None:
            self._head_deadline.cancel()  # the head is complete (or the connection failed)
            self._head_deadline = None
        if state is h11.SEND_BODY:
            if data_arrived or self._body_idle is None:
                self._arm_body_idle()
        elif self._body_idle is not None:
            self._body_idle.cancel()
            self._body_idle = None

    def _arm_head_deadline(self) -> None:
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.info("closed a connection whose request head did not arrive within %s s", self.header_timeout_s)
            self.transport.close()

    def _arm_body_idle(self) -> None:
        if self._body_idle is not None:
            self._body_idle.cancel()
        self._body_idle = self.loop.call_later(self.body_idle_timeout_s, self._body_timed_out)

    def _body_timed_out(self) -> None:
        self._body_idle = None
        if self.conn.their_state is not h11.SEND_BODY or self.transport.is_closing():
            return
        if self.flow.read_paused or self.conn.they_are_waiting_for_100_continue:
            # Not the client's delay: the app has not taken what came yet, or has not asked for more.
            self._arm_body_idle()
            return
        log.info("closed a connection whose request body stalled for %s s", self.body_idle_timeout_s)
        self.transport.close()
