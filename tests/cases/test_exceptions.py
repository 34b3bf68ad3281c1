"""Exception cases: failures in the pipeline open one case for operations (never two), who
regenerate or resend from it; the case resolves itself when the communication is sent."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.core import mail
from django.db import IntegrityError, connection, connections, transaction
from django.utils import timezone

from cases import exception_cases, receivers, selectors
from cases.models import Case, CaseAlert, CaseCommunication
from ccm.models import AuditEvent
from documents.composition import DataInvalid
from documents.services import RegenerationMismatch, document_regenerate
from notifications import signals
from notifications.channels import tracking
from notifications.customers import services as customer_services
from notifications.models import Communication, DeliveryEvent
from notifications.pipeline import services, tasks
from notifications.pipeline.recovery import RecoveryError
from tests.cases.conftest import DATA, request, stricter_letter
from tests.documents.factories import letter_bundle
from tests.notifications.conftest import publish


def test_compose_failure_opens_an_exception_for_operations_with_an_alert(
    library, compose_failed, customer, ops
):
    # then one case in the operations queue says what failed and what to do
    case = Case.objects.get()
    assert (case.case_type, case.exception_kind, case.team) == (
        "exception",
        "compose_failed",
        "operations",
    )
    assert case.reference.startswith("CASE-")
    assert case.customer == customer
    assert case.details == {"template": "letter", "communication": compose_failed.pk}
    assert [e["field"] for e in case.error_details["errors"]] == ["account"]
    assert case.next_action.startswith("Correct account in the data, then regenerate")
    assert CaseCommunication.objects.get(case=case).communication == compose_failed
    # and operations got the exception_alert mail through the Gmail route
    alert = mail.outbox[-1]
    assert alert.to == ["otto@northwind.example"]
    assert alert.from_email == "ccm-alerts@northwind.example"
    assert alert.subject == f"[CCM HIGH] {case.reference} \N{EN DASH} letter for C-1: 1 field error"
    assert "account" in alert.body
    assert alert.extra_headers["Message-ID"] == CaseAlert.objects.get(case=case).message_id


def test_the_same_failure_twice_makes_one_case_updated(compose_failed, ops):
    case = Case.objects.get()
    # when the failure is reported again
    signals.communication_compose_failed.send(
        sender=Communication, communication=compose_failed, reason=compose_failed.failure_reason
    )
    # then the one case counts it, and nobody is alerted twice
    case.refresh_from_db()
    assert Case.objects.count() == 1
    assert case.occurrences == 2
    assert AuditEvent.objects.filter(action="case.exception_recurred").count() == 1
    assert CaseAlert.objects.count() == 1
    # and the database refuses a second open case for it, whoever tries
    with pytest.raises(IntegrityError), transaction.atomic():
        Case.objects.create(
            reference="CASE-2026-999999",
            case_type="exception",
            subject="the same failure",
            team="operations",
            received_at=timezone.now(),
            dedupe_key=case.dedupe_key,
        )


def test_regenerate_with_corrected_data_sends_it_and_resolves_the_case(
    compose_failed, ops, sync_tasks
):
    case = Case.objects.get()
    mail.outbox = []
    # when operations correct the data and regenerate
    sync_tasks(
        exception_cases.exception_regenerate,
        case=case,
        data={**DATA, "account": "ACC-42"},
        by=ops,
    )
    # then the communication was composed against version 2 and sent to the customer
    compose_failed.refresh_from_db()
    assert compose_failed.state == "sent"
    assert compose_failed.template_version.number == 2
    assert [m.to for m in mail.outbox] == [["Ada Lovelace <ada@example.org>"]]
    # and the case, taken up by the operator, resolved itself
    case.refresh_from_db()
    assert (case.state, case.assignee, case.recovery_action) == ("resolved", ops, "")
    assert case.resolution == (
        f"Communication {compose_failed.pk} composed again with corrected data and sent."
    )
    corrected = AuditEvent.objects.get(action="communication.recompose_requested")
    assert (corrected.actor, corrected.after["changed_fields"]) == (ops, ["account"])
    actions = [entry.action for entry in selectors.case_timeline(case)]
    assert actions.index("case.regenerate_requested") < actions.index("case.regenerate_succeeded")
    assert actions[-1] == "case.resolved"


def test_regenerate_with_data_still_wrong_changes_nothing(compose_failed, ops):
    case = Case.objects.get()
    with pytest.raises(DataInvalid) as excinfo:
        exception_cases.exception_regenerate(case=case, data={**DATA, "account": ""}, by=ops)
    assert [e.field for e in excinfo.value.errors] == ["account"]
    compose_failed.refresh_from_db()
    case.refresh_from_db()
    assert (compose_failed.state, case.state, case.recovery_action) == ("compose_failed", "new", "")


def test_undeliverable_communication_is_resent_to_another_address(
    letter, customer, integrator, ops, sync_tasks
):
    # given the customer's only email address bounced for good: nothing can reach them
    customer_services.suppression_add(
        channel="email", address="ada@example.org", reason="hard_bounce"
    )
    communication = sync_tasks(request, customer, integrator)
    communication.refresh_from_db()
    assert communication.state == "undeliverable"
    case = Case.objects.get(exception_kind="undeliverable")
    mail.outbox = []
    # when operations resend it to the address the customer gave on the phone
    sync_tasks(
        exception_cases.exception_resend,
        case=case,
        channel="email",
        address="ada.lovelace@example.net",
        by=ops,
    )
    # then it went there with the letter, and the case resolved
    communication.refresh_from_db()
    assert communication.state == "sent"
    sent = mail.outbox[-1]
    assert sent.to == ["Ada Lovelace <ada.lovelace@example.net>"]
    assert sent.attachments[0][1].startswith(b"%PDF")
    resend = communication.deliveries.get()
    assert (resend.state, resend.meta) == ("sent", {"resend": True})
    case.refresh_from_db()
    assert case.state == "resolved"
    assert case.resolution == (
        f"Communication {communication.pk} sent again by email to ada.lovelace@example.net."
    )


def test_a_marketing_message_nobody_may_receive_opens_no_case(
    customer, integrator, author, reviewer, sync_tasks
):
    # given a marketing template and a customer who never opted in to marketing
    publish(
        letter_bundle("promo", category="marketing", channels=["email", "sms"]),
        author=author,
        reviewer=reviewer,
    )
    communication, _ = services.communication_request(
        template_code="promo", customer=customer, data=DATA, client="t", by=integrator
    )
    sync_tasks(tasks.communication_compose, communication.pk)
    # then it is withheld with the reason, and nobody is asked to chase it
    communication.refresh_from_db()
    assert communication.state == "undeliverable"
    assert "marketing needs an opt-in" in str(communication.decision_trace)
    assert not Case.objects.filter(exception_kind="undeliverable").exists()


def test_resend_to_a_suppressed_address_is_refused(letter, customer, integrator, ops, sync_tasks):
    customer_services.suppression_add(
        channel="email", address="ada@example.org", reason="hard_bounce"
    )
    sync_tasks(request, customer, integrator)
    case = Case.objects.get(exception_kind="undeliverable")
    with pytest.raises(RecoveryError) as excinfo:
        exception_cases.exception_resend(
            case=case, channel="email", address="ada@example.org", by=ops
        )
    assert excinfo.value.field == "address"
    case.refresh_from_db()
    assert (case.state, case.recovery_action) == ("new", "")


@pytest.fixture
def print_only(settings, db, admin_user):
    settings.CCM_ENABLED_CHANNELS = ["email", "print"]
    customer, _ = customer_services.customer_upsert(
        external_ref="C-2",
        name="Charles Babbage",
        postal_address=["5 Difference Lane", "London W1 1AA"],
        by=admin_user,
    )
    return customer


def test_returned_letter_opens_an_exception_and_a_resend_by_post_resolves_it(
    letter, print_only, integrator, ops, sync_tasks
):
    # given a letter that went to the print room
    communication = sync_tasks(request, print_only, integrator)
    first = communication.deliveries.get()
    assert (first.channel, first.state) == ("print", "sent")
    # when the mail house returns it (processed inside the tracking transaction)
    event = DeliveryEvent.objects.create(
        delivery=first,
        provider="print",
        event_id="return-1",
        event_type="bounced",
        hard=True,
        description="Addressee gone away",
        occurred_at=timezone.now(),
    )
    sync_tasks(tracking.delivery_event_process, event.pk)
    # then the address is marked invalid and operations have a case about it
    print_only.refresh_from_db()
    assert print_only.postal_address_valid is False
    case = Case.objects.get(exception_kind="returned_mail")
    assert case.error_details["channel"] == "print"
    assert case.error_details["reason"] == "Addressee gone away"
    # and the letter's return is the only case, even for the periodic safety net, although no
    # channel is left and the communication is undeliverable
    assert Communication.objects.get(pk=communication.pk).state == "undeliverable"
    later = timezone.now() + timedelta(hours=1)
    assert sync_tasks(exception_cases.exceptions_reconcile, now=later)["opened"] == 0
    # when they resend it by post to the corrected address
    sync_tasks(
        exception_cases.exception_resend,
        case=case,
        channel="print",
        address=["12 New Street", "London N2 2BB"],
        by=ops,
    )
    resend = communication.deliveries.exclude(pk=first.pk).get()
    assert (resend.state, resend.address) == ("sent", "12 New Street / London N2 2BB")
    assert resend.meta["postal_address"] == ["12 New Street", "London N2 2BB"]
    # then the resend moves the (undeliverable) communication on and the case settles at once
    assert Case.objects.count() == 1
    case.refresh_from_db()
    assert case.state == "resolved"
    assert "sent again by print to 12 New Street / London N2 2BB" in case.resolution


def test_a_letter_that_cannot_be_printed_opens_an_exception_after_commit(
    letter, print_only, integrator, settings, sync_tasks
):
    # given the customer's letter cannot be printed: its archived document is gone
    settings.CCM_CHANNEL_BACKENDS = {"email": settings.CCM_CHANNEL_BACKENDS["email"]}
    sync_tasks(request, print_only, integrator)
    case = Case.objects.get()
    assert case.exception_kind == "returned_mail"
    assert case.error_details["reason"] == "no backend is configured for the print channel"


def test_a_regenerated_document_with_other_bytes_opens_an_exception(
    letter, customer, integrator, sync_tasks
):
    communication = sync_tasks(request, customer, integrator)
    communication.refresh_from_db()
    document = communication.document
    type(document).objects.filter(pk=document.pk).update(sha256="0" * 64)
    document.refresh_from_db()
    with pytest.raises(RegenerationMismatch):
        document_regenerate(document=document)
    case = Case.objects.get()
    assert (case.exception_kind, case.customer) == ("regeneration_mismatch", customer)
    assert case.document_links.get().document == document


def test_the_reconciler_opens_a_case_no_signal_opened_once(
    letter, customer, integrator, author, reviewer, sync_tasks
):
    # given a composition that failed while the receiver was not listening
    signals.communication_compose_failed.disconnect(dispatch_uid="cases.on_compose_failed")
    try:
        communication = request(customer, integrator)
        publish(stricter_letter(), author=author, reviewer=reviewer)
        sync_tasks(tasks.communication_compose, communication.pk)
    finally:
        receivers.connect()
    assert not Case.objects.exists()
    # when the reconciler runs (twice)
    later = timezone.now() + timedelta(minutes=10)
    first = exception_cases.exceptions_reconcile(now=later)
    second = exception_cases.exceptions_reconcile(now=later)
    # then
    assert (first["opened"], second["opened"]) == (1, 0)
    assert Case.objects.get().dedupe_key == f"communication:{communication.pk}:compose_failed"


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL")
@pytest.mark.django_db(transaction=True)
def test_two_reports_of_one_failure_at_the_same_moment_open_one_case(
    letter, customer, integrator, ops
):
    # given a failed composition reported by two workers at once (a retried task and the
    # reconciler, say), each in its own transaction
    communication = request(customer, integrator)
    Communication.objects.filter(pk=communication.pk).update(
        state="compose_failed",
        failure_reason="data invalid",
        failure_errors=[{"field": "account", "message": "is missing"}],
    )
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def report() -> None:
        try:
            barrier.wait()
            exception_cases.exception_open(
                kind="compose_failed",
                communication=Communication.objects.get(pk=communication.pk),
                reason="data invalid",
            )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=report) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then one case holds both reports
    assert errors == []
    case = Case.objects.get()
    assert case.occurrences == 2
    assert CaseAlert.objects.filter(case=case).count() == 1
