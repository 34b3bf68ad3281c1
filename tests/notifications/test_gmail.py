from __future__ import annotations

import base64
import email
import email.policy
import json
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage as MimeMessage
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import EmailMessage, get_connection
from google.auth import jwt
from googleapiclient.http import HttpMockSequence

from notifications.channels.gmail import (
    DEFAULT_SENDER_PROFILE,
    GmailGateway,
    GmailPermanentError,
    GmailTransientError,
    sender_for,
)
from tests.notifications.conftest import ok

FIXTURES = Path(__file__).parent / "gmail_fixtures"
MAILBOX = "ops@ccm.example"
API = "/gmail/v1/users/me"


class ScriptedHttp(HttpMockSequence):
    """HttpMockSequence whose script may also hold exceptions, raised as the transport would."""

    def request(self, uri, method="GET", body=None, headers=None, **kwargs):
        if self._iterable and isinstance(self._iterable[0], BaseException):
            self.request_sequence.append((uri, method, body, headers))
            raise self._iterable.pop(0)
        return super().request(uri, method, body, headers, **kwargs)


def google_error(code: int, reason: str, message: str, status: str) -> tuple[dict, str]:
    body = {
        "error": {
            "code": code,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason}],
            "status": status,
        }
    }
    return {"status": str(code), "content-type": "application/json; charset=UTF-8"}, json.dumps(
        body
    )


RATE_LIMITED = google_error(
    429,
    "rateLimitExceeded",
    "User-rate limit exceeded.  Retry after 2024-05-24T17:20:00.000Z",
    "RESOURCE_EXHAUSTED",
)
BACKEND_ERROR = google_error(
    503, "backendError", "The service is currently unavailable.", "UNAVAILABLE"
)
SENT = ok({"id": "18fa3c1d2e4b5a69", "threadId": "18fa3c1d2e4b5a69", "labelIds": ["SENT"]})
NOT_FOUND_BY_SEARCH = ok({"resultSizeEstimate": 0})


def calls(http: HttpMockSequence) -> list[tuple[str, str]]:
    return [(method, urlsplit(uri).path) for uri, method, _, _ in http.request_sequence]


def query_of(http: HttpMockSequence, index: int) -> dict[str, list[str]]:
    return parse_qs(urlsplit(http.request_sequence[index][0]).query)


def sent_mime(http: HttpMockSequence, index: int) -> email.message.EmailMessage:
    body = json.loads(http.request_sequence[index][2])
    return email.message_from_bytes(
        base64.urlsafe_b64decode(body["raw"]), policy=email.policy.default
    )


def gateway(http: HttpMockSequence, **kwargs) -> GmailGateway:
    kwargs.setdefault("sleep", lambda _seconds: None)
    return GmailGateway(http=http, delegated_user=MAILBOX, **kwargs)


def approval_mail() -> MimeMessage:
    message = MimeMessage()
    message["From"] = f"CCM <{MAILBOX}>"
    message["To"] = "rita@ccm.example"
    message["Subject"] = "Approval needed: Welcome letter v3"
    message.set_content("Please review version 3.")
    return message


def gmail_raw(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


@pytest.fixture(autouse=True)
def _no_service_account(settings):
    # A key configured on the developer's machine must not turn the mocks into token requests.
    settings.GMAIL_SERVICE_ACCOUNT_FILE = None
    settings.GMAIL_DELEGATED_USER = None


def test_send_posts_the_mime_with_the_given_message_id():
    http = ScriptedHttp([SENT])
    message = approval_mail()

    gmail_id = gateway(http).send(message, message_id="171657212345.4242@ccm.example")

    assert gmail_id == "18fa3c1d2e4b5a69"
    assert calls(http) == [("POST", f"{API}/messages/send")]
    mime = sent_mime(http, 0)
    assert mime["Message-ID"] == "<171657212345.4242@ccm.example>"
    assert mime["Subject"] == "Approval needed: Welcome letter v3"
    assert mime["To"] == "rita@ccm.example"
    assert mime.get_content().strip() == "Please review version 3."
    assert message["Message-ID"] is None  # the caller's message is left alone


def test_send_retries_a_429_and_succeeds():
    http = ScriptedHttp([RATE_LIMITED, SENT])
    sleeps: list[float] = []

    gmail_id = gateway(http, sleep=sleeps.append).send(
        approval_mail(), message_id="<a@ccm.example>"
    )

    assert gmail_id == "18fa3c1d2e4b5a69"
    assert calls(http) == [("POST", f"{API}/messages/send")] * 2
    assert len(sleeps) == 1
    assert 0 < sleeps[0] <= 1.0


@pytest.mark.parametrize("reason", ["rateLimitExceeded", "userRateLimitExceeded"])
def test_send_retries_a_rate_limit_403(reason):
    http = ScriptedHttp(
        [google_error(403, reason, "User Rate Limit Exceeded", "PERMISSION_DENIED"), SENT]
    )

    gmail_id = gateway(http).send(approval_mail(), message_id="<a@ccm.example>")

    assert gmail_id == "18fa3c1d2e4b5a69"
    assert calls(http) == [("POST", f"{API}/messages/send")] * 2


@pytest.mark.parametrize("first_failure", [TimeoutError("timed out"), BACKEND_ERROR])
def test_send_with_unknown_outcome_finds_the_sent_mail_and_does_not_send_again(first_failure):
    # given: the send reaches Gmail but the answer is lost
    found = ok({"messages": [{"id": "18fa3c1d2e4b5a70", "threadId": "18fa3c1d2e4b5a70"}]})
    http = ScriptedHttp([first_failure, found])

    # when
    gmail_id = gateway(http).send(approval_mail(), message_id="<171657.42@ccm.example>")

    # then: the retry is a search, not a second send
    assert gmail_id == "18fa3c1d2e4b5a70"
    assert calls(http) == [("POST", f"{API}/messages/send"), ("GET", f"{API}/messages")]
    assert query_of(http, 1)["q"] == ["rfc822msgid:171657.42@ccm.example"]
    assert query_of(http, 1)["includeSpamTrash"] == ["true"]


def test_send_timeout_with_nothing_in_the_mailbox_sends_once_more():
    http = ScriptedHttp([TimeoutError("timed out"), NOT_FOUND_BY_SEARCH, SENT])

    gmail_id = gateway(http).send(approval_mail(), message_id="<171657.42@ccm.example>")

    assert gmail_id == "18fa3c1d2e4b5a69"
    assert calls(http) == [
        ("POST", f"{API}/messages/send"),
        ("GET", f"{API}/messages"),
        ("POST", f"{API}/messages/send"),
    ]
    assert sent_mime(http, 2)["Message-ID"] == "<171657.42@ccm.example>"


def test_send_with_check_existing_skips_mail_already_sent():
    found = ok({"messages": [{"id": "18fa3c1d2e4b5a70", "threadId": "18fa3c1d2e4b5a70"}]})
    http = ScriptedHttp([found])

    gmail_id = gateway(http).send(
        approval_mail(), message_id="<171657.42@ccm.example>", check_existing=True
    )

    assert gmail_id == "18fa3c1d2e4b5a70"
    assert calls(http) == [("GET", f"{API}/messages")]


@pytest.mark.parametrize(
    ("code", "reason", "status"),
    [
        (400, "invalidArgument", "INVALID_ARGUMENT"),
        (403, "insufficientPermissions", "PERMISSION_DENIED"),
        (404, "notFound", "NOT_FOUND"),
    ],
)
def test_send_permanent_error_raises_without_retrying(code, reason, status):
    http = ScriptedHttp([google_error(code, reason, "Invalid To header", status), SENT])

    with pytest.raises(GmailPermanentError) as raised:
        gateway(http).send(approval_mail(), message_id="<a@ccm.example>")

    assert raised.value.status == code
    assert reason in raised.value.reason
    assert calls(http) == [("POST", f"{API}/messages/send")]


def test_send_gives_up_after_max_attempts_with_growing_waits():
    http = ScriptedHttp([RATE_LIMITED] * 3)
    sleeps: list[float] = []
    gw = gateway(http, max_attempts=3, base_delay=1.0, sleep=sleeps.append, jitter=lambda: 1.0)

    with pytest.raises(GmailTransientError) as raised:
        gw.send(approval_mail(), message_id="<a@ccm.example>")

    assert raised.value.status == 429
    assert raised.value.maybe_sent is False
    assert len(http.request_sequence) == 3
    assert sleeps == [1.0, 2.0]


def test_transient_error_after_a_timeout_says_the_mail_may_have_gone():
    http = ScriptedHttp([TimeoutError("timed out"), NOT_FOUND_BY_SEARCH, BACKEND_ERROR])

    with pytest.raises(GmailTransientError) as raised:
        gateway(http, max_attempts=2).send(approval_mail(), message_id="<a@ccm.example>")

    assert raised.value.maybe_sent is True
    assert raised.value.status == 503


def test_list_inbox_follows_page_tokens():
    http = ScriptedHttp(
        [
            ok(
                {
                    "messages": [
                        {"id": "18fa01", "threadId": "18fa01"},
                        {"id": "18fa02", "threadId": "18fa01"},
                    ],
                    "nextPageToken": "07236481923471234",
                    "resultSizeEstimate": 3,
                }
            ),
            ok({"messages": [{"id": "18fa03", "threadId": "18fa03"}], "resultSizeEstimate": 1}),
        ]
    )

    ids = gateway(http).list_inbox()

    assert ids == ["18fa01", "18fa02", "18fa03"]
    assert query_of(http, 0)["q"] == ["in:inbox -label:ccm-processed"]
    assert "pageToken" not in query_of(http, 0)
    assert query_of(http, 1)["pageToken"] == ["07236481923471234"]


def test_list_inbox_stops_at_max_results():
    http = ScriptedHttp(
        [
            ok({"messages": [{"id": "18fa01", "threadId": "18fa01"}], "nextPageToken": "t2"}),
            ok({"messages": [{"id": "18fa02", "threadId": "18fa02"}], "nextPageToken": "t3"}),
        ]
    )

    ids = gateway(http).list_inbox(query="from:mailer-daemon", max_results=2)

    assert ids == ["18fa01", "18fa02"]
    assert len(http.request_sequence) == 2
    assert query_of(http, 0)["maxResults"] == ["2"]
    assert query_of(http, 1)["maxResults"] == ["1"]


def test_read_plain_message():
    # given: a reply with a non-ASCII subject, text and HTML alternatives
    reply = MimeMessage()
    reply["From"] = "Rita Müller <rita@ccm.example>"
    reply["To"] = f"CCM <{MAILBOX}>, archive@ccm.example"
    reply["Subject"] = "Re: Freigabe für Vorlage"
    reply["Date"] = "Fri, 24 May 2024 19:20:00 +0200"
    reply["Message-ID"] = "<CAF=reply.1@mail.gmail.com>"
    reply["In-Reply-To"] = "<171657.42@ccm.example>"
    reply.set_content("Freigegeben, schöne Grüße\n")
    reply.add_alternative("<p>Freigegeben, <b>schöne</b> Grüße</p>", subtype="html")
    raw = gmail_raw(reply.as_bytes()).rstrip("=")  # Gmail may leave the padding off
    http = ScriptedHttp([ok({"id": "18fa09", "threadId": "18fa00", "raw": raw})])

    # when
    message = gateway(http).read("18fa09")

    # then
    assert query_of(http, 0)["format"] == ["raw"]
    assert message.id == "18fa09"
    assert message.thread_id == "18fa00"
    assert message.from_address == "rita@ccm.example"
    assert message.to == [MAILBOX, "archive@ccm.example"]
    assert message.subject == "Re: Freigabe für Vorlage"
    assert message.date == datetime(2024, 5, 24, 17, 20, tzinfo=UTC)
    assert message.message_id_header == "<CAF=reply.1@mail.gmail.com>"
    assert message.in_reply_to == "<171657.42@ccm.example>"
    assert message.text == "Freigegeben, schöne Grüße"
    assert message.dsn is None
    assert message.headers["content-type"].startswith("multipart/alternative")


def test_read_gmail_bounce_exposes_the_delivery_status():
    raw = gmail_raw((FIXTURES / "gmail_bounce.eml").read_bytes())
    http = ScriptedHttp([ok({"id": "18fb10", "threadId": "18fb10", "raw": raw})])

    message = gateway(http).read("18fb10")

    assert message.from_address == "mailer-daemon@googlemail.com"
    assert message.subject == "Delivery Status Notification (Failure)"
    assert message.date == datetime(2024, 5, 24, 10, 15, 31, tzinfo=timezone(timedelta(hours=-7)))
    assert message.text.startswith("** Address not found **")
    assert "Please review version 3" not in message.text  # the original is not the body
    assert message.dsn == {
        "original_recipient": "nobody@customer.example",
        "action": "failed",
        "status": "5.1.1",
        "diagnostic_code": "550 5.1.1 <nobody@customer.example>: Recipient address rejected: "
        "User unknown in virtual mailbox table",
        "original_message_id": "<171657212345.4242.8765309@ccm.example>",
    }


def test_read_postfix_bounce_prefers_the_original_recipient():
    raw = gmail_raw((FIXTURES / "postfix_bounce.eml").read_bytes())
    http = ScriptedHttp([ok({"id": "18fb11", "threadId": "18fb11", "raw": raw})])

    message = gateway(http).read("18fb11")

    assert message.text.startswith("This is the mail system at host mx.partner.example.")
    assert message.dsn == {
        "original_recipient": "claims@partner.example",
        "action": "failed",
        "status": "5.2.2",
        "diagnostic_code": "552 5.2.2 Mailbox full",
        "original_message_id": "<171657372501.77.31337@ccm.example>",
    }


def test_mark_processed_creates_the_label_once_and_labels_each_message():
    http = ScriptedHttp(
        [
            ok(
                {
                    "labels": [
                        {"id": "INBOX", "name": "INBOX", "type": "system"},
                        {"id": "UNREAD", "name": "UNREAD", "type": "system"},
                    ]
                }
            ),
            ok({"id": "Label_42", "name": "ccm-processed", "type": "user"}),
            ok({"id": "18fa01", "threadId": "18fa01", "labelIds": ["INBOX", "Label_42"]}),
            ok({"id": "18fa02", "threadId": "18fa02", "labelIds": ["INBOX", "Label_42"]}),
        ]
    )
    gw = gateway(http)

    gw.mark_processed("18fa01")
    gw.mark_processed("18fa02")

    assert calls(http) == [
        ("GET", f"{API}/labels"),
        ("POST", f"{API}/labels"),
        ("POST", f"{API}/messages/18fa01/modify"),
        ("POST", f"{API}/messages/18fa02/modify"),
    ]
    assert json.loads(http.request_sequence[1][2])["name"] == "ccm-processed"
    assert json.loads(http.request_sequence[3][2]) == {
        "addLabelIds": ["Label_42"],
        "removeLabelIds": ["UNREAD"],
    }


def test_mark_processed_reuses_an_existing_label():
    http = ScriptedHttp(
        [
            ok({"labels": [{"id": "Label_7", "name": "ccm-processed", "type": "user"}]}),
            ok({"id": "18fa01", "threadId": "18fa01", "labelIds": ["Label_7"]}),
        ]
    )

    gateway(http).mark_processed("18fa01")

    assert calls(http) == [("GET", f"{API}/labels"), ("POST", f"{API}/messages/18fa01/modify")]
    assert json.loads(http.request_sequence[1][2])["addLabelIds"] == ["Label_7"]


@pytest.mark.parametrize("configured_by", ["arguments", "settings"])
def test_service_account_acts_for_the_delegated_mailbox(
    configured_by, service_account_key, settings
):
    # given: a key file; the token endpoint and the API are both served by the mock
    path, public_pem = service_account_key
    http = ScriptedHttp(
        [
            ok({"access_token": "ya29.test-token", "expires_in": 3599, "token_type": "Bearer"}),
            ok({"resultSizeEstimate": 0}),
        ]
    )
    if configured_by == "arguments":
        gw = GmailGateway(credentials_file=str(path), delegated_user=MAILBOX, http=http)
    else:
        settings.GMAIL_SERVICE_ACCOUNT_FILE = str(path)
        settings.GMAIL_DELEGATED_USER = MAILBOX
        gw = GmailGateway(http=http)

    # when
    assert gw.list_inbox() == []

    # then: the JWT sent for the token names the mailbox as subject, with the Gmail scope
    token_uri, _, token_body, _ = http.request_sequence[0]
    assert token_uri == "https://oauth2.googleapis.com/token"
    assertion = parse_qs(token_body.decode("ascii"))["assertion"][0]
    claims = jwt.decode(assertion, certs=public_pem, audience=token_uri)
    assert claims["sub"] == MAILBOX
    assert claims["iss"] == "ccm-mailer@ccm-test.iam.gserviceaccount.com"
    assert claims["scope"] == "https://www.googleapis.com/auth/gmail.modify"
    assert http.request_sequence[1][3]["authorization"] == "Bearer ya29.test-token"


def test_gateway_without_a_key_file_is_misconfigured():
    with pytest.raises(ImproperlyConfigured, match="GMAIL_SERVICE_ACCOUNT_FILE"):
        GmailGateway(delegated_user=MAILBOX)


def test_key_file_without_a_delegated_user_is_misconfigured(service_account_key):
    with pytest.raises(ImproperlyConfigured, match="GMAIL_DELEGATED_USER"):
        GmailGateway(credentials_file=str(service_account_key[0]))


def test_email_backend_sends_each_message_through_gmail():
    # given: one message with its own Message-ID, one without
    http = ScriptedHttp(
        [
            ok({"id": "18fc01", "threadId": "18fc01", "labelIds": ["SENT"]}),
            ok({"id": "18fc02", "threadId": "18fc02", "labelIds": ["SENT"]}),
        ]
    )
    connection = get_connection(
        "notifications.channels.gmail.GmailEmailBackend", gateway=gateway(http)
    )
    alert = EmailMessage(
        "Queue stuck",
        "12 deliveries pending for 30 minutes.",
        "CCM <ops@ccm.example>",
        ["oncall@ccm.example"],
        headers={"Message-ID": "<alert.1@ccm.example>"},
    )
    report = EmailMessage(
        "Weekly report",
        "See attachment.",
        "CCM <ops@ccm.example>",
        ["board@ccm.example"],
        bcc=["archive@ccm.example"],
    )

    # when
    sent = connection.send_messages([alert, report])

    # then
    assert sent == 2
    assert calls(http) == [("POST", f"{API}/messages/send")] * 2
    first, second = sent_mime(http, 0), sent_mime(http, 1)
    assert first["Message-ID"] == "<alert.1@ccm.example>"
    assert first["Subject"] == "Queue stuck"
    assert second["Message-ID"] == report.extra_headers["Message-ID"]
    assert second["Message-ID"].endswith("@ccm.example>")
    assert second["Bcc"] == "archive@ccm.example"


def test_email_backend_raises_gmail_errors_unless_failing_silently():
    bad_request = google_error(400, "invalidArgument", "Invalid To header", "INVALID_ARGUMENT")
    message = EmailMessage("Hi", "Body", "ops@ccm.example", ["not-an-address"])

    loud = get_connection(
        "notifications.channels.gmail.GmailEmailBackend",
        gateway=gateway(ScriptedHttp([bad_request])),
    )
    with pytest.raises(GmailPermanentError):
        loud.send_messages([message])

    quiet = get_connection(
        "notifications.channels.gmail.GmailEmailBackend",
        fail_silently=True,
        gateway=gateway(ScriptedHttp([bad_request])),
    )
    assert quiet.send_messages([message]) == 0


def test_sender_for_uses_gmail_for_internal_kinds_by_default(settings):
    settings.CCM_SENDER_PROFILE = DEFAULT_SENDER_PROFILE
    assert sender_for("internal_alert") == "gmail"
    assert sender_for("approval") == "gmail"
    assert sender_for("report") == "gmail"
    assert sender_for("customer_letter") == "esp"


def test_sender_for_follows_the_setting(settings):
    settings.CCM_SENDER_PROFILE = {"report": "esp", "customer_letter": "gmail"}

    assert sender_for("report") == "esp"
    assert sender_for("customer_letter") == "gmail"
    assert sender_for("approval") == "esp"


def test_sender_for_rejects_an_unknown_channel(settings):
    settings.CCM_SENDER_PROFILE = {"report": "smtp"}

    with pytest.raises(ImproperlyConfigured):
        sender_for("report")
