"""A request's id follows it into the tasks it enqueued: a cluster worker (another process,
another time) runs them under that id, so their log lines and the communication's history steps
(sealed into the audit chain) carry it."""

from __future__ import annotations

import contextvars
import io
import json
import logging

import pytest
from django_q.brokers import get_broker
from django_q.signing import SignedPackage
from django_q.tasks import _sync
from rest_framework.test import APIClient

from ccm import context
from ccm.api.auth import api_key_create
from ccm.observability import ContextFilter, json_formatter_factory
from notifications.models import Communication, CommunicationStep
from notifications.pipeline import dispatch, history, intake

DATA = {"customer": {"name": "Ada Lovelace"}, "balance": 12.5, "as_of": "2026-05-01"}


@pytest.fixture
def json_log():
    """What the JSON console handler of LOG_FORMAT=json would print."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter_factory())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(old_level)


def run_queued_tasks_as_a_worker(capture_on_commit) -> int:
    """Run what the request enqueued the way a cluster worker does, outside the request's
    context (a fresh one, as in another process), until the queue is empty."""
    broker = get_broker()
    ran = 0
    while tasks := broker.dequeue():
        for ack_id, package in tasks:
            # sync: in this test's database transaction (a worker would open its own).
            task = SignedPackage.loads(package)
            task["sync"] = True
            with capture_on_commit(execute=True):
                contextvars.Context().run(_sync, SignedPackage.dumps(task))
            broker.acknowledge(ack_id)
            ran += 1
    return ran


def test_the_request_id_reaches_the_tasks_log_lines_and_history_steps(
    db, letter, customer, django_capture_on_commit_callbacks, json_log
):
    # given an integrator's API key
    issued = api_key_create(
        name="core-banking", scopes=["communications:read", "communications:write"]
    )
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")
    # when a request asks for a communication, with its own request id
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(
            "/api/v1/communications",
            {"template": "letter", "customer": "C-1", "data": DATA},
            format="json",
            HTTP_X_REQUEST_ID="trace-0042",
        )
    assert response.status_code == 202
    assert context.request_id() is None  # the request is over
    # and a worker later composes and sends it
    assert run_queued_tasks_as_a_worker(django_capture_on_commit_callbacks) >= 2
    # then the communication went out, and the steps the tasks recorded name the request
    communication = Communication.objects.get()
    assert communication.state == "sent"
    steps = CommunicationStep.objects.filter(communication=communication)
    # (compose, then the dispatch task that compose enqueued: the id travels on)
    for action in ("communication.composed", "delivery.sent"):
        assert steps.get(action=action).request_id == "trace-0042", action
    assert set(steps.values_list("request_id", flat=True)) == {"trace-0042"}
    # and the request id is part of what each step's hash (sealed in the chain) covers
    history.steps_seal()
    assert steps.filter(seal__isnull=True).count() == 0
    assert history.communication_verify(communication.pk).ok
    # and so do the task's JSON log lines
    lines = json_log()
    started = [line for line in lines if line["logger"] == "ccm.tasks"]
    assert len(started) >= 2
    assert {line["request_id"] for line in started} == {"trace-0042"}
    rendering = [line for line in lines if line["logger"] == "ccm.documents.sandbox"]
    assert {line["request_id"] for line in rendering} <= {"trace-0042"}


def test_a_log_line_carries_the_ids_bound_to_it(json_log):
    token = context.set_request_id("req-7")
    try:
        with context.bound(communication_id=12, delivery_id=34):
            logging.getLogger("notifications.test").warning("sending")
        logging.getLogger("notifications.test").warning("after")
    finally:
        context.reset_request_id(token)
    inside, after = json_log()
    assert (inside["request_id"], inside["communication_id"], inside["delivery_id"]) == (
        "req-7",
        12,
        34,
    )
    assert (inside["level"], inside["logger"], inside["message"]) == (
        "WARNING",
        "notifications.test",
        "sending",
    )
    assert "communication_id" not in after
    assert after["request_id"] == "req-7"


def test_one_drain_composing_two_requests_names_each_ones_own_request(
    db, letter, customer, django_capture_on_commit_callbacks
):
    # given two requests, each with its own request id, and one drain waiting for both
    issued = api_key_create(name="core-banking", scopes=["communications:write"])
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")
    for trace in ("trace-a", "trace-b"):
        with django_capture_on_commit_callbacks(execute=True):
            response = api.post(
                "/api/v1/communications",
                {"template": "letter", "customer": "C-1", "data": DATA},
                format="json",
                HTTP_X_REQUEST_ID=trace,
            )
        assert response.status_code == 202
    # when a worker runs the queue (one drain composes both, one dispatch chunk sends both)
    run_queued_tasks_as_a_worker(django_capture_on_commit_callbacks)
    # then every step of each communication names the request that asked for it
    first, second = Communication.objects.order_by("pk")
    for communication, trace in ((first, "trace-a"), (second, "trace-b")):
        assert communication.state == "sent"
        steps = CommunicationStep.objects.filter(communication=communication)
        assert {"communication.composed", "delivery.sent"} <= set(
            steps.values_list("action", flat=True)
        )
        assert set(steps.values_list("request_id", flat=True)) == {trace}
        assert history.communication_verify(communication.pk).ok


def test_every_line_logged_while_handling_a_communication_carries_its_ids(
    db, letter, customer, django_capture_on_commit_callbacks, json_log, monkeypatch
):
    from documents import services as documents
    from notifications.models import Delivery

    # given code that logs while rendering a letter and while handing a message to the ESP
    compose, send = documents.document_compose, dispatch._ConnectedEmailBackend.send

    def composing(**kwargs):
        logging.getLogger("documents.test").info("rendering the letter")
        return compose(**kwargs)

    def sending(self, delivery):
        logging.getLogger("notifications.test").info("handing to the ESP")
        return send(self, delivery)

    monkeypatch.setattr(documents, "document_compose", composing)
    monkeypatch.setattr(dispatch._ConnectedEmailBackend, "send", sending)
    # when two communications come in as one batch and a worker composes and sends them
    with django_capture_on_commit_callbacks(execute=True):
        results = intake.communications_intake(
            items=[{"template": "letter", "customer": customer, "data": DATA}] * 2,
            client="t",
            by=None,
        )
    ids = sorted(r.communication_id for r in results)
    run_queued_tasks_as_a_worker(django_capture_on_commit_callbacks)
    # then each line logged while rendering names the communication, and the chunk it is in
    lines = json_log()
    rendering = [line for line in lines if line["message"] == "rendering the letter"]
    assert sorted(line["communication_id"] for line in rendering) == ids
    assert [line["communication_ids"] for line in rendering] == [ids, ids]
    # and each line logged while sending names the delivery and its communication
    emails = dict(Delivery.objects.filter(channel="email").values_list("pk", "communication_id"))
    assert sorted(emails.values()) == ids
    handing = [line for line in lines if line["message"] == "handing to the ESP"]
    assert sorted((line["delivery_id"], line["communication_id"]) for line in handing) == sorted(
        emails.items()
    )
    assert all(line["delivery_ids"] == sorted(emails) for line in handing)
    # and a task's own lines carry what it works on
    started = [line["message"] for line in lines if line["logger"] == "ccm.tasks"]
    # (two communications are less than a chunk: the compose drain takes them)
    assert any("compose_chunk" in m or "compose_drain" in m for m in started)
    for line in lines:
        if line["logger"] == "ccm.tasks" and "compose_chunk" in line["message"]:
            assert line["communication_ids"] == ids
        if line["logger"] == "ccm.tasks" and "dispatch_chunk" in line["message"]:
            assert line["delivery_ids"] == sorted(emails)
    # and once the tasks are over, nothing stays bound
    assert context.log_fields() == {"request_id": ""}
