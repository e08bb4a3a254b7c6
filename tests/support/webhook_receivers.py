"""Webhook receivers that misbehave, for the notifier's robustness tests: one that never finishes its
answer, one that answers with a large body."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from dataclasses import dataclass


@dataclass
class Connection:
    """One attempt as the receiver saw it: the webhook-id it carried, when it came and when it ended."""

    webhook_id: str
    opened: float  # time.monotonic()
    closed: float | None = None


def _read_request(rfile) -> tuple[dict[str, str], bytes]:
    """An HTTP/1.1 request's headers (lower-cased names) and its body (by Content-Length)."""
    rfile.readline()  # request line
    headers = {}
    while (line := rfile.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers, rfile.read(int(headers.get("content-length", "0")))


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads, allow_reuse_address = True, True


class TricklingReceiver:
    """Sends its status line, then one more byte of a header every ``interval_s`` seconds, for as long
    as the client keeps the connection open (at most ``give_up_s``): an answer that never completes."""

    def __init__(self, *, interval_s: float = 2.0, give_up_s: float = 120.0):
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                headers, _ = _read_request(self.rfile)
                seen = Connection(headers.get("webhook-id", ""), time.monotonic())
                with receiver._lock:
                    receiver.connections.append(seen)
                self.connection.settimeout(interval_s)
                try:
                    self.connection.sendall(b"HTTP/1.1 200 OK\r\nx-slow: ")
                    while time.monotonic() - seen.opened < give_up_s:
                        try:
                            if self.connection.recv(1) == b"":
                                break  # the client closed the connection: the attempt ended
                        except TimeoutError:
                            self.connection.sendall(b"z")
                except OSError:
                    pass  # reset by the client
                finally:
                    seen.closed = time.monotonic()

        self.server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def open_connections(self, webhook_id: str | None = None) -> list[Connection]:
        with self._lock:
            return [c for c in self.connections if c.closed is None and webhook_id in (None, c.webhook_id)]

    def most_at_once(self, webhook_id: str | None = None) -> int:
        """The most connections (of one webhook-id, or of any) that were open at the same time."""
        with self._lock:
            spans = [(c.opened, c.closed or float("inf")) for c in self.connections if webhook_id in (None, c.webhook_id)]
        return max((sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans), default=0)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class LargeBodyReceiver:
    """Answers every delivery 200 with ``body_bytes`` of body, and counts the deliveries."""

    def __init__(self, *, body_bytes: int):
        self.requests: list[dict[str, str]] = []
        receiver, body = self, b"x" * body_bytes

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                headers, _ = _read_request(self.rfile)
                receiver.requests.append(headers)
                try:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                                     + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode())
                    self.wfile.write(body)
                except OSError:
                    pass  # the client read what it wanted and closed
                finally:
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)

        self.server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
