"""A real HTTP server on loopback that serves media by path, for media-by-URL tests.

Each path is a script: a list of responses served in turn (the last one repeats), so a test can
say "503, then the image". Every request is recorded.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    chunk_delay_s: float = 0.0  # > 0: sent chunked, one 16 KiB chunk per delay (a slow server)
    declare_length: bool = True


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # clients that hang up mid-exchange are what several tests make them do


class MediaServer:
    def __init__(self) -> None:
        self.routes: dict[str, list[Reply]] = {}
        self.hits: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 - http.server's naming
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                script = server.routes.get(self.path) or [Reply(404, b"not here")]
                reply = script.pop(0) if len(script) > 1 else script[0]
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.chunk_delay_s or not reply.declare_length:
                    self._send_chunked(reply)
                    return
                self.send_header("content-length", str(len(reply.body)))
                self.end_headers()
                try:
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client refused the body, as some tests want it to

            def _send_chunked(self, reply: Reply) -> None:
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                try:
                    for start in range(0, len(reply.body), 16384):
                        piece = reply.body[start:start + 16384]
                        self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                        self.wfile.flush()
                        time.sleep(reply.chunk_delay_s)
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up, as some tests want it to

            def log_message(self, *_args):
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def serve(self, path: str, *replies: Reply) -> str:
        """Script ``path`` and return its full URL."""
        self.routes[path] = list(replies)
        return self.base_url + path

    def close(self) -> None:
        self.server.shutdown()
