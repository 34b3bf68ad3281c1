"""Exactly once at the provider: a send whose outcome is unknown is never sent again blind,
and an outcome that cannot be learned ends where operations see it."""

from __future__ import annotations

import pytest
from django_q.conf import Conf

from bench.postmark_stub import PostmarkStub
from cases.models import Case
from notifications.channels import TransientSendError, email
from notifications.models import Communication, Delivery
from notifications.pipeline import dispatch, intake, services
from tests.documents.factories import letter_bundle
from tests.notifications.conftest import publish

DATA = {"customer": {"name": "Ada Lovelace"}, "balance": 12.5, "as_of": "2026-05-01"}


@pytest.fixture
def notice(author, reviewer):
    """A regulatory notice: email first, print as its fallback."""
    return publish(
        letter_bundle("notice", category="regulatory", fallback=["email", "print"]),
        author=author,
        reviewer=reviewer,
    )


@pytest.fixture
def slow_provider(settings):
    """Postmark accepts every message, then answers only after the client gave up."""
    with PostmarkStub(faults=("timeout",), failure_ratio=1.0, timeout_delay_s=0.6) as stub:
        settings.EMAIL_BACKEND = "anymail.backends.postmark.EmailBackend"
        settings.ANYMAIL = {**stub.anymail_settings(), "REQUESTS_TIMEOUT": 0.3}
        settings.CCM_DISPATCH_INLINE_RETRIES = 1
        yield stub


@pytest.fixture
def search_down(monkeypatch):
    """Postmark's outbound search cannot be reached."""

    def down(delivery):
        raise TransientSendError("could not ask Postmark about the message: connection refused")

    monkeypatch.setattr(email, "_postmark_lookup", down)
    return monkeypatch


def dispatched(customer, integrator, sync_tasks) -> Communication:
    communication, _ = sync_tasks(
        services.communication_request,
        template_code="notice",
        customer=customer,
        data=DATA,
        client="t",
        by=integrator,
    )
    communication.refresh_from_db()
    return communication


def test_regulatory_notice_held_by_the_provider_is_not_resent_nor_printed(
    notice, customer, integrator, slow_provider, search_down, sync_tasks, settings
):
    # given the provider took the notice but answered too late, and cannot be asked yet
    communication = dispatched(customer, integrator, sync_tasks)
    # then the delivery waits in `sending`: not back to pending, not failed, no letter printed
    [delivery] = Delivery.objects.filter(communication=communication)
    assert delivery.state == "sending"
    assert communication.state == "dispatching"
    assert slow_provider.message_ids() == {delivery.message_id: 1}
    # when the provider can be asked again, reconciliation finds it there
    search_down.undo()
    settings.CCM_SENDING_STALE_AFTER_S = 0
    sync_tasks(dispatch.deliveries_reconcile, [delivery.pk])
    # then it is sent, once, and nothing else went out
    delivery.refresh_from_db()
    communication.refresh_from_db()
    assert (delivery.state, communication.state) == ("sent", "sent")
    assert slow_provider.message_ids() == {delivery.message_id: 1}
    assert list(Delivery.objects.filter(communication=communication)) == [delivery]


def test_an_outcome_that_cannot_be_learned_ends_failed_with_a_case(
    notice, customer, integrator, slow_provider, search_down, sync_tasks, settings
):
    settings.CCM_RECONCILE_MAX_CHECKS = 3
    settings.CCM_SENDING_STALE_AFTER_S = 0
    communication = dispatched(customer, integrator, sync_tasks)
    [delivery] = Delivery.objects.filter(communication=communication)
    # when the provider stays unreachable for every check
    outcomes = [
        sync_tasks(dispatch.deliveries_reconcile, [delivery.pk])
        for _ in range(settings.CCM_RECONCILE_MAX_CHECKS + 1)
    ]
    # then the delivery fails with the reason after the last check, and only then
    assert [o.get("failed", 0) for o in outcomes] == [0, 0, 1, 0]
    delivery.refresh_from_db()
    assert delivery.state == "failed"
    assert delivery.last_error.startswith("outcome unknown after 3 checks")
    # nothing was sent again, no letter printed, and operations have a case to work
    assert slow_provider.message_ids() == {delivery.message_id: 1}
    assert Delivery.objects.filter(communication=communication).count() == 1
    case = Case.objects.get(details__communication=communication.pk)
    assert (case.exception_kind, case.state) == ("undeliverable", "new")
    assert case.description.startswith("outcome unknown after 3 checks")


def test_sweep_adds_no_task_for_a_backlog_already_queued(
    letter, customer, integrator, monkeypatch, django_capture_on_commit_callbacks, settings
):
    from django_q.models import OrmQ

    from ccm.tasks import sweep_all

    # given N communications waiting in the queue (a backlog, long enough to look "old")
    monkeypatch.setattr(Conf, "SYNC", False)
    settings.CCM_BULK_CHUNK = 10
    with django_capture_on_commit_callbacks(execute=True):
        intake.communications_request_bulk(
            template_code="letter",
            items=[{"customer": customer, "data": DATA} for _ in range(30)],
            client="t",
            by=integrator,
        )
    Communication.objects.update(updated_at="2020-01-01T00:00:00Z")
    queued = OrmQ.objects.count()
    assert queued == 3
    # when the sweep runs
    swept = sweep_all()
    # then it adds nothing: every row is carried by a queued task
    assert swept["notifications.received"] == 0
    assert OrmQ.objects.count() == queued
    # and a row no task carries (its task was lost) is swept, in one chunk task
    OrmQ.objects.order_by("id").first().delete()
    assert sweep_all()["notifications.received"] == 10
    assert OrmQ.objects.count() == queued
