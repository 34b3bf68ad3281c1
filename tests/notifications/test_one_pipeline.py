"""One pipeline: the same guarantees whether a communication came in alone (the API endpoint)
or in a batch (the bulk intake), each test run over both entry points.

Tasks run from the real django-q2 ORM queue, one round at a time, so a test can act between
composition and dispatch (as a bounce or a complaint does in real life)."""

from __future__ import annotations

import pytest
from django.core import mail
from django.core.management import call_command
from django.utils.module_loading import import_string
from django_q.conf import Conf
from django_q.models import OrmQ
from rest_framework.test import APIClient

from ccm.api.auth import api_key_create
from ccm.tasks import task_context_enter, task_context_exit
from documents.bundle import read_folder
from documents.demo import LIBRARY
from notifications.customers import services as customer_services
from notifications.models import Communication, Delivery, SuppressionReason
from notifications.pipeline import dispatch, intake
from tests.notifications.conftest import publish

DATA = {"customer": {"name": "Ada Lovelace"}, "balance": 12.5, "as_of": "2026-05-01"}
READY = {
    "customer": {"name": "Ada Lovelace"},
    "reference": "DOC-1",
    "document_title": "Your statement",
    "document_date": "2026-04-12",
}


@pytest.fixture
def api(db):
    issued = api_key_create(
        name="core-banking", scopes=["communications:read", "communications:write"]
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")
    return client


@pytest.fixture
def queued(monkeypatch, django_capture_on_commit_callbacks):
    """Run what the queue holds, one round at a time (tasks enqueued by a round wait)."""
    monkeypatch.setattr(Conf, "SYNC", False)

    def run_round() -> int:
        rows = list(OrmQ.objects.order_by("id"))
        OrmQ.objects.filter(pk__in=[r.pk for r in rows]).delete()
        for row in rows:
            task = row.task
            func = task["func"]
            # As a cluster worker: its pre/post-execute hooks take the request id kwarg.
            task_context_enter(None, func=func, task=task)
            try:
                with django_capture_on_commit_callbacks(execute=True):
                    (import_string(func) if isinstance(func, str) else func)(
                        *task["args"], **task["kwargs"]
                    )
            finally:
                task_context_exit(None, func=func, task=task)
        return len(rows)

    def call(fn, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return fn(*args, **kwargs)

    def drain() -> None:
        for _ in range(10):
            if not run_round():
                return
        raise AssertionError("the queue did not drain")

    run_round.call = call  # type: ignore[attr-defined]
    run_round.drain = drain  # type: ignore[attr-defined]
    return run_round


def request_one(api, queued, template: str, data: dict) -> int:
    response = queued.call(
        api.post,
        "/api/v1/communications",
        {"template": template, "customer": "C-1", "data": data},
        format="json",
    )
    assert response.status_code == 202, response.json()
    return Communication.objects.get(public_id=response.json()["id"]).pk


def request_batch(customer, integrator, queued, template: str, data: dict) -> int:
    [comm_id] = queued.call(
        intake.communications_request_bulk,
        template_code=template,
        items=[{"customer": customer, "data": data}],
        client="t",
        by=integrator,
    )
    return comm_id


@pytest.fixture(params=["one", "batch"])
def entry(request, api, customer, integrator, queued):
    """Request one communication through the API endpoint or the batch intake."""
    if request.param == "one":
        return lambda template, data: request_one(api, queued, template, data)
    return lambda template, data: request_batch(customer, integrator, queued, template, data)


@pytest.fixture
def document_ready(author, reviewer):
    return publish(read_folder(LIBRARY / "document_ready"), author=author, reviewer=reviewer)


def test_portal_link_template_is_accepted_and_sent_with_its_link(document_ready, entry, queued):
    # when a portal-link template is requested without a link (it is made at composition)
    comm_id = entry("document_ready", READY)
    queued.drain()
    # then it is sent, carrying a portal link that is kept in the archived data
    communication = Communication.objects.get(pk=comm_id)
    assert communication.state == "sent"
    assert communication.data["portal_url"].startswith("http")
    assert communication.data["portal_url"] in mail.outbox[0].body


def test_address_suppressed_after_intake_is_not_sent(
    document_ready, customer, entry, queued, monkeypatch
):
    # given a communication whose composition chose ada@example.org (the task that composes a
    # text-only chunk also sends it, so the bounce comes between the two, as the send starts)
    claim = dispatch._claim_deliveries
    chosen = []

    def bounce_first(ids):
        # when the address hard-bounces another message after composition, before the send
        chosen.extend(Delivery.objects.filter(pk__in=ids).values_list("address", flat=True))
        if "ada@example.org" in chosen:
            customer_services.suppression_add(
                channel="email", address="ada@example.org", reason=SuppressionReason.HARD_BOUNCE
            )
        return claim(ids)

    monkeypatch.setattr(dispatch, "_claim_deliveries", bounce_first)
    comm_id = entry("document_ready", {**READY, "portal_url": "https://portal.example/d/1"})
    queued.drain()
    assert "ada@example.org" in chosen
    # then it is not sent, and the delivery says why
    delivery = Delivery.objects.get(communication_id=comm_id, channel="email")
    assert delivery.state == "failed"
    assert "suppressed" in delivery.last_error
    assert mail.outbox == []


def test_every_communication_has_its_own_history_proved_by_the_chain(
    letter, entry, queued, admin_user, capsys
):
    comm_id = entry("letter", DATA)
    queued.drain()
    # the API shows every step of this communication, with time and actor
    # (read by staff: a batch made by another client is not the test key's to see)
    staff = APIClient()
    staff.force_login(admin_user)
    public_id = Communication.objects.get(pk=comm_id).public_id
    timeline = staff.get(f"/api/v1/communications/{public_id}").json()["timeline"]
    actions = [e["action"] for e in timeline]
    assert actions[:3] == [
        "communication.received",
        "communication.composed",
        "communication.dispatching",
    ]
    assert {"delivery.sending", "delivery.sent", "communication.sent"} <= set(actions)
    assert timeline[0]["actor"] != "system"  # who asked
    assert all(e["at"] for e in timeline)
    # and the audit chain covers each step: the command proves this communication's history
    from notifications.pipeline import history

    history.steps_seal_all()
    call_command("audit_verify_communication", str(comm_id))
    assert f"communication {comm_id}: {len(actions)} steps proved" in capsys.readouterr().out


def test_a_changed_step_fails_the_proof(letter, entry, queued):
    from notifications.pipeline import history

    comm_id = entry("letter", DATA)
    queued.drain()
    history.steps_seal_all()
    step = Communication.objects.get(pk=comm_id).steps.get(action="delivery.sent")
    type(step).objects.filter(pk=step.pk).update(detail={"provider_message_id": "forged"})
    proof = history.communication_verify(comm_id)
    assert not proof.ok
    assert f"step {step.pk}" in proof.reason
