"""A loopback stand-in for Postmark's email API, for benchmarks and integration tests.

    stub = PostmarkStub(failure_ratio=0.3, seed=7)   # or PostmarkStub(delay_s=0.2), reject=True
    with stub:
        settings.ANYMAIL = {**stub.anymail_settings(), ...}
        ...
        stub.stats()  # {"received": …, "distinct": …, "duplicated": …, "lost": …}

    .venv/bin/python bench/postmark_stub.py --port 0   # as a process: prints its port, serves

It speaks just enough of the API for Anymail's Postmark backend and for CCM's reconcile lookup:

- `POST /email` and `POST /email/batch` (checks `X-Postmark-Server-Token`) answer like Postmark
  (`{"To", "SubmittedAt", "MessageID", "ErrorCode": 0, "Message": "OK"}`, an array for batch)
  and record each accepted message by our Message-ID (the `Message-ID` entry of the `Headers`
  list Anymail posts) and by `Metadata.delivery_id`;
- `GET /messages/outbound?metadata_delivery_id=X` answers like Postmark's outbound search;
- `GET /__stats`, `POST /__reset`, `POST /__config` let another process read the counts and
  change the faults (used when the stub runs as a subprocess).

Faults, chosen per send by a seeded RNG with probability `failure_ratio`: 429, 500, or
"timeout" — the message IS recorded as accepted, then the answer is held back longer than the
client waits (the case where the sender cannot know it got through). On top of those,
`unanswered_ratio` of the sends are neither accepted nor answered (the connection is held past
the client's timeout, then closed), and `late_ratio` are accepted and answered too late (as
"timeout"). `reject=True` answers every
send with Postmark's permanent 422 / ErrorCode 300 "Invalid 'To' address". `delay_s` slows every
accepted send (to catch a worker mid-dispatch).

Only the standard library: tests import it, and a benchmark may run it as its own process.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from email.utils import parseaddr
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit
from urllib.request import Request, urlopen

DEFAULT_TOKEN = "stub-server-token"  # noqa: S105 - a loopback stub's fixed token
FAULTS = ("429", "500", "timeout")


class _State:
    """What the stub has accepted, and the faults it injects; shared by the handler threads."""

    def __init__(self, *, token: str, config: dict[str, Any]) -> None:
        self.token = token
        self.lock = threading.Lock()
        self.configure(config)
        self.reset()

    def configure(self, config: dict[str, Any]) -> None:
        with getattr(self, "lock", threading.Lock()):
            self.failure_ratio = float(config.get("failure_ratio", 0.0))
            self.faults = tuple(config.get("faults", FAULTS))
            self.reject = bool(config.get("reject", False))
            self.delay_s = float(config.get("delay_s", 0.0))
            self.timeout_delay_s = float(config.get("timeout_delay_s", 2.0))
            self.unanswered_ratio = float(config.get("unanswered_ratio", 0.0))
            self.late_ratio = float(config.get("late_ratio", 0.0))
            self.rng = random.Random(config.get("seed", 7))

    def reset(self) -> None:
        with self.lock:
            self.by_message_id: Counter[str] = Counter()
            self.by_delivery: dict[str, list[str]] = defaultdict(list)
            self.requests = 0
            self.faulted: Counter[str] = Counter()
            self.rejected = 0
            self.lookups = 0

    def fault(self) -> str | None:
        with self.lock:
            draw = self.rng.random()
            kind = None
            if draw < self.failure_ratio:
                kind = self.rng.choice(self.faults)
            elif draw < self.failure_ratio + self.unanswered_ratio:
                kind = "unanswered"
            elif draw < self.failure_ratio + self.unanswered_ratio + self.late_ratio:
                kind = "timeout"
            if kind:
                self.faulted[kind] += 1
            return kind

    def accept(self, message: dict) -> dict:
        ours = _header(message, "Message-ID") or str(message.get("MessageID", ""))
        delivery_id = str((message.get("Metadata") or {}).get("delivery_id", ""))
        provider_id = str(uuid.uuid4())
        with self.lock:
            self.by_message_id[ours] += 1
            if delivery_id:
                self.by_delivery[delivery_id].append(provider_id)
        return {
            "To": message.get("To", ""),
            "SubmittedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "MessageID": provider_id,
            "ErrorCode": 0,
            "Message": "OK",
        }

    def stats(self, expected: int | None = None) -> dict[str, Any]:
        with self.lock:
            received = sum(self.by_message_id.values())
            distinct = len(self.by_message_id)
            duplicated = sum(1 for n in self.by_message_id.values() if n > 1)
            out: dict[str, Any] = {
                "requests": self.requests,
                "received": received,
                "distinct": distinct,
                "duplicated": duplicated,
                "faulted": dict(self.faulted),
                "rejected": self.rejected,
                "lookups": self.lookups,
            }
        if expected is not None:
            out["lost"] = max(0, expected - distinct)
        return out

    def message_ids(self) -> dict[str, int]:
        with self.lock:
            return dict(self.by_message_id)


def _header(message: dict, name: str) -> str:
    for item in message.get("Headers") or []:
        if str(item.get("Name", "")).lower() == name.lower():
            return str(item.get("Value", ""))
    return ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Anymail reuses one session per connection
    # Headers and body leave in two writes; with Nagle on, each answer waits for a delayed ACK.
    disable_nagle_algorithm = True
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
            self.close_connection = True

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw or b"null")

    def do_GET(self) -> None:
        state = self.server.state
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/__stats":
            expected = query.get("expected", [None])[0]
            self._reply(200, state.stats(int(expected) if expected else None))
            return
        if url.path == "/__message_ids":
            self._reply(200, state.message_ids())
            return
        if not self._authorised():
            return
        if url.path.rstrip("/") == "/messages/outbound":
            wanted = query.get("metadata_delivery_id", [""])[0]
            with state.lock:
                state.lookups += 1
                found = list(state.by_delivery.get(wanted, []))
            self._reply(
                200,
                {"TotalCount": len(found), "Messages": [{"MessageID": m} for m in found]},
            )
            return
        self._reply(404, {"ErrorCode": 404, "Message": "Not found"})

    def do_POST(self) -> None:
        state = self.server.state
        path = urlsplit(self.path).path.rstrip("/")
        body = self._body()
        if path == "/__reset":
            state.reset()
            self._reply(200, {"ok": True})
            return
        if path == "/__config":
            state.configure(body or {})
            self._reply(200, {"ok": True})
            return
        if not self._authorised():
            return
        if path not in ("/email", "/email/batch"):
            self._reply(404, {"ErrorCode": 404, "Message": "Not found"})
            return
        with state.lock:
            state.requests += 1
        messages = body if path == "/email/batch" else [body]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            self._reply(422, {"ErrorCode": 402, "Message": "Received invalid JSON input."})
            return
        if state.reject:
            with state.lock:
                state.rejected += len(messages)
            answers = [
                {
                    "ErrorCode": 300,
                    "Message": f"Invalid 'To' address: '{parseaddr(m.get('To', ''))[1]}'.",
                }
                for m in messages
            ]
            # Postmark answers a batch with 200 and an error per message; a single send with 422.
            if path == "/email/batch":
                self._reply(200, answers)
            else:
                self._reply(422, answers[0])
            return
        fault = state.fault()
        if fault == "429":
            self._reply(429, {"ErrorCode": 429, "Message": "Rate limit exceeded."})
            return
        if fault == "500":
            self._reply(500, {"ErrorCode": 500, "Message": "Internal server error."})
            return
        if fault == "unanswered":
            # Never accepted, never answered: the sender's timeout is all it learns.
            time.sleep(state.timeout_delay_s)
            self.close_connection = True
            return
        answers = [state.accept(m) for m in messages]
        if fault == "timeout":
            # Accepted and recorded, but the sender gives up before it hears so.
            time.sleep(state.timeout_delay_s)
            self.close_connection = True
        elif state.delay_s:
            time.sleep(state.delay_s * len(messages))
        self._reply(200, answers if path == "/email/batch" else answers[0])

    def _authorised(self) -> bool:
        if self.headers.get("X-Postmark-Server-Token") != self.server.state.token:
            self._reply(
                401,
                {"ErrorCode": 10, "Message": "Request does not contain a valid Server token."},
            )
            return False
        return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    state: _State


class PostmarkStub:
    """The stub in a thread of this process (`start`/`stop`, or `with`)."""

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        failure_ratio: float = 0.0,
        faults: tuple[str, ...] = FAULTS,
        reject: bool = False,
        delay_s: float = 0.0,
        timeout_delay_s: float = 2.0,
        seed: int = 7,
        max_lifetime_s: float = 600.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.token = token
        self.max_lifetime_s = max_lifetime_s
        self._address = (host, port)
        self._config = {
            "failure_ratio": failure_ratio,
            "faults": faults,
            "reject": reject,
            "delay_s": delay_s,
            "timeout_delay_s": timeout_delay_s,
            "seed": seed,
        }
        self.state = _State(token=token, config=self._config)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the stub is not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def anymail_settings(self) -> dict[str, str]:
        return {"POSTMARK_SERVER_TOKEN": self.token, "POSTMARK_API_URL": self.url}

    def start(self) -> PostmarkStub:
        self._server = _Server(self._address, _Handler)
        self._server.state = self.state
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        self._timer = threading.Timer(self.max_lifetime_s, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> PostmarkStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def configure(self, **config: Any) -> None:
        self._config.update(config)
        self.state.configure(self._config)

    def reset(self) -> None:
        self.state.reset()

    def stats(self, expected: int | None = None) -> dict[str, Any]:
        return self.state.stats(expected)

    def message_ids(self) -> dict[str, int]:
        return self.state.message_ids()


class RemoteStub:
    """Talk to a stub running as another process (see `main`)."""

    def __init__(self, url: str, token: str = DEFAULT_TOKEN) -> None:
        self.url = url if url.endswith("/") else url + "/"
        self.token = token

    def anymail_settings(self) -> dict[str, str]:
        return {"POSTMARK_SERVER_TOKEN": self.token, "POSTMARK_API_URL": self.url}

    def _call(self, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = Request(self.url + path, data=data, method="POST" if data else "GET")  # noqa: S310
        with urlopen(request, timeout=30) as response:  # noqa: S310 - loopback only
            return json.loads(response.read())

    def stats(self, expected: int | None = None) -> dict[str, Any]:
        return self._call("__stats" + (f"?expected={expected}" if expected is not None else ""))

    def message_ids(self) -> dict[str, int]:
        return self._call("__message_ids")

    def reset(self) -> None:
        self._call("__reset", {})

    def configure(self, **config: Any) -> None:
        self._call("__config", config)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    parser.add_argument("--failure-ratio", type=float, default=0.0)
    parser.add_argument("--reject", action="store_true")
    parser.add_argument("--delay-s", type=float, default=0.0)
    parser.add_argument("--timeout-delay-s", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-lifetime-s", type=float, default=1800.0)
    args = parser.parse_args(argv)
    stub = PostmarkStub(
        token=args.token,
        failure_ratio=args.failure_ratio,
        reject=args.reject,
        delay_s=args.delay_s,
        timeout_delay_s=args.timeout_delay_s,
        seed=args.seed,
        max_lifetime_s=args.max_lifetime_s,
        port=args.port,
    ).start()
    print(stub.port, flush=True)
    deadline = time.monotonic() + args.max_lifetime_s
    try:
        while stub._server is not None and time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        stub.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
