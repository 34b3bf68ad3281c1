"""Internal alerts go out through the sender profile's Gmail route: the project's Gmail email
backend and gateway, here on scripted Gmail API answers (as in tests/notifications/test_gmail)."""

from __future__ import annotations

import base64
import email
import email.policy
import json

import pytest
from googleapiclient.http import HttpMockSequence

from cases import alerts, services
from cases.models import CaseAlert
from notifications.channels.gmail import GmailEmailBackend, GmailGateway
from notifications.channels.internal import internal_mail_state

MAILBOX = "ccm-alerts@northwind.example"
SENT = (
    {"status": "200", "content-type": "application/json; charset=UTF-8"},
    json.dumps({"id": "18fc01", "threadId": "18fc01", "labelIds": ["SENT"]}),
)
BAD_REQUEST = (
    {"status": "400", "content-type": "application/json; charset=UTF-8"},
    json.dumps(
        {
            "error": {
                "code": 400,
                "message": "Invalid To header",
                "errors": [{"reason": "invalidArgument", "message": "Invalid To header"}],
                "status": "INVALID_ARGUMENT",
            }
        }
    ),
)


class ScriptedGmailBackend(GmailEmailBackend):
    """GmailEmailBackend on a gateway whose HTTP answers come from `script`."""

    script: list = []
    http: HttpMockSequence | None = None

    def __init__(self, fail_silently: bool = False, **kwargs):
        type(self).http = HttpMockSequence(list(type(self).script))
        gateway = GmailGateway(http=type(self).http, delegated_user=MAILBOX, sleep=lambda _: None)
        super().__init__(fail_silently, gateway=gateway, **kwargs)


@pytest.fixture
def gmail(settings):
    settings.CCM_GMAIL_EMAIL_BACKEND = "tests.cases.test_alerts.ScriptedGmailBackend"
    return ScriptedGmailBackend


@pytest.fixture
def alert(ops) -> CaseAlert:
    case = services.case_open(case_type="incident", subject="Print room offline", by=ops)
    queued = alerts.escalation_alert_queue(
        case=case, milestone=case.milestones.get(), status="overdue"
    )
    assert queued is not None
    return queued


def test_alert_goes_out_through_gmail_once(gmail, alert):
    gmail.script = [SENT]
    # when
    assert alerts.case_alert_send_run(alert.pk) is True
    # then the Gmail API got the MIME message with the alert's Message-ID
    ((uri, method, body, _),) = gmail.http.request_sequence
    assert (method, uri.split("?")[0].endswith("/gmail/v1/users/me/messages/send")) == (
        "POST",
        True,
    )
    mime = email.message_from_bytes(
        base64.urlsafe_b64decode(json.loads(body)["raw"]), policy=email.policy.default
    )
    assert mime["Message-ID"] == alert.message_id
    assert mime["To"] == "otto@northwind.example"
    assert mime["Subject"].startswith(f"[CCM OVERDUE] {alert.case.reference} Resolution")
    alert.refresh_from_db()
    assert alert.sent_at is not None
    # and a second run sends nothing
    assert alerts.case_alert_send_run(alert.pk) is False


def test_a_refused_alert_fails_for_good_with_the_reason(gmail, alert):
    gmail.script = [BAD_REQUEST]
    # when Gmail refuses it (retrying cannot help), nothing is raised for the queue to retry
    assert alerts.case_alert_send_run(alert.pk) is False
    # then it is failed, with the reason, and the sweep leaves it alone
    alert.refresh_from_db()
    assert alert.sent_at is None
    assert internal_mail_state(alert, max_attempts=alerts.MAX_ATTEMPTS) == "failed"
    assert "Invalid To header" in alert.last_error
    assert not alerts.UNSENT_SWEEP.queryset().filter(pk=alert.pk).exists()


def test_an_alert_for_an_unconfigured_gateway_fails_once_with_the_reason(settings, alert):
    # given the profile routes alerts to Gmail, which is not set up (the demo's situation)
    settings.CCM_GMAIL_EMAIL_BACKEND = "notifications.channels.gmail.GmailEmailBackend"
    settings.GMAIL_SERVICE_ACCOUNT_FILE = None

    # when the task and then the sweep's re-run try it
    first = alerts.case_alert_send_run(alert.pk)
    again = alerts.case_alert_send_run(alert.pk)

    # then it failed once, says why, and is not tried again
    alert.refresh_from_db()
    assert (first, again) == (False, False)
    assert alert.attempts == alerts.MAX_ATTEMPTS
    assert "GMAIL_SERVICE_ACCOUNT_FILE is not set" in alert.last_error
    assert internal_mail_state(alert, max_attempts=alerts.MAX_ATTEMPTS) == "failed"
    assert not alerts.UNSENT_SWEEP.queryset().filter(pk=alert.pk).exists()


def test_alert_recipients_can_be_configured_per_team(settings, ops):
    settings.CASES_ALERT_RECIPIENTS = {
        "operations": "oncall@northwind.example; ops@northwind.example"
    }
    assert alerts.team_recipients("operations") == [
        "oncall@northwind.example",
        "ops@northwind.example",
    ]
    settings.CASES_ALERT_RECIPIENTS = {}
    assert alerts.team_recipients("operations") == ["otto@northwind.example"]
