"""The web page, served next to the API: static files from ``static/`` and ``/v2/...`` passed through to
Triton's HTTP port, so the page calls the KServe v2 API on its own origin (Triton sends no CORS headers).

Nothing is fetched from the network at run time: the page is plain HTML, CSS and JavaScript.
"""

from __future__ import annotations

import http.client
import json
import logging
import mimetypes
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

__all__ = ["WebServer", "page_config"]

log = logging.getLogger("pyagingrt.serve")

_STATIC = ("index.html", "app.js", "style.css")
_FORWARD_HEADERS = ("Content-Type", "Inference-Header-Content-Length", "Content-Length")
_MAX_BODY = 64 * 1024 * 1024  # Triton's own default limit on an HTTP request


def page_config(name: str, engine: Any, random_weights: bool = False) -> dict[str, Any]:
    """What the page needs to know: the model names, its age groups and whether it takes a seed."""
    from ..pipeline.faces import is_stochastic
    from .server import model_names

    groups = [g.to_dict() for g in engine.age_groups]
    crops, photos = model_names(name)
    return {
        "name": name,
        "model": engine.model,
        "crops_model": crops,
        "photos_model": photos,
        "photos_models": [photos],
        "input_size": int(engine.input_size),
        "age_groups": groups,
        "stochastic": is_stochastic(engine),
        "random_weights": random_weights,
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("web: " + fmt, *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.startswith("/v2"):
            self._forward("GET", b"")
            return
        if path == "/config.json":
            self._send(HTTPStatus.OK, json.dumps(self.server.config).encode(), "application/json")
            return
        name = "index.html" if path in ("", "/") else path.lstrip("/")
        if name not in _STATIC:
            self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
            return
        body = resources.files(__package__).joinpath("static", name).read_bytes()
        self._send(HTTPStatus.OK, body, mimetypes.guess_type(name)[0] or "application/octet-stream")

    def do_POST(self) -> None:
        if not self.path.startswith("/v2/"):
            self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b'{"error":"request too large"}', "application/json")
            self.close_connection = True
            return
        self._forward("POST", self.rfile.read(length))

    def _forward(self, method: str, body: bytes) -> None:
        headers = {k: self.headers[k] for k in _FORWARD_HEADERS if self.headers.get(k) is not None}
        conn = http.client.HTTPConnection("127.0.0.1", self.server.triton_port, timeout=300)
        try:
            conn.request(method, self.path, body=body if method == "POST" else None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as exc:
            self._send(HTTPStatus.BAD_GATEWAY, json.dumps({"error": f"Triton: {exc}"}).encode(), "application/json")
            return
        finally:
            conn.close()
        self.send_response(resp.status)
        for key in ("Content-Type", "Inference-Header-Content-Length"):
            if resp.getheader(key) is not None:
                self.send_header(key, resp.getheader(key))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    triton_port: int
    config: dict[str, Any]


class WebServer:
    """The page and the /v2 pass-through on ``host:port``, in a background thread."""

    def __init__(
        self, host: str, port: int, triton_http_port: int, name: str, engine: Any, random_weights: bool = False
    ) -> None:
        self.httpd = _Server((host, port), _Handler)
        self.httpd.triton_port = triton_http_port
        self.httpd.config = page_config(name, engine, random_weights)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="agingrt-web", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
