"""The Gmail intake of the shared mailbox: emailed reprint requests, anything else to a case,
approvals decided by reply (and every way a reply must be refused), bounces, and never twice."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.core import mail
from django.utils import timezone
from freezegun import freeze_time

from cases.inbox import intake
from cases.models import ApprovalMail, Case, ProcessedInboxMessage, ReprintRequest
from cases.requests import approval_mail, reprints
from ccm import approvals
from ccm.models import AuditEvent
from ccm.roles import Role
from notifications.customers import services as customer_services
from notifications.models import (
    Communication,
    ContactPoint,
    Delivery,
    DeliveryEvent,
    Suppression,
)
from notifications.pipeline import services, tasks
from notifications.pipeline.message_ids import message_id_issued
from tests.cases import reprint_fixtures
from tests.cases.gmail_mailbox import Mailbox
from tests.cases.gmail_mailbox import mail as email_bytes

original = reprint_fixtures.original
rita = reprint_fixtures.rita

BOUNCE = Path(__file__).parents[1] / "notifications" / "gmail_fixtures" / "gmail_bounce.eml"
REF = "NW-2048-7731"


@pytest.fixture
def mailbox() -> Mailbox:
    return Mailbox()


@pytest.fixture
def statements(letter, integrator, admin_user, sync_tasks) -> dict[str, Communication]:
    """Customer NW-2048-7731 was sent a balance letter for March and one for April 2026."""
    customer, _ = customer_services.customer_upsert(
        external_ref=REF, name="Eleanor Hartley", emails=["eleanor@example.com"], by=admin_user
    )
    sent = {}
    for month in ("2026-03", "2026-04"):
        communication, _ = services.communication_request(
            template_code="letter",
            customer=customer,
            data={"customer": {"name": "Eleanor Hartley"}, "balance": 5, "as_of": f"{month}-28"},
            client="t",
            by=integrator,
        )
        sync_tasks(tasks.communication_compose, communication.pk)
        communication.refresh_from_db()
        sent[month] = communication
    return sent


def poll(run, mailbox: Mailbox) -> dict[str, int]:
    return run(intake.inbox_poll, gateway=mailbox.gateway())


def passed(sender: str) -> str:
    """What the receiving server stamps on a mail whose From domain passed DMARC."""
    domain = sender.rpartition("@")[2].strip(">").lower()
    return (
        f"mx.google.com; dkim=pass header.i=@{domain} header.s=s1; "
        f"spf=pass (google.com: domain of x@{domain} designates 192.0.2.1) "
        f"smtp.mailfrom=x@{domain}; dmarc=pass (p=REJECT) header.from={domain}"
    )


def deliver(mailbox: Mailbox, *, sender: str, subject: str, body: str, **headers) -> str:
    headers.setdefault("Authentication-Results", passed(sender))
    if headers["Authentication-Results"] is None:
        del headers["Authentication-Results"]
    return mailbox.deliver(
        email_bytes(
            sender=sender,
            subject=subject,
            body=body,
            message_id=f"<{len(mailbox.messages)}.{sender.replace('@', '.')}@mail.example>",
            headers=headers,
        )
    )


# --- reprint requests by email ---------------------------------------------------------------


def test_an_emailed_reprint_request_becomes_a_reprint_of_that_month(
    statements, mailbox, sync_tasks
):
    mail.outbox.clear()
    gmail_id = deliver(
        mailbox,
        sender="Eleanor Hartley <Eleanor@example.com>",
        subject=f"Reprint request {REF} balance letter March 2026",
        body="Please send me a copy, I lost mine.",
    )
    # when the intake runs
    assert poll(sync_tasks, mailbox) == {"reprint_request": 1}
    # then the March letter is reprinted to the sender, an address we hold
    reprint = ReprintRequest.objects.get()
    assert reprint.document == statements["2026-03"].document
    assert (reprint.source, reprint.identity_verification) == ("email", "known_email")
    assert (reprint.channel, reprint.address) == ("email", "eleanor@example.com")
    assert reprint.state == "fulfilled"
    assert mail.outbox[-1].to == ["Eleanor Hartley <eleanor@example.com>"]
    # and the message is labelled processed and recorded once
    assert mailbox.labelled(gmail_id)
    record = ProcessedInboxMessage.objects.get(gmail_id=gmail_id)
    assert (record.outcome, record.case) == ("reprint_request", reprint.case)


def test_the_reference_may_be_written_in_lower_case(statements, mailbox, sync_tasks):
    deliver(
        mailbox,
        sender="eleanor@example.com",
        subject="reprint please",
        body=f"my account {REF.lower()}, the balance letter from april 2026",
    )
    assert poll(sync_tasks, mailbox) == {"reprint_request": 1}
    assert ReprintRequest.objects.get().document == statements["2026-04"].document


def test_a_request_from_an_unknown_sender_waits_for_an_agent_to_verify(
    statements, mailbox, agent, reviewer, sync_tasks
):
    deliver(
        mailbox,
        sender="someone@elsewhere.example",
        subject=f"Reprint {REF}",
        body="balance letter for April 2026 please",
    )
    poll(sync_tasks, mailbox)
    reprint = ReprintRequest.objects.get()
    assert reprint.document == statements["2026-04"].document
    assert reprint.state == "requested"
    assert reprint.release_reasons == ["the requester's identity is not verified"]
    assert reprint.address == "eleanor@example.com"  # never the stranger's address
    assert "Verify the requester's identity" in reprint.case.notes.get().body
    # when an agent confirms who asked, it goes on as any request would
    sync_tasks(
        reprints.reprint_request_submit,
        request=reprint,
        by=agent,
        identity_verification="security_questions",
    )
    reprint.refresh_from_db()
    assert reprint.state == "fulfilled"
    assert reprint.requested_by == agent


def test_what_cannot_be_parsed_becomes_a_case_quoting_the_mail(statements, mailbox, sync_tasks):
    deliver(mailbox, sender="x@y.example", subject="Question", body="Why is my bill so high?")
    deliver(
        mailbox,
        sender="eleanor@example.com",
        subject=f"Reprint {REF}",
        body="Could you send the thing again?",
    )
    assert poll(sync_tasks, mailbox) == {"case": 2}
    assert not ReprintRequest.objects.exists()
    question = Case.objects.get(subject="Email: Question")
    assert (question.case_type, question.team, question.customer) == (
        "correspondence",
        "customer_relations",
        None,
    )
    assert "Why is my bill so high?" in question.description
    assert "From: x@y.example" in question.description
    reprint_case = Case.objects.get(subject=f"Email: Reprint {REF}")
    assert reprint_case.case_type == "reprint"
    assert reprint_case.customer.external_ref == REF
    assert "could not find a document type or a matching document" in reprint_case.description


def test_running_twice_does_nothing_twice_even_after_a_crash_before_labelling(
    statements, mailbox, sync_tasks
):
    gmail_id = deliver(
        mailbox,
        sender="eleanor@example.com",
        subject=f"Reprint request {REF} balance letter March 2026",
        body="",
    )
    # given labelling fails after the work committed (as a crash would leave it)
    mailbox.refuse_modify = True
    assert poll(sync_tasks, mailbox) == {"error": 1}
    assert not mailbox.labelled(gmail_id)
    assert ReprintRequest.objects.count() == 1
    # when the intake runs again, twice
    mailbox.refuse_modify = False
    assert poll(sync_tasks, mailbox) == {"reprint_request": 1}
    assert poll(sync_tasks, mailbox) == {}
    # then the message was handled once and is labelled now
    assert mailbox.labelled(gmail_id)
    assert ReprintRequest.objects.count() == 1
    assert Communication.objects.filter(source="reprint").count() == 1
    assert ProcessedInboxMessage.objects.count() == 1


def test_auto_replies_are_ignored(statements, mailbox, sync_tasks):
    deliver(
        mailbox,
        sender="eleanor@example.com",
        subject="Out of office",
        body="I am away.",
        **{"Auto-Submitted": "auto-replied"},
    )
    assert poll(sync_tasks, mailbox) == {"ignored": 1}
    assert not Case.objects.exists()


# --- approvals by reply ------------------------------------------------------------------------


@pytest.fixture
def waiting(original, customer, agent, rita, sync_tasks) -> ReprintRequest:
    """A reprint to a new address, waiting for release; rita was mailed about it."""
    reprint = sync_tasks(
        reprints.reprint_request_create,
        customer=customer,
        document=original.document,
        reason="Sent to the wrong flat",
        channel="email",
        address="ada@new-home.example",
        identity_verification="in_branch_with_id",
        by=agent,
    )
    reprint.refresh_from_db()
    assert reprint.state == "awaiting_release"
    return reprint


def token_of(reviewer) -> str:
    found = approval_mail.find_token(
        subject=ApprovalMail.objects.get(reviewer=reviewer).subject, text=""
    )
    assert found
    return found


def reply(mailbox: Mailbox, *, sender: str, token: str, first_line: str) -> str:
    return deliver(
        mailbox,
        sender=sender,
        subject=f"Re: Approval needed: reprint [ccm:{token}]",
        body=f"{first_line}\n\nOn Monday you wrote:\n> Reply with APPROVE or REJECT\n",
    )


def test_the_reviewer_is_mailed_with_a_token_through_the_gmail_route(waiting, rita, agent):
    sent = [m for m in mail.outbox if m.to == [rita.email]]
    assert len(sent) == 1
    assert sent[0].from_email == "ccm-alerts@northwind.example"  # the delegated mailbox
    token = token_of(rita)
    assert f"[ccm:{token}]" in sent[0].subject
    assert f"[ccm:{token}]" in sent[0].body
    assert "ada@new-home.example" in sent[0].body
    # the requester gets none (they cannot decide it)
    assert not ApprovalMail.objects.filter(reviewer=agent).exists()


def test_a_reply_of_approve_from_the_reviewer_releases_it(waiting, rita, mailbox, sync_tasks):
    reply(
        mailbox, sender="Rita <RITA@northwind.example>", token=token_of(rita), first_line="approve"
    )
    assert poll(sync_tasks, mailbox) == {"approval_decided": 1}
    waiting.refresh_from_db()
    assert waiting.state == "fulfilled"
    assert waiting.released_by == rita
    approval = approvals.pending_for(waiting) or waiting_approval(waiting)
    assert (approval.state, approval.decided_by) == ("approved", rita)


def waiting_approval(reprint):
    from cases.requests.selectors import last_approval

    return last_approval(reprint)


def test_a_reply_of_reject_rejects_it_with_the_line_as_reason(waiting, rita, mailbox, sync_tasks):
    reply(mailbox, sender=rita.email, token=token_of(rita), first_line="REJECT not the customer")
    poll(sync_tasks, mailbox)
    waiting.refresh_from_db()
    assert waiting.state == "rejected"
    assert "REJECT not the customer" in waiting.failure_reason


def assert_still_pending(reprint, why: str) -> None:
    reprint.refresh_from_db()
    assert reprint.state == "awaiting_release"
    assert waiting_approval(reprint).state == "pending"
    assert why in AuditEvent.objects.filter(action="approval.reply_ignored").last().after["reason"]


@pytest.mark.parametrize(
    "sender",
    ["mallory@evil.example", "Rita <rita@northwind.example.evil>", "rita@northwind.examplE2"],
)
def test_a_reply_from_another_address_is_ignored(waiting, rita, mailbox, sync_tasks, sender):
    reply(mailbox, sender=sender, token=token_of(rita), first_line="APPROVE")
    assert poll(sync_tasks, mailbox) == {"approval_refused": 1}
    assert_still_pending(waiting, "not from the reviewer's address")
    # and the reviewer's own token still works
    reply(mailbox, sender=rita.email, token=token_of(rita), first_line="APPROVE")
    assert poll(sync_tasks, mailbox) == {"approval_decided": 1}


@pytest.mark.parametrize(
    "results",
    [
        None,  # no Authentication-Results at all
        "mx.google.com; spf=neutral smtp.mailfrom=northwind.example; dkim=none",
        "mx.google.com; spf=pass smtp.mailfrom=northwind.example; dkim=none; dmarc=none",
        # written by the sender, not stamped by our receiving server
        "mx.evil.example; dkim=pass header.d=northwind.example; dmarc=pass",
        # a good signature, but of another domain than the From
        "mx.google.com; dkim=pass header.d=evil.example; dmarc=fail header.from=northwind.example",
    ],
)
def test_a_reply_the_receiving_server_did_not_authenticate_never_decides(
    waiting, rita, mailbox, sync_tasks, results
):
    deliver(
        mailbox,
        sender=rita.email,
        subject=f"Re: Approval needed [ccm:{token_of(rita)}]",
        body="APPROVE",
        **{"Authentication-Results": results},
    )
    assert poll(sync_tasks, mailbox) == {"approval_refused": 1}
    assert_still_pending(waiting, "failed sender authentication")
    record = ProcessedInboxMessage.objects.get()
    assert record.detail.startswith("the mail failed sender authentication")


def test_a_reply_with_an_aligned_dkim_signature_decides(waiting, rita, mailbox, sync_tasks):
    deliver(
        mailbox,
        sender=rita.email,
        subject=f"Re: Approval needed [ccm:{token_of(rita)}]",
        body="APPROVE",
        **{
            "Authentication-Results": "mx.google.com; spf=neutral; "
            "dkim=pass header.i=@mail.northwind.example header.d=northwind.example"
        },
    )
    assert poll(sync_tasks, mailbox) == {"approval_decided": 1}


@pytest.mark.parametrize(
    "sender",
    [
        "rita@northwind.example <mallory@evil.example>",
        '"rita@northwind.example" <mallory@evil.example>',
        "rita@northwind.example, mallory@evil.example",
    ],
)
def test_a_from_with_display_name_games_never_decides(waiting, rita, mailbox, sync_tasks, sender):
    # the attacker's own domain passes DMARC; the From shows the reviewer's address
    deliver(
        mailbox,
        sender=sender,
        subject=f"Re: Approval needed [ccm:{token_of(rita)}]",
        body="APPROVE",
        **{"Authentication-Results": passed("mallory@evil.example")},
    )
    assert poll(sync_tasks, mailbox) == {"approval_refused": 1}
    assert_still_pending(waiting, "failed sender authentication")


def test_a_reply_with_a_forged_sender_is_ignored(waiting, rita, mailbox, sync_tasks):
    # the From is rita's, but the receiving server found it forged
    deliver(
        mailbox,
        sender=rita.email,
        subject=f"Re: Approval needed [ccm:{token_of(rita)}]",
        body="APPROVE",
        **{"Authentication-Results": "mx.google.com; spf=fail smtp.mailfrom=x.example; dmarc=fail"},
    )
    assert poll(sync_tasks, mailbox) == {"approval_refused": 1}
    assert_still_pending(waiting, "failed sender authentication")


def test_an_automatic_reply_never_decides(waiting, rita, mailbox, sync_tasks):
    deliver(
        mailbox,
        sender=rita.email,
        subject=f"Automatic reply: Approval needed [ccm:{token_of(rita)}]",
        body="Approve requests go to Rory while I am away.",
        **{"Auto-Submitted": "auto-replied"},
    )
    assert poll(sync_tasks, mailbox) == {"ignored": 1}
    waiting.refresh_from_db()
    assert waiting.state == "awaiting_release"


def test_a_reply_that_is_not_a_decision_is_ignored(waiting, rita, mailbox, sync_tasks):
    reply(mailbox, sender=rita.email, token=token_of(rita), first_line="Maybe? Call me.")
    poll(sync_tasks, mailbox)
    assert_still_pending(waiting, "neither APPROVE nor REJECT")


def test_a_token_is_used_once(waiting, rita, reviewer2, make_user, mailbox, sync_tasks):
    token = token_of(rita)
    reply(mailbox, sender=rita.email, token=token, first_line="APPROVE")
    poll(sync_tasks, mailbox)
    # when the same reply arrives again (a forward, a resend)
    reply(mailbox, sender=rita.email, token=token, first_line="REJECT")
    assert poll(sync_tasks, mailbox) == {"approval_refused": 1}
    waiting.refresh_from_db()
    assert waiting.state == "fulfilled"
    assert (
        "already used"
        in AuditEvent.objects.filter(action="approval.reply_ignored").last().after["reason"]
    )


def test_an_expired_token_is_ignored(waiting, rita, mailbox, sync_tasks, settings):
    token = token_of(rita)
    reply(mailbox, sender=rita.email, token=token, first_line="APPROVE")
    later = timezone.now() + timedelta(hours=settings.CASES_APPROVAL_REPLY_TTL_HOURS, minutes=1)
    with freeze_time(later):
        assert poll(sync_tasks, mailbox) == {"approval_refused": 1}
    assert_still_pending(waiting, "token expired")


def test_a_tampered_token_is_ignored(waiting, rita, mailbox, sync_tasks):
    token = token_of(rita)
    reply(mailbox, sender=rita.email, token=token[:-2] + "xx", first_line="APPROVE")
    poll(sync_tasks, mailbox)
    assert_still_pending(waiting, "bad signature")


def test_the_requester_replying_to_their_own_approval_is_refused(
    original, customer, make_user, mailbox, sync_tasks
):
    # given a reviewer who also works as an agent files a reprint to a new address
    dual = make_user(
        "dual", Role.SERVICE_AGENT, Role.COMPLIANCE_REVIEWER, email="dual@northwind.example"
    )
    reprint = sync_tasks(
        reprints.reprint_request_create,
        customer=customer,
        document=original.document,
        reason="Lost",
        channel="email",
        address="ada@elsewhere.example",
        identity_verification="one_time_passcode",
        by=dual,
    )
    assert not ApprovalMail.objects.filter(reviewer=dual).exists()
    # and somehow holds a reply token of their own for it
    token = approval_mail.reply_token(approval=approvals.pending_for(reprint), reviewer=dual)
    # when they reply APPROVE from their own address
    reply(mailbox, sender=dual.email, token=token, first_line="APPROVE")
    assert poll(sync_tasks, mailbox) == {"approval_refused": 1}
    # then four-eyes refuses it and nothing changes
    assert_still_pending(reprint, "Four-eyes rule")


# --- bounces -----------------------------------------------------------------------------------


def test_a_bounce_report_bounces_its_delivery(original, mailbox, sync_tasks):
    delivery = original.deliveries.get()
    raw = BOUNCE.read_bytes()
    raw = raw.replace(
        b"171657212345.4242.8765309@ccm.example", delivery.message_id.strip("<>").encode()
    )
    raw = raw.replace(b"nobody@customer.example", b"ada@example.org")
    gmail_id = mailbox.deliver(raw)
    # when the intake reads the mailbox
    assert poll(sync_tasks, mailbox) == {"bounce": 1}
    # then it is stored like an ESP's report and applied by tracking
    event = DeliveryEvent.objects.get(provider="gmail")
    assert (event.event_id, event.delivery, event.event_type, event.hard) == (
        gmail_id,
        delivery,
        "bounced",
        True,
    )
    assert event.processed_at is not None
    delivery.refresh_from_db()
    assert delivery.state == "bounced"
    assert not ContactPoint.objects.get(value="ada@example.org").valid
    assert Suppression.objects.filter(address="ada@example.org", reason="hard_bounce").exists()


GMAIL_RESULTS = (
    b"Authentication-Results: mx.google.com;\n"
    b"       dkim=pass header.i=@googlemail.com header.s=20230601 header.b=Xq3wK9dE;\n"
)


def bounce_of(message_id: str, *, replace: tuple[bytes, bytes] | None = None) -> bytes:
    raw = BOUNCE.read_bytes()
    assert GMAIL_RESULTS in raw
    raw = raw.replace(b"171657212345.4242.8765309@ccm.example", message_id.strip("<>").encode())
    raw = raw.replace(b"nobody@customer.example", b"ada@example.org")
    if replace is not None:
        assert replace[0] in raw
        raw = raw.replace(*replace)
    return raw


def test_every_message_id_ccm_issues_carries_a_seal(original):
    delivery = original.deliveries.get()
    guessable = f"<ccm.{original.pk}.0.{delivery.channel}@ccm.localhost>"
    assert delivery.message_id != guessable
    assert message_id_issued(delivery.message_id)
    assert not message_id_issued(guessable)
    assert not message_id_issued(delivery.message_id.replace(".0.", ".1."))


@pytest.mark.parametrize(
    ("forgery", "why"),
    [
        # the mail system's name, but the receiving server stamped no result
        ((GMAIL_RESULTS, b""), "no Authentication-Results from the receiving server"),
        # results the sender wrote itself
        ((b"mx.google.com;\n", b"mx.attacker.example;\n"), "no Authentication-Results"),
        # anyone's report, authenticated for their own domain
        (
            (
                b"From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>",
                b"From: Mail Delivery Subsystem <mailer-daemon@attacker.example>",
            ),
            "not from the mail system",
        ),
    ],
)
def test_a_forged_bounce_changes_nothing_and_is_kept_for_review(
    original, mailbox, sync_tasks, forgery, why
):
    delivery = original.deliveries.get()
    gmail_id = mailbox.deliver(bounce_of(delivery.message_id, replace=forgery))
    # when the intake reads it
    assert poll(sync_tasks, mailbox) == {"bounce_refused": 1}
    # then the delivery, the address and the suppression list are as they were
    assert not DeliveryEvent.objects.exists()
    delivery.refresh_from_db()
    assert delivery.state != "bounced"
    assert ContactPoint.objects.get(value="ada@example.org").valid
    assert not Suppression.objects.exists()
    # and the inbox record says why, for review
    record = ProcessedInboxMessage.objects.get(gmail_id=gmail_id)
    assert record.outcome == "bounce_refused"
    assert why in record.detail
    assert AuditEvent.objects.filter(action="inbox.bounce_refused").count() == 1


def test_a_real_bounce_naming_a_guessed_message_id_changes_nothing(original, mailbox, sync_tasks):
    delivery = original.deliveries.get()
    # the counter-based id an attacker could compute, in a report the mail system did send
    guessed = f"<ccm.{original.pk}.0.{delivery.channel}@ccm.localhost>"
    Delivery.objects.filter(pk=delivery.pk).update(message_id=guessed)
    mailbox.deliver(bounce_of(guessed))
    assert poll(sync_tasks, mailbox) == {"bounce_refused": 1}
    delivery.refresh_from_db()
    assert delivery.state != "bounced"
    assert not Suppression.objects.exists()
    assert "a Message-ID CCM did not issue" in ProcessedInboxMessage.objects.get().detail
