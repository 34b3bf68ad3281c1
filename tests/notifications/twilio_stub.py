"""A loopback stand-in for Twilio's Messages API (2010-04-01), for the SMS tests.

    with TwilioStub(account_sid=SID, auth_token=TOKEN) as stub:
        settings.TWILIO_API_BASE_URL = stub.url
        stub.script(("error", 429, 20429, "Too Many Requests"))   # then the default: accept
        ...
        stub.created  # what Twilio accepted: [{"sid", "form", "authorization"}, …]

It speaks what the twilio SDK uses, in Twilio's shapes:

- `POST /2010-04-01/Accounts/{sid}/Messages.json` (form-encoded, HTTP basic auth with the account
  sid and auth token, else 401 / code 20003) answers 201 with a Message resource (`sid` "SM…",
  `status` "queued", RFC 2822 dates), unless the next scripted answer says otherwise:
  `("error", status, code, message)` answers Twilio's error JSON (`code`, `message`,
  `more_info`, `status`); `("timeout", seconds)` accepts and records the message, then holds the
  answer back longer than the client waits (the case where the sender cannot know).
- `GET` on the same path with `To` answers a page of the messages sent to that number, newest
  first, the way Twilio's list endpoint does.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    stub: TwilioStub


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _messages_path(self) -> bool:
        stub = self.server.stub
        expected = f"/2010-04-01/Accounts/{stub.account_sid}/Messages.json"
        if urlsplit(self.path).path != expected:
            self._reply(404, _error(404, 20404, "The requested resource was not found"))
            return False
        if self.headers.get("Authorization") != stub.authorization:
            self._reply(401, _error(401, 20003, "Authenticate"))
            return False
        return True

    def do_POST(self) -> None:
        stub = self.server.stub
        length = int(self.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        with stub.lock:
            stub.requests.append({"method": "POST", "path": self.path, "form": form})
        if not self._messages_path():
            return
        answer = stub.next_answer()
        if answer[0] == "error":
            _, status, code, message = answer
            self._reply(status, _error(status, code, message))
            return
        message = stub.accept(form, self.headers.get("Authorization", ""))
        if answer[0] == "timeout":
            time.sleep(answer[1])
            self.close_connection = True
            return
        self._reply(201, message)

    def do_GET(self) -> None:
        stub = self.server.stub
        query = parse_qs(urlsplit(self.path).query)
        with stub.lock:
            stub.requests.append({"method": "GET", "path": self.path, "form": {}})
        if not self._messages_path():
            return
        to = query.get("To", [""])[0]
        page_size = int(query.get("PageSize", ["50"])[0])
        with stub.lock:
            found = [m for m in reversed(stub.messages) if not to or m["to"] == to][:page_size]
        uri = f"/2010-04-01/Accounts/{stub.account_sid}/Messages.json"
        self._reply(
            200,
            {
                "messages": found,
                "end": max(0, len(found) - 1),
                "first_page_uri": f"{uri}?To={to}&PageSize={page_size}&Page=0",
                "next_page_uri": None,
                "page": 0,
                "page_size": page_size,
                "previous_page_uri": None,
                "start": 0,
                "uri": f"{uri}?To={to}&PageSize={page_size}&Page=0",
            },
        )


def _error(status: int, code: int, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


class TwilioStub:
    def __init__(self, *, account_sid: str, auth_token: str) -> None:
        self.account_sid = account_sid
        self.authorization = "Basic " + base64.b64encode(
            f"{account_sid}:{auth_token}".encode()
        ).decode("ascii")
        self.lock = threading.Lock()
        self.answers: deque[tuple] = deque()
        self.requests: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self.created: list[dict[str, Any]] = []
        self._server: _Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "the stub is not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def script(self, *answers: tuple) -> None:
        with self.lock:
            self.answers.extend(answers)

    def next_answer(self) -> tuple:
        with self.lock:
            return self.answers.popleft() if self.answers else ("accept",)

    def accept(self, form: dict[str, str], authorization: str) -> dict[str, Any]:
        now = format_datetime(datetime.now(UTC))
        sid = "SM" + uuid.uuid4().hex
        message = {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": form.get("Body", ""),
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "num_media": "0",
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "subresource_uris": {
                "media": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}/Media.json"
            },
            "to": form.get("To", ""),
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
        }
        with self.lock:
            self.messages.append(message)
            self.created.append({"sid": sid, "form": form, "authorization": authorization})
        return message

    def posts(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["method"] == "POST"]

    def start(self) -> TwilioStub:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.stub = self
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> TwilioStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
