from __future__ import annotations

import email

import pytest
from django.core import mail
from django.core.exceptions import PermissionDenied
from django.test import override_settings

from ccm import approvals
from ccm.models import AuditEvent
from documents import services as document_services
from documents.composition import DataInvalid
from notifications import signals
from notifications.channels import EmailBackend, PermanentSendError, TransientSendError
from notifications.customers import services as customer_services
from notifications.errors import IntakeError
from notifications.models import Communication, Delivery
from notifications.pipeline import dispatch, history, services
from tests.documents.factories import letter_bundle
from tests.notifications.conftest import publish

DATA = {"customer": {"name": "Ada Lovelace"}, "balance": 12.5, "as_of": "2026-05-01"}


def request(customer, by, **kwargs):
    return services.communication_request(
        template_code="letter", customer=customer, data=DATA, client="test", by=by, **kwargs
    )


def test_request_to_sent_email_with_the_pdf_attached(letter, customer, integrator, sync_tasks):
    # when
    communication, created = sync_tasks(request, customer, integrator)
    # then
    communication.refresh_from_db()
    assert created
    assert communication.state == "sent"
    assert communication.template_version == letter
    assert communication.document is not None
    assert [m.to for m in mail.outbox] == [["Ada Lovelace <ada@example.org>"]]
    sent = mail.outbox[0]
    delivery = communication.deliveries.get()
    assert sent.extra_headers["Message-ID"] == delivery.message_id
    assert sent.metadata == {
        "delivery_id": str(delivery.pk),
        "communication_id": str(communication.pk),
    }
    assert sent.subject == "Your balance, Ada Lovelace"
    _, pdf, mimetype = sent.attachments[0]
    assert mimetype == "application/pdf"
    assert pdf.startswith(b"%PDF")
    assert delivery.state == "sent"
    assert delivery.provider_message_id
    chosen = [s for s in communication.decision_trace if s.get("decision") == "chosen"]
    assert chosen == [{"channel": "email", "decision": "chosen", "address": "ada@example.org"}]


def test_every_step_is_audited(letter, customer, integrator, sync_tasks):
    communication, _ = sync_tasks(request, customer, integrator)
    actions = [step.action for step in communication.steps.all()]
    assert {
        "communication.received",
        "communication.composed",
        "communication.dispatching",
        "delivery.sent",
    } <= set(actions)
    # Every step is covered by the audit chain, and the proof holds.
    sealed = AuditEvent.objects.filter(action="communication_steps.sealed")
    assert sealed.exists()
    proof = history.communication_verify(communication.pk)
    assert (proof.ok, proof.steps, proof.unsealed) == (True, len(actions), 0)


def test_steps_of_any_detail_prove_against_the_chain(letter, customer, integrator, sync_tasks):
    """A step's hash is written without a JSON round trip where its detail allows it; the proof
    (which recomputes every hash from the stored row) holds for details that do and that do
    not: nested values, text outside ASCII, dates, tuples, numeric keys, a request id."""
    from datetime import date

    from ccm import context

    communication, _ = sync_tasks(request, customer, integrator)
    details = [
        {},
        {"to": "sent", "from": "sending", "provider_message_id": "pm-1"},
        {"channels": ["email", "sms"], "version": 7, "nested": {"b": [1, 2.5], "a": None}},
        {"reason": "Zurück an den Absender — «adresse inconnue»", "on": date(2026, 5, 1)},
        {"ids": (3, 1, 2), "ok": True},
        {10: "ten", 2: "two"},  # JSON makes these keys strings, sorted anew
        {"outer": {1: "one"}},
    ]
    token = context.set_request_id("req-steps-1")
    try:
        history.steps_record(
            [
                history.Step(communication.pk, f"test.detail_{i}", detail, delivery_id=i or None)
                for i, detail in enumerate(details)
            ],
            actor=integrator,
        )
    finally:
        context.reset_request_id(token)
    history.steps_seal_all()
    proof = history.communication_verify(communication.pk)
    assert (proof.ok, proof.unsealed, proof.reason) == (True, 0, "")
    stored = {s.action: s.detail for s in communication.steps.filter(action__startswith="test.")}
    assert stored["test.detail_5"] == {"10": "ten", "2": "two"}
    assert stored["test.detail_3"]["on"] == "2026-05-01"
    assert stored["test.detail_4"]["ids"] == [3, 1, 2]


def test_same_idempotency_key_makes_one_communication(letter, customer, integrator, sync_tasks):
    first, _ = sync_tasks(request, customer, integrator, idempotency_key="k1")
    second, created = sync_tasks(request, customer, integrator, idempotency_key="k1")
    assert (second.pk, created) == (first.pk, False)
    assert len(mail.outbox) == 1
    # The repeat inserted nothing: the one communication has one `received` step.
    received = first.steps.filter(action="communication.received")
    assert received.count() == 1


def test_bad_data_is_refused_at_intake(letter, customer, integrator):
    with pytest.raises(DataInvalid) as excinfo:
        services.communication_request(
            template_code="letter",
            customer=customer,
            data={"balance": "x"},
            client="t",
            by=integrator,
        )
    # (the customer block is the system's, from the customer record: never missing)
    assert {e.field for e in excinfo.value.errors} == {"balance", "as_of"}
    assert not Communication.objects.exists()


def test_unknown_or_unpublished_template_is_refused(customer, integrator):
    with pytest.raises(IntakeError, match="no template"):
        services.communication_request(
            template_code="nope", customer=customer, data={}, client="t", by=integrator
        )


def test_rolled_back_request_sends_nothing(letter, customer, integrator, sync_tasks):
    from django.db import transaction

    def doomed():
        with transaction.atomic():
            request(customer, integrator)
            raise RuntimeError("the caller's transaction failed")

    with pytest.raises(RuntimeError):
        sync_tasks(doomed)
    assert not Communication.objects.exists()
    assert mail.outbox == []


def test_release_gate_waits_for_a_reviewer(author, reviewer, customer, integrator, sync_tasks):
    publish(
        letter_bundle(
            release={"required": False, "threshold": {"field": "balance", "above": 1000}}
        ),
        author=author,
        reviewer=reviewer,
    )
    # below the threshold: sent at once
    small, _ = sync_tasks(request, customer, integrator)
    small.refresh_from_db()
    assert small.state == "sent"
    # above it: waits for a release
    big, _ = sync_tasks(
        services.communication_request,
        template_code="letter",
        customer=customer,
        data={**DATA, "balance": 5000},
        client="t",
        by=integrator,
    )
    big.refresh_from_db()
    assert big.state == "awaiting_approval"
    assert len(mail.outbox) == 1
    approval = approvals.pending_for(big)
    integrator.groups.add(*reviewer.groups.all())  # even a reviewer cannot release their own
    with pytest.raises(PermissionDenied, match="Four-eyes"):
        approvals.approval_decide(approval=approval, by=integrator, decision="approve")
    sync_tasks(approvals.approval_decide, approval=approval, by=reviewer, decision="approve")
    big.refresh_from_db()
    assert big.state == "sent"
    assert len(mail.outbox) == 2


def test_rejected_release_sends_nothing(author, reviewer, customer, integrator, sync_tasks):
    publish(letter_bundle(release={"required": True}), author=author, reviewer=reviewer)
    communication, _ = sync_tasks(request, customer, integrator)
    approval = approvals.pending_for(communication)
    sync_tasks(
        approvals.approval_decide, approval=approval, by=reviewer, decision="reject", comment="no"
    )
    communication.refresh_from_db()
    assert (communication.state, communication.failure_reason) == ("rejected", "no")
    assert mail.outbox == []


def test_compose_failure_is_stored_with_reason_and_signalled(
    letter, customer, integrator, sync_tasks
):
    # given data that passed intake but breaks the template (a schema change is simulated)
    communication, _ = services.communication_request(
        template_code="letter", customer=customer, data=DATA, client="t", by=integrator
    )
    Communication.objects.filter(pk=communication.pk).update(data={"balance": 1})
    failures = []
    signals.communication_compose_failed.connect(
        lambda **kw: failures.append(kw), weak=False, dispatch_uid="t"
    )
    try:
        from notifications.pipeline.tasks import communication_compose

        communication_compose(communication.pk)
    finally:
        signals.communication_compose_failed.disconnect(dispatch_uid="t")
    communication.refresh_from_db()
    assert communication.state == "compose_failed"
    assert "as_of" in {e["field"] for e in communication.failure_errors}
    assert len(failures) == 1


def test_tasks_are_safe_to_run_twice(letter, customer, integrator, sync_tasks):
    from notifications.pipeline import tasks

    communication, _ = sync_tasks(request, customer, integrator)
    delivery = communication.deliveries.get()
    tasks.communication_compose(communication.pk)
    tasks.communication_gate(communication.pk)
    tasks.delivery_dispatch(delivery.pk)
    assert len(mail.outbox) == 1
    assert Delivery.objects.count() == 1


def test_transient_errors_retry_then_send(letter, customer, integrator, sync_tasks, monkeypatch):
    calls = []
    real_send = EmailBackend.send

    def flaky(self, delivery):
        calls.append(delivery.pk)
        if len(calls) < 3:
            raise TransientSendError("429 Too Many Requests")
        return real_send(self, delivery)

    monkeypatch.setattr(EmailBackend, "send", flaky)
    monkeypatch.setattr(dispatch, "backoff_seconds", lambda *a, **k: 0)
    communication, _ = sync_tasks(request, customer, integrator)
    delivery = communication.deliveries.get()
    assert (delivery.state, len(calls), len(mail.outbox)) == ("sent", 3, 1)


@override_settings(CCM_DISPATCH_INLINE_RETRIES=0, CCM_DISPATCH_MAX_ATTEMPTS=2)
def test_transient_errors_back_off_then_give_up(
    letter, customer, integrator, sync_tasks, monkeypatch
):
    monkeypatch.setattr(
        EmailBackend, "send", lambda self, d: (_ for _ in ()).throw(TransientSendError("503"))
    )
    failed = []
    signals.delivery_failed.connect(lambda **kw: failed.append(kw), weak=False, dispatch_uid="t")
    try:
        communication, _ = sync_tasks(request, customer, integrator)
        delivery = communication.deliveries.get()
        assert delivery.state == "pending"
        assert delivery.next_attempt_at is not None
        assert delivery.last_error == "503"
        Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=None)
        from notifications.pipeline import tasks

        sync_tasks(tasks.delivery_dispatch, delivery.pk)
    finally:
        signals.delivery_failed.disconnect(dispatch_uid="t")
    delivery.refresh_from_db()
    assert delivery.state == "failed"
    assert "gave up after 2 attempts" in delivery.last_error
    assert len(failed) == 1


def test_permanent_error_fails_with_the_providers_reason(
    letter, customer, integrator, sync_tasks, monkeypatch
):
    def refuse(self, delivery):
        raise PermanentSendError("ESP rejected the message (422): Invalid 'To' address")

    monkeypatch.setattr(EmailBackend, "send", refuse)
    communication, _ = sync_tasks(request, customer, integrator)
    delivery = communication.deliveries.get(channel="email")
    assert delivery.state == "failed"
    assert "Invalid 'To' address" in delivery.last_error
    assert delivery.attempts == 1


def test_no_reachable_channel_is_undeliverable(letter, integrator, sync_tasks, admin_user):
    nobody, _ = customer_services.customer_upsert(
        external_ref="C-2", name="No Contact", by=admin_user
    )
    communication, _ = sync_tasks(request, nobody, integrator)
    communication.refresh_from_db()
    assert communication.state == "undeliverable"


def test_stuck_sending_is_reconciled_not_resent(letter, customer, integrator, sync_tasks, settings):
    # given a delivery whose worker died after claiming it
    settings.CCM_SENDING_STALE_AFTER_S = 0
    communication, _ = services.communication_request(
        template_code="letter", customer=customer, data=DATA, client="t", by=integrator
    )
    from notifications.pipeline import tasks

    tasks.communication_compose(communication.pk)
    tasks.communication_gate(communication.pk)
    delivery = communication.deliveries.get()
    Delivery.objects.filter(pk=delivery.pk).update(state="sending")
    # when the sweeper reconciles it and the provider cannot be asked (test backend)
    sync_tasks(tasks.delivery_reconcile, delivery.pk)
    # then it is handed back to dispatch and sent once
    delivery.refresh_from_db()
    assert delivery.state == "sent"
    assert len(mail.outbox) == 1


def test_message_id_is_a_valid_header(letter, customer, integrator, sync_tasks):
    sync_tasks(request, customer, integrator)
    raw = mail.outbox[0].message().as_bytes()
    parsed = email.message_from_bytes(raw)
    assert parsed["Message-ID"].startswith("<ccm.")


def test_portal_link_template_carries_a_working_link(
    author, reviewer, customer, integrator, sync_tasks, client
):
    # given the library's renewal pack: print + email, delivered as a portal link
    from documents.bundle import read_folder
    from documents.demo import LIBRARY

    version = publish(read_folder(LIBRARY / "policy_renewal"), author=author, reviewer=reviewer)
    data = dict(version.content["samples"]["default"])
    data.pop("portal_url", None)
    # when
    communication, _ = sync_tasks(
        services.communication_request,
        template_code="policy_renewal",
        customer=customer,
        data=data,
        client="t",
        by=integrator,
    )
    communication.refresh_from_db()
    assert communication.state == "awaiting_approval"  # the renewal pack needs a release
    sync_tasks(
        approvals.approval_decide,
        approval=approvals.pending_for(communication),
        by=reviewer,
        decision="approve",
    )
    # then the link made while composing is in the archived data, the letter and the email
    communication.refresh_from_db()
    link = communication.data["portal_url"]
    assert link.startswith("http://127.0.0.1:8000/p/")
    assert link in mail.outbox[0].body
    assert not mail.outbox[0].attachments  # a portal link, not the PDF
    check, _ = document_services.document_regenerate(document=communication.document)
    assert check.matched
    page = client.get(link.removeprefix("http://127.0.0.1:8000"))
    assert page.status_code == 200
    communication.refresh_from_db()
    assert communication.state == "viewed"


def test_suppression_is_checked_again_before_sending(letter, customer, integrator, sync_tasks):
    from notifications.pipeline import tasks

    communication, _ = services.communication_request(
        template_code="letter", customer=customer, data=DATA, client="t", by=integrator
    )
    tasks.communication_compose(communication.pk)
    tasks.communication_gate(communication.pk)
    # a complaint arrives between choosing the channel and sending
    customer_services.suppression_add(
        channel="email", address="ada@example.org", reason="complaint"
    )
    sync_tasks(tasks.delivery_dispatch, communication.deliveries.get().pk)
    delivery = communication.deliveries.get(channel="email")
    assert delivery.state == "failed"
    assert delivery.last_error == "the address is suppressed (complaint)"
    assert mail.outbox == []
    # and the fallback chain took the message to the customer's phone instead
    assert communication.deliveries.get(channel="sms").state == "sent"
