"""A shared mailbox behind the Gmail API, for the intake tests: googleapiclient's HttpMockSequence
answering from a small in-memory mailbox instead of a fixed script (list, get raw, labels,
modify), so a test can run the intake twice and see what the second run finds."""

from __future__ import annotations

import base64
import json
from email.message import EmailMessage
from urllib.parse import parse_qs, urlsplit

import httplib2
from googleapiclient.http import HttpMockSequence

from notifications.channels.gmail import GmailGateway

API = "/gmail/v1/users/me"
MAILBOX = "service@northwind.example"


def mail(
    *,
    sender: str,
    subject: str,
    body: str,
    message_id: str,
    headers: dict[str, str] | None = None,
) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = MAILBOX
    message["Subject"] = subject
    message["Message-ID"] = message_id
    message["Date"] = "Mon, 23 Mar 2026 09:30:00 +0000"
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    return message.as_bytes()


def _ok(body: dict) -> tuple[httplib2.Response, bytes]:
    return httplib2.Response({"status": "200"}), json.dumps(body).encode()


class Mailbox(HttpMockSequence):
    """The inbox: `deliver` puts a message in; the gateway's calls list, read and label it."""

    def __init__(self) -> None:
        super().__init__([])
        self.messages: dict[str, bytes] = {}
        self.labels: dict[str, set[str]] = {}
        self.label_ids: dict[str, str] = {}
        self.refuse_modify = False

    def deliver(self, raw: bytes) -> str:
        gmail_id = f"18f{len(self.messages) + 1:05d}"
        self.messages[gmail_id] = raw
        self.labels[gmail_id] = {"INBOX", "UNREAD"}
        return gmail_id

    def labelled(self, gmail_id: str, name: str = "ccm-processed") -> bool:
        return self.label_ids.get(name) in self.labels[gmail_id]

    def request(self, uri, method="GET", body=None, headers=None, redirections=1, **kwargs):
        self.request_sequence.append((uri, method, body, headers))
        parts = urlsplit(uri)
        path, query = parts.path, parse_qs(parts.query)
        if path == f"{API}/messages" and method == "GET":
            hidden = {
                self.label_ids[name[7:]]
                for name in query.get("q", [""])[0].split()
                if name.startswith("-label:") and name[7:] in self.label_ids
            }
            ids = [i for i in reversed(self.messages) if not self.labels[i] & hidden]
            return _ok({"messages": [{"id": i, "threadId": i} for i in ids]} if ids else {})
        if path == f"{API}/labels" and method == "GET":
            return _ok({"labels": [{"id": v, "name": k} for k, v in self.label_ids.items()]})
        if path == f"{API}/labels" and method == "POST":
            name = json.loads(body)["name"]
            self.label_ids[name] = f"Label_{len(self.label_ids) + 1}"
            return _ok({"id": self.label_ids[name], "name": name})
        gmail_id = path.rsplit("/", 2)[-2 if path.endswith("/modify") else -1]
        if path.endswith("/modify"):
            if self.refuse_modify:
                error = {"error": {"code": 400, "message": "nope", "errors": [{"reason": "x"}]}}
                return httplib2.Response({"status": "400"}), json.dumps(error).encode()
            change = json.loads(body)
            self.labels[gmail_id] |= set(change.get("addLabelIds", []))
            self.labels[gmail_id] -= set(change.get("removeLabelIds", []))
            return _ok({"id": gmail_id, "labelIds": sorted(self.labels[gmail_id])})
        raw = base64.urlsafe_b64encode(self.messages[gmail_id]).decode("ascii")
        return _ok({"id": gmail_id, "threadId": gmail_id, "raw": raw})

    def gateway(self) -> GmailGateway:
        return GmailGateway(http=self, delegated_user=MAILBOX, sleep=lambda _seconds: None)
