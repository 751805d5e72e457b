"""A plain-HTTP server on 127.0.0.1:0 in a thread, answering from a dict the test changes:
stands in for a CA's CRL publisher and OCSP responder in relying-party tests."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# path -> answer body; a callable gets the POSTed body (an OCSP request) and answers it.
Route = bytes | Callable[[bytes], bytes]


@dataclass
class HTTPFiles:
    url: str
    routes: dict[str, Route] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)


@contextmanager
def serving_http(routes: dict[str, Route] | None = None) -> Iterator[HTTPFiles]:
    files = HTTPFiles("", dict(routes or {}))

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, body: bytes | None) -> None:
            files.asked.append(self.path)
            route = files.routes.get(self.path)
            if route is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = route(body or b"") if callable(route) else route
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer(None)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            self._answer(self.rfile.read(length))

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    files.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield files
    finally:
        httpd.shutdown()
        httpd.server_close()
