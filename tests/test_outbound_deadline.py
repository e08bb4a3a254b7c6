"""A deadline for a whole outbound exchange (``shared.net.stream(deadline_s=…)``), against real
sockets that stall each phase: httpx's own timeouts bound each operation only, so a peer that never
finishes connecting, never answers, or sends a byte every now and then would never trip them."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from shared.net import stream

DEADLINE_S = 1.5
PER_OPERATION_S = 30.0  # far longer than the deadline: only the deadline can end these exchanges


@contextlib.contextmanager
def _never_accepting() -> Iterator[int]:
    """A listening socket whose accept queue is full: a further connect is never completed."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.2)
    try:
        yield port
    finally:
        for sock in (*fillers, listener):
            sock.close()


@contextlib.contextmanager
def _answering(answer) -> Iterator[int]:
    """A server that reads the request, then calls ``answer(connection, stop)`` until stopped."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set():
                connection, _ = listener.accept()
                connection.recv(65536)
                threading.Thread(target=answer, args=(connection, stop), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()


def _silent(connection: socket.socket, stop: threading.Event) -> None:
    stop.wait(60)
    connection.close()


def _trickle(prefix: bytes):
    def answer(connection: socket.socket, stop: threading.Event) -> None:
        with contextlib.suppress(OSError):
            connection.sendall(prefix)
            while not stop.wait(0.3):
                connection.sendall(b"z")
        connection.close()

    return answer


SERVERS = {
    "connect never completes": _never_accepting,
    "accepted, never answered": lambda: _answering(_silent),
    "header sent a byte at a time": lambda: _answering(_trickle(b"HTTP/1.1 200 OK\r\nx-slow: ")),
    "body sent a byte at a time": lambda: _answering(_trickle(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")),
}


@pytest.mark.parametrize("server", SERVERS.values(), ids=SERVERS.keys())
def test_given_a_peer_stalling_a_phase_when_sent_with_a_deadline_then_the_exchange_ends_by_it(server):
    # given a peer that stalls one phase of the exchange
    with server() as port:
        started = time.monotonic()

        # when a request is sent with a deadline, and its answer read to the end
        url = f"http://127.0.0.1:{port}/hooks"
        with pytest.raises(httpx.TimeoutException) as raised, stream(
                "POST", url, allow_private=True, timeout=PER_OPERATION_S, deadline_s=DEADLINE_S, content=b"{}",
        ) as response:
            for _ in response.iter_raw():
                pass

    # then it ends at the deadline, well before any one operation's timeout, saying why
    assert time.monotonic() - started < DEADLINE_S + 5
    assert "deadline" in str(raised.value)


def test_given_no_deadline_when_a_peer_answers_at_once_then_nothing_changes():
    # given a peer that answers at once
    def answer(connection: socket.socket, _stop: threading.Event) -> None:
        connection.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
        connection.close()

    with _answering(answer) as port:
        # when sent with and without a deadline, then both get the answer
        for deadline_s in (None, DEADLINE_S):
            with stream("POST", f"http://127.0.0.1:{port}/", allow_private=True, deadline_s=deadline_s) as response:
                assert response.status_code == 204
