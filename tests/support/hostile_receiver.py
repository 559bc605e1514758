"""A webhook receiver on 127.0.0.1 that misbehaves on purpose, by path: ``/drip`` answers 200's headers, then
its body one byte every half second for as long as the client reads; ``/silent`` reads the request and
answers nothing for a minute; ``/huge`` answers 200 with a body of ``HUGE_BYTES``, sent as fast as the
client takes it (written a megabyte at a time: the receiver itself holds one). Every request is counted."""

from __future__ import annotations

import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.support.http_server import BackgroundServer

HUGE_BYTES = 400 * 2**20
CHUNK = b"x" * 2**20


class HostileReceiver(BackgroundServer):
    def __init__(self) -> None:
        self.requests: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append(self.path)
                self.close_connection = True
                try:
                    if self.path == "/silent":
                        time.sleep(60)
                        return
                    size = HUGE_BYTES if self.path == "/huge" else 10_000
                    self.send_response(200)
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    self.wfile.flush()
                    if self.path == "/huge":
                        for _ in range(size // len(CHUNK)):
                            self.wfile.write(CHUNK)
                        return
                    for _ in range(size):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.5)
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client stopped reading: what a careful client does

        super().__init__(Handler)
