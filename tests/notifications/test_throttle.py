"""The provider throttle: shared by every process, accurate over a short window, and a batch
cannot starve transactional messages."""

from __future__ import annotations

import threading
import time

import pytest
from django.core import mail
from django.db import connection

from notifications.models import Communication, Delivery
from notifications.pipeline import compose, dispatch, intake
from notifications.pipeline.throttle import provider_of, throttle_take

RATE = 40.0


@pytest.mark.django_db(transaction=True)
def test_processes_together_never_take_more_than_the_rate(settings):
    # given a provider limited to 40 messages a second, and four workers (own connections)
    settings.CCM_PROVIDER_RATES = {"postmark": RATE}
    window = 1.5
    granted: list[int] = []
    takes: list[tuple[float, float]] = []  # (start, end) of every take
    ready = threading.Barrier(4)

    def worker() -> None:
        ready.wait()
        end = time.monotonic() + window
        while time.monotonic() < end:
            started = time.monotonic()
            granted.append(throttle_take(provider="postmark", want=5, priority=True))
            takes.append((started, time.monotonic()))
            time.sleep(0.01)
        connection.close()

    # when they all take as fast as they can for 1.5 s
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # then together they got the burst (one second's worth) plus the rate over the time they
    # took for (measured, not assumed: on a loaded machine a thread can start or finish late)
    span = max(end for _, end in takes) - min(start for start, _ in takes)
    expected = RATE + RATE * span
    assert expected * 0.9 <= sum(granted) <= expected * 1.05


@pytest.mark.django_db(transaction=True)
def test_bulk_traffic_leaves_the_reserve_to_transactional(settings):
    settings.CCM_PROVIDER_RATES = {"twilio": 10.0}
    settings.CCM_THROTTLE_RESERVE = 0.3
    # a campaign empties the bucket down to its reserve, and no further
    assert throttle_take(provider="twilio", want=100, priority=False) == 7
    assert throttle_take(provider="twilio", want=100, priority=False) == 0
    # a transactional message still goes out at once
    assert throttle_take(provider="twilio", want=3, priority=True) == 3


def test_provider_names_come_from_the_configured_backends(settings):
    settings.EMAIL_BACKEND = "anymail.backends.postmark.EmailBackend"
    settings.CCM_SMS_BACKEND = "notifications.channels.sms.TwilioSmsBackend"
    assert (provider_of("email"), provider_of("sms"), provider_of("push")) == (
        "postmark",
        "twilio",
        "push",
    )


def test_a_chunk_over_the_rate_sends_what_it_may_and_queues_the_rest(
    letter, customer, integrator, sync_tasks, settings
):
    # given email limited to 5 a second, no waiting for tokens, and 8 letters to send
    settings.CCM_PROVIDER_RATES = {provider_of("email"): 5.0}
    settings.CCM_THROTTLE_MAX_WAIT_S = 0
    settings.CCM_BULK_CHUNK = 100
    ids = intake.communications_request_bulk(
        template_code="letter",
        items=[
            {
                "customer": customer,
                "data": {"customer": {"name": "Ada"}, "balance": 1, "as_of": "2026-05-01"},
            }
            for _ in range(8)
        ],
        client="t",
        by=integrator,
    )
    compose.compose_chunk(ids)
    counts = dispatch.dispatch_chunk(list(Delivery.objects.values_list("pk", flat=True)))
    # then 5 went out and 3 wait in line, their attempt not counted
    assert (counts["sent"], counts["throttled"]) == (5, 3)
    assert len(mail.outbox) == 5
    waiting = Delivery.objects.filter(state="pending")
    assert waiting.count() == 3
    assert {d.attempts for d in waiting} == {0}
    assert Communication.objects.filter(state="sent").count() == 5
