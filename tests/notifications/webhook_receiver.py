"""An integrator's webhook endpoint on 127.0.0.1, checking signatures with the recipe the API
documentation gives (written out here, not imported from CCM, so that a wrong signature fails).

    with WebhookReceiver() as receiver:
        receiver.secret = "whsec_…"         # from the create response
        receiver.script = [500, 500]        # answers to the next requests; then 200
        ...
        receiver.received                   # [Received(...), …] in arrival order
"""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOLERANCE_S = 300


def verify(secret: str, headers: dict[str, str], body: bytes, *, now: float | None = None) -> bool:
    """The documented recipe: HMAC-SHA256 keyed with the secret over `{timestamp}.{raw body}`,
    compared in constant time with each `v1=` value; a stale timestamp is refused."""
    timestamp = headers.get("CCM-Webhook-Timestamp", "")
    if not timestamp.isdigit():
        return False
    if abs((now or time.time()) - int(timestamp)) > TOLERANCE_S:
        return False
    expected = hmac.new(
        secret.encode("utf-8"), timestamp.encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    offered = [
        part[len("v1=") :]
        for part in headers.get("CCM-Webhook-Signature", "").split()
        if part.startswith("v1=")
    ]
    return any(hmac.compare_digest(expected, value) for value in offered)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    answered: int

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def type(self) -> str:
        return self.json["type"]


@dataclass
class WebhookReceiver:
    secret: str = ""
    script: list[int | str] = field(default_factory=list)  # a status, or "redirect" / "hang"
    received: list[Received] = field(default_factory=list)
    hang_s: float = 2.0
    tls: tuple[str, str] | None = None  # (certificate file, key file): serve https

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.server_address[1]
        if self.tls:
            return f"https://localhost:{port}/hooks/ccm"
        return f"http://127.0.0.1:{port}/hooks/ccm"

    def _answer(self) -> int | str:
        with self._lock:
            return self.script.pop(0) if self.script else 200

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = dict(self.headers.items())
                answer = receiver._answer()
                if answer == "hang":
                    time.sleep(receiver.hang_s)
                    answer = 200
                status = 302 if answer == "redirect" else int(answer)
                with receiver._lock:
                    receiver.received.append(
                        Received(
                            self.path,
                            headers,
                            body,
                            verify(receiver.secret, headers, body),
                            status,
                        )
                    )
                try:
                    self.send_response(status)
                    if answer == "redirect":
                        self.send_header("Location", "/elsewhere")
                    self.send_header("Content-Type", "text/plain")
                    self.end_headers()
                    self.wfile.write(f"answered {status}".encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender stopped waiting ("hang"): what the test wants

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the port: from now on a connection to `url` is refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
