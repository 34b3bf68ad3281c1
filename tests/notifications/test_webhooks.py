"""Status webhooks end to end: events written with each status change, POSTed signed to a real
loopback receiver, retried with backoff for a bounded time, logged, replayable."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone
from rest_framework.test import APIClient

from ccm.api.auth import api_key_create
from ccm.tasks import registered_sweeps, sweep_run
from documents.bundle import read_folder
from documents.demo import LIBRARY
from notifications.channels import EmailBackend, PermanentSendError, portal
from notifications.channels.tracking import delivery_event_process
from notifications.customers import services as customer_services
from notifications.models import (
    Communication,
    Customer,
    Delivery,
    DeliveryEvent,
    WebhookDelivery,
    WebhookSubscription,
)
from notifications.pipeline import intake, services
from notifications.webhooks import services as webhooks
from notifications.webhooks.send import webhook_delivery_send
from tests.notifications.conftest import publish
from tests.notifications.webhook_receiver import WebhookReceiver, verify

DATA = {"customer": {"name": "Ada Lovelace"}, "balance": 12.5, "as_of": "2026-05-01"}
SCOPES = ["webhooks:read", "webhooks:write", "communications:read", "communications:write"]


@pytest.fixture(autouse=True)
def _loopback_allowed(settings):
    settings.CCM_WEBHOOK_ALLOW_PRIVATE = True
    settings.CCM_WEBHOOK_REQUIRE_HTTPS = False
    settings.CCM_WEBHOOK_TIMEOUT_S = 1.0


@pytest.fixture
def receiver():
    with WebhookReceiver() as running:
        yield running


@pytest.fixture
def issued(db):
    return api_key_create(name="core-banking", scopes=SCOPES)


@pytest.fixture
def api(issued):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")
    return client


@pytest.fixture
def client_id(issued) -> str:
    """How the key's communications are labelled (Communication.client)."""
    return f"key:{issued.api_key.pk}"


def subscribe(api, receiver, **body) -> dict:
    response = api.post("/api/v1/webhooks", {"url": receiver.url, **body}, format="json")
    assert response.status_code == 201, response.content
    created = response.json()
    receiver.secret = created["secret"]
    return created


def request(customer, client: str, integrator, **kwargs):
    return services.communication_request(
        template_code="letter", customer=customer, data=DATA, client=client, by=integrator, **kwargs
    )


def due_sweep():
    (sweep,) = [s for s in registered_sweeps() if s.name == "notifications.webhooks_due"]
    return sweep


def make_due() -> None:
    """What waiting does: every scheduled retry is due now."""
    WebhookDelivery.objects.filter(state="pending").update(
        next_attempt_at=timezone.now() - timedelta(seconds=1)
    )


def test_events_reach_the_receiver_signed_as_a_communication_is_sent_and_delivered(
    api, letter, customer, receiver, sync_tasks
):
    # given a subscription made through the API
    subscribe(api, receiver)
    # when a communication is requested, composed and sent (the pipeline runs as it commits)
    accepted = sync_tasks(
        api.post,
        "/api/v1/communications",
        {"template": "letter", "customer": "C-1", "data": DATA, "correlation_id": "order-77"},
        format="json",
    )
    comm_id = accepted.json()["id"]
    # and the ESP reports the delivery, applied by tracking
    delivery = Delivery.objects.get(communication__public_id=comm_id)
    event = DeliveryEvent.objects.create(
        delivery=delivery,
        provider="postmark",
        event_id="delivered-1",
        event_type="delivered",
        occurred_at=timezone.now(),
    )
    sync_tasks(delivery_event_process, event.pk)

    # then the receiver got one signed POST per status, in order
    assert [r.type for r in receiver.received] == ["composed", "sent", "delivered"]
    assert all(r.verified for r in receiver.received)
    assert {r.path for r in receiver.received} == {"/hooks/ccm"}
    sent = receiver.received[1]
    assert sent.headers["CCM-Webhook-Id"] == sent.json["id"]
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.json["data"] == {
        "communication_id": comm_id,
        "status": "sent",
        "template_code": "letter",
        "customer_ref": "C-1",
        "customer_source_system": "default",
        "correlation_id": "order-77",
        "channel": "email",
        "reason": None,
        "delivery_id": None,
    }
    assert receiver.received[2].json["data"]["status"] == "delivered"
    assert len({r.headers["CCM-Webhook-Id"] for r in receiver.received}) == 3
    # and the log says each was delivered at the first attempt
    log = WebhookDelivery.objects.order_by("id")
    assert [(d.event_type, d.state, d.attempts, d.last_status_code) for d in log] == [
        ("composed", "delivered", 1, 200),
        ("sent", "delivered", 1, 200),
        ("delivered", "delivered", 1, 200),
    ]
    assert [a.status_code for a in log[0].attempt_log.all()] == [200]
    assert receiver.received[0].json["created_at"] == log[0].created_at.isoformat()
    # and sending again is a no-op: the row is claimed from pending only
    assert webhook_delivery_send(log[0].pk) == "skipped"
    assert len(receiver.received) == 3


def test_a_tampered_body_or_timestamp_fails_verification(
    api, letter, customer, client_id, integrator, receiver, sync_tasks
):
    subscribe(api, receiver, events=["composed"])
    sync_tasks(request, customer, client_id, integrator)
    (got,) = receiver.received
    assert verify(receiver.secret, got.headers, got.body)
    # when a byte of the body, the timestamp or the secret differs
    tampered = got.body.replace(b'"composed"', b'"actioned"')
    older = {
        **got.headers,
        "CCM-Webhook-Timestamp": str(int(got.headers["CCM-Webhook-Timestamp"]) - 1),
    }
    # then the signature does not match
    assert tampered != got.body
    assert not verify(receiver.secret, got.headers, tampered)
    assert not verify(receiver.secret, older, got.body)
    assert not verify(receiver.secret + "x", got.headers, got.body)
    # and a replayed capture is refused once it is old
    later = int(got.headers["CCM-Webhook-Timestamp"]) + 301
    assert not verify(receiver.secret, got.headers, got.body, now=later)


def test_a_receiver_failing_twice_gets_the_event_on_the_third_attempt(
    api, letter, customer, client_id, integrator, receiver, sync_tasks
):
    # given a receiver that answers 500 twice, then 200
    subscribe(api, receiver, events=["composed"])
    receiver.script = [500, 500]
    sync_tasks(request, customer, client_id, integrator)
    row = WebhookDelivery.objects.get()
    assert (row.state, row.attempts, row.last_status_code) == ("pending", 1, 500)
    assert row.next_attempt_at > timezone.now()  # backed off, not retried at once
    assert row.last_error == "the receiver answered 500"
    # a sweep before the retry is due sends nothing
    sync_tasks(sweep_run, due_sweep())
    assert len(receiver.received) == 1

    # when the retries come due, one after the other
    for _ in range(2):
        make_due()
        sync_tasks(sweep_run, due_sweep())

    # then
    row.refresh_from_db()
    assert (row.state, row.attempts, row.last_status_code, row.last_error) == (
        "delivered",
        3,
        200,
        "",
    )
    assert row.delivered_at is not None
    assert [r.answered for r in receiver.received] == [500, 500, 200]
    assert len({r.headers["CCM-Webhook-Id"] for r in receiver.received}) == 1
    assert len({r.body for r in receiver.received}) == 1
    assert all(r.verified for r in receiver.received)
    attempts = list(row.attempt_log.all())
    assert [(a.number, a.status_code) for a in attempts] == [(1, 500), (2, 500), (3, 200)]
    assert all(a.duration_ms is not None for a in attempts)
    assert row.response_excerpt == "answered 200"
    # a sweep after delivery sends nothing more
    make_due()
    sync_tasks(sweep_run, due_sweep())
    assert len(receiver.received) == 3


def test_a_receiver_down_past_the_retry_window_fails_the_event(
    api, letter, customer, client_id, integrator, receiver, sync_tasks
):
    # given a subscribed receiver that has gone away
    subscribe(api, receiver, events=["composed"])
    receiver.stop()
    sync_tasks(request, customer, client_id, integrator)
    row = WebhookDelivery.objects.get()
    assert (row.state, row.attempts, row.last_status_code) == ("pending", 1, None)
    assert "refused" in row.last_error.lower()
    # when a day and an hour have passed and the retry comes due
    WebhookDelivery.objects.update(created_at=timezone.now() - timedelta(hours=25))
    make_due()
    sync_tasks(sweep_run, due_sweep())
    # then it is given up, every attempt logged
    row.refresh_from_db()
    assert row.state == "failed"
    assert row.next_attempt_at is None
    assert row.last_error.startswith("gave up after 2 attempts")
    assert [(a.number, a.status_code) for a in row.attempt_log.all()] == [(1, None), (2, None)]
    # and the sweep leaves it alone from now on
    make_due()
    assert sync_tasks(sweep_run, due_sweep()) == 0


def test_max_attempts_bound_the_retries_too(
    api, letter, customer, client_id, integrator, receiver, sync_tasks, settings
):
    settings.CCM_WEBHOOK_MAX_ATTEMPTS = 2
    subscribe(api, receiver, events=["composed"])
    receiver.script = [503, 503, 503]
    sync_tasks(request, customer, client_id, integrator)
    make_due()
    sync_tasks(sweep_run, due_sweep())
    row = WebhookDelivery.objects.get()
    assert (row.state, row.attempts) == ("failed", 2)
    assert [r.answered for r in receiver.received] == [503, 503]


def test_replay_sends_the_same_event_again(
    api, letter, customer, client_id, integrator, receiver, sync_tasks
):
    # given an event the receiver already got
    created = subscribe(api, receiver, events=["composed"])
    sync_tasks(request, customer, client_id, integrator)
    row = WebhookDelivery.objects.get()
    # when the integrator replays it
    response = sync_tasks(api.post, f"/api/v1/webhooks/{created['id']}/deliveries/{row.pk}/replay")
    # then the same event id and body arrive again, as a new logged attempt
    assert response.status_code == 202
    assert response.json()["event_id"] == str(row.event_id)
    first, again = receiver.received
    assert again.headers["CCM-Webhook-Id"] == first.headers["CCM-Webhook-Id"] == str(row.event_id)
    assert again.body == first.body
    assert again.verified
    row.refresh_from_db()
    assert (row.state, row.replay_count) == ("delivered", 1)
    assert [a.number for a in row.attempt_log.all()] == [1, 2]
    log = api.get(f"/api/v1/webhooks/{created['id']}/deliveries").json()["results"]
    assert [len(d["attempt_log"]) for d in log] == [2]


def test_a_rolled_back_transaction_sends_nothing(
    api, letter, customer, client_id, integrator, receiver, sync_tasks
):
    # given a sent communication and a subscription to "viewed"
    communication, _ = sync_tasks(request, customer, client_id, integrator)
    subscribe(api, receiver, events=["viewed"])

    def doomed():
        with transaction.atomic():
            portal.portal_view_record(communication=communication, ip="192.0.2.1", user_agent="t")
            raise RuntimeError("the caller's transaction failed")

    # when the view is recorded in a transaction that rolls back
    with pytest.raises(RuntimeError):
        sync_tasks(doomed)
    # then nothing was written or sent
    assert not WebhookDelivery.objects.exists()
    assert receiver.received == []
    # while the same view committed is reported
    sync_tasks(
        portal.portal_view_record, communication=communication, ip="192.0.2.1", user_agent="t"
    )
    assert [r.type for r in receiver.received] == ["viewed"]
    assert receiver.received[0].json["data"]["status"] == "viewed"


def test_another_clients_communications_are_not_sent(
    api, letter, customer, client_id, integrator, receiver, sync_tasks
):
    # given this key's subscription
    subscribe(api, receiver, events=["composed"])
    other = api_key_create(name="billing", scopes=["communications:write"])
    # when another client's communication and then this client's are composed
    mine, _ = sync_tasks(request, customer, client_id, integrator, correlation_id="mine")
    sync_tasks(request, customer, f"key:{other.api_key.pk}", integrator, correlation_id="theirs")
    # then only this client's reached the receiver
    assert [r.json["data"]["correlation_id"] for r in receiver.received] == ["mine"]
    assert set(WebhookDelivery.objects.values_list("communication_id", flat=True)) == {mine.pk}


def test_a_subscription_without_a_client_receives_every_clients_events(
    letter, customer, admin_user, integrator, receiver, sync_tasks
):
    # given an internal subscription made by staff
    subscription = webhooks.webhook_subscription_create(
        url=receiver.url, client="", events=["composed"], by=admin_user
    )
    receiver.secret = subscription.secret
    # when two clients' communications are composed
    sync_tasks(request, customer, "key:1", integrator)
    sync_tasks(request, customer, "key:2", integrator)
    # then it heard of both
    assert len(receiver.received) == 2
    assert all(r.verified for r in receiver.received)


def test_a_delivery_that_fails_for_good_is_reported_with_its_channel_and_reason(
    api, letter, customer, client_id, integrator, receiver, sync_tasks, monkeypatch
):
    def refuse(self, delivery):
        raise PermanentSendError("ESP rejected the message (422): Invalid 'To' address")

    monkeypatch.setattr(EmailBackend, "send", refuse)
    subscribe(api, receiver, events=["failed"])
    communication, _ = sync_tasks(request, customer, client_id, integrator)
    (got,) = receiver.received
    delivery = communication.deliveries.get(channel="email")
    assert got.type == "failed"
    assert got.json["data"]["channel"] == "email"
    assert got.json["data"]["delivery_id"] == delivery.pk
    assert "Invalid 'To' address" in got.json["data"]["reason"]


def test_a_hard_bounce_is_reported_as_failed(
    api, letter, customer, client_id, integrator, receiver, sync_tasks
):
    communication, _ = sync_tasks(request, customer, client_id, integrator)
    subscribe(api, receiver, events=["failed", "delivered"])
    event = DeliveryEvent.objects.create(
        delivery=communication.deliveries.get(),
        provider="postmark",
        event_id="bounce-1",
        event_type="bounced",
        hard=True,
        description="The server was unable to deliver your message",
        occurred_at=timezone.now(),
    )
    sync_tasks(delivery_event_process, event.pk)
    (got,) = receiver.received
    assert (got.type, got.json["data"]["reason"]) == (
        "failed",
        "The server was unable to deliver your message",
    )


def test_redirects_are_not_followed(
    api, letter, customer, client_id, integrator, receiver, sync_tasks
):
    subscribe(api, receiver, events=["composed"])
    receiver.script = ["redirect"]
    sync_tasks(request, customer, client_id, integrator)
    row = WebhookDelivery.objects.get()
    assert (row.state, row.last_status_code) == ("pending", 302)
    assert [r.path for r in receiver.received] == ["/hooks/ccm"]  # /elsewhere never asked


def test_a_receiver_that_does_not_answer_in_time_is_retried(
    api, letter, customer, client_id, integrator, receiver, sync_tasks, settings
):
    settings.CCM_WEBHOOK_TIMEOUT_S = 0.3
    subscribe(api, receiver, events=["composed"])
    receiver.script = ["hang"]
    receiver.hang_s = 1.0
    sync_tasks(request, customer, client_id, integrator)
    row = WebhookDelivery.objects.get()
    assert (row.state, row.last_status_code) == ("pending", None)
    assert row.last_error == "no answer within 0.3 s"


def test_an_event_left_sending_by_a_dead_worker_is_sent_again(
    api, letter, customer, client_id, integrator, receiver, sync_tasks, settings
):
    subscribe(api, receiver, events=["composed"])
    receiver.stop()
    sync_tasks(request, customer, client_id, integrator)
    with WebhookReceiver(secret=receiver.secret) as back:
        # given the row a worker claimed and then died with, its URL now answering
        WebhookDelivery.objects.update(
            state="sending", updated_at=timezone.now() - timedelta(hours=1)
        )
        WebhookSubscription.objects.update(url=back.url)
        settings.CCM_SENDING_STALE_AFTER_S = 60
        (stale,) = [s for s in registered_sweeps() if s.name.endswith("webhooks_sending_stale")]
        # when the sweep finds it
        sync_tasks(sweep_run, stale)
        # then the lost attempt is logged and the event sent again
        row = WebhookDelivery.objects.get()
        assert row.state == "delivered"
        assert [a.error for a in row.attempt_log.all()][1].startswith("the worker was lost")
        assert len(back.received) == 1
        assert back.received[0].verified


def test_bulk_path_reports_every_communication_with_one_insert_per_chunk(
    author, reviewer, admin_user, integrator, receiver, sync_tasks, monkeypatch
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    # given a subscription for the campaign client and six customers, one unreachable
    publish(read_folder(LIBRARY / "document_ready"), author=author, reviewer=reviewer)
    customers = [
        customer_services.customer_upsert(
            external_ref=f"B-{i}", name=f"Customer {i}", emails=[f"c{i}@example.org"], by=admin_user
        )[0]
        for i in range(5)
    ]
    customers.append(Customer.objects.create(external_ref="N-1", name="Nobody"))
    subscription = webhooks.webhook_subscription_create(
        url=receiver.url,
        client="campaign-7",
        events=["composed", "sent", "undeliverable"],
        by=admin_user,
    )
    receiver.secret = subscription.secret
    monkeypatch.setattr(webhooks, "ENQUEUE_ONE_BY_ONE_UP_TO", 2)  # chunks go as one task

    # when the campaign goes out through the bulk path
    with CaptureQueriesContext(connection) as queries:
        ids = sync_tasks(
            intake.communications_request_bulk,
            template_code="document_ready",
            items=[
                {
                    "customer": c,
                    "data": {
                        "customer": {"name": c.name},
                        "reference": f"DOC-{i}",
                        "document_title": "Your statement",
                        "document_date": "2026-04-12",
                        "portal_url": f"https://portal.example/d/{i}",
                    },
                }
                for i, c in enumerate(customers)
            ],
            client="campaign-7",
            by=integrator,
        )

    # then every communication was reported, signed
    public = dict(Communication.objects.values_list("pk", "public_id"))
    ids = [str(public[pk]) for pk in ids]
    got = sorted((r.json["data"]["communication_id"], r.type) for r in receiver.received)
    expected = sorted(
        [(pk, "composed") for pk in ids]
        + [(pk, "sent") for pk in ids[:5]]
        + [(ids[5], "undeliverable")]
    )
    assert got == expected
    assert all(r.verified for r in receiver.received)
    assert Communication.objects.get(public_id=ids[5]).state == "undeliverable"
    # with one INSERT of outbox rows for the composed chunk and one for the dispatched one
    inserts = [
        q for q in queries if q["sql"].startswith('INSERT INTO "notifications_webhookdelivery"')
    ]
    assert len(inserts) == 2
