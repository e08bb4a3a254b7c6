"""The API's HTTP server bounds what a connection may hold: the size of a request's head, how long
the head may take to arrive, and how long a body may stall."""

from __future__ import annotations

import time

import pytest

from tests.conftest import TENANT_KEYS
from tests.support.raw_http import RawConnection
from tests.support.services import isolated_stack, wait_until

HEADER_TIMEOUT_S = 2
BODY_IDLE_TIMEOUT_S = 2
GRACE_S = 10  # generous: the server closes after its timeout, the test allows this much more


@pytest.fixture(scope="module")
def server(stack_env, tmp_path_factory):
    with isolated_stack(stack_env, tmp_path_factory.mktemp("server-limits"), with_worker=False,
                        VLMQ_API_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
                        VLMQ_API_BODY_IDLE_TIMEOUT_S=str(BODY_IDLE_TIMEOUT_S)) as stack:
        yield stack


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {TENANT_KEYS['acme']}"}


@pytest.mark.parametrize("headers", [
    [("X-Padding", "a" * 1024 * 1024)],
    [(f"X-H{number}", "v") for number in range(100_000)],
], ids=["one-1MB-header", "100k-headers"])
def test_an_oversized_request_head_is_refused(server, headers):
    # given a request head far over the server's limit (its size, or its number of headers)
    with RawConnection(server.api_url) as connection:
        # when it is sent
        try:
            connection.send(connection.head("GET", "/healthz", headers))
            response = connection.read_response(timeout_s=30)
        except (ConnectionResetError, BrokenPipeError):
            response = None  # the server may cut the connection before all of it was written

        # then it is answered 431 (or the connection is cut) and the connection ends
        assert response is None or response.status == 431, response
        assert response is None or connection.closed_by_server(within_s=GRACE_S)


@pytest.mark.parametrize("partial", [b"", b"GET /heal", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "],
                         ids=["nothing", "half-a-request-line", "half-the-headers"])
def test_a_connection_whose_head_stalls_is_closed(server, partial):
    # given a connection that sends part of a request head (or nothing) and then stalls
    with RawConnection(server.api_url) as connection:
        started = time.monotonic()
        connection.send(partial)

        # when the client waits
        closed = connection.closed_by_server(within_s=HEADER_TIMEOUT_S + GRACE_S)

        # then the server closes it, not before its header timeout
        assert closed
        assert time.monotonic() - started >= HEADER_TIMEOUT_S - 0.5


def test_a_head_trickled_past_the_timeout_is_closed(server):
    # given a client that sends one byte of its request head every half second, past the header timeout
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Trickle: " + b"a" * 100
    with RawConnection(server.api_url) as connection:
        started, cut = time.monotonic(), False
        for byte in head:
            try:
                connection.send(bytes([byte]))
            except (ConnectionResetError, BrokenPipeError):
                cut = True
                break
            if time.monotonic() - started > HEADER_TIMEOUT_S + GRACE_S:
                break
            time.sleep(0.5)

        # then the server closes the connection at its deadline (each byte does not restart it)
        assert cut or connection.closed_by_server(within_s=1)
        assert time.monotonic() - started < HEADER_TIMEOUT_S + GRACE_S


def test_a_body_that_stalls_is_closed(server):
    # given a request whose body stops arriving part-way
    with RawConnection(server.api_url) as connection:
        connection.send(connection.head("POST", "/v1/jobs", {**bearer(), "Content-Type": "application/json",
                                                             "Content-Length": "1000"}) + b'{"task": ')

        # when the client waits
        closed = connection.closed_by_server(within_s=BODY_IDLE_TIMEOUT_S + GRACE_S)

        # then the server gives up on it and closes the connection, as a client gone, not an error of its own
        assert closed
    log = server.processes[0].log_path
    wait_until(lambda: "went away before its body ended" in log.read_text(), timeout_s=GRACE_S, what="the log line")
    assert "unhandled error" not in log.read_text()


def test_a_body_that_keeps_coming_slowly_is_read(server):
    # given a body sent in pieces, each gap shorter than the idle timeout, the whole longer than it
    body = b'{"task": "caption", "metadata": {"note": "' + b"x" * 60 + b'"}}'
    with RawConnection(server.api_url) as connection:
        connection.send(connection.head("POST", "/v1/jobs", {**bearer(), "Content-Type": "application/json",
                                                                  "Content-Length": str(len(body))}))
        pieces = [body[start:start + 12] for start in range(0, len(body), 12)]
        for piece in pieces:
            time.sleep(BODY_IDLE_TIMEOUT_S / 4)
            connection.send(piece)

        # when the last piece has arrived
        response = connection.read_response(timeout_s=60)

    # then the request was read to its end and answered (a caption needs an image: 400 invalid_input)
    assert len(pieces) * BODY_IDLE_TIMEOUT_S / 4 > BODY_IDLE_TIMEOUT_S
    assert response.status == 400, response.body
    assert response.json()["error"]["code"] == "invalid_input"


def test_ordinary_requests_are_unaffected(server):
    # given a client that sends its request at once, twice on one connection
    with RawConnection(server.api_url) as connection:
        for _ in range(2):
            connection.send(connection.head("GET", "/healthz"))

            # then each is answered on the same connection
            assert connection.read_response(timeout_s=30).status == 200
