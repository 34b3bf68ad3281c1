"""The API contract an integrator codes against, checked against the live OpenAPI schema.

schemathesis reads /api/schema/ from the Django app (over WSGI, in this process), generates
requests for every operation — the schema's own examples, valid data and invalid data — sends
them with an API key holding every scope (and, for the staff-only operations, as a staff
session), and checks each answer: no 5xx, a documented status code, a documented content type,
documented headers, a body that matches the schema, and invalid data refused with a 4xx."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections, transaction
from django.middleware.csrf import _get_new_csrf_string
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from rest_framework.test import APIClient
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cases.models import Case
from ccm.api.auth import SCOPES, api_key_create
from tests.documents.factories import letter_bundle
from tests.notifications.conftest import publish

# Valid and invalid requests generated per operation; with the schema's examples this keeps
# the whole run near a minute on a small machine.
POSITIVE_EXAMPLES = 10
NEGATIVE_EXAMPLES = 5
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
NEGATIVE_CHECKS = [*CHECKS, negative_data_rejection]


@dataclass
class Tally:
    operations: set[str] = field(default_factory=set)
    calls: int = 0
    statuses: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)


@pytest.fixture
def seeded(db, admin_user, author, reviewer, settings):
    """A published template, a customer, a communication, a case and a webhook subscription,
    made through the API, so that generated requests also reach real objects."""
    settings.CCM_WEBHOOK_ALLOW_PRIVATE = True
    settings.CCM_WEBHOOK_REQUIRE_HTTPS = False
    publish(letter_bundle(), author=author, reviewer=reviewer)
    issued = api_key_create(name="contract", scopes=sorted(SCOPES))
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")
    customer = api.post(
        "/api/v1/customers",
        {"external_ref": "C-1", "name": "Ada Lovelace", "emails": ["ada@example.org"]},
        format="json",
    )
    assert customer.status_code == 201, customer.content
    communication = api.post(
        "/api/v1/communications",
        {
            "template": "letter",
            "customer": "C-1",
            "data": {"customer": {"name": "Ada"}, "balance": 1.5, "as_of": "2026-03-01"},
        },
        format="json",
    )
    assert communication.status_code == 202, communication.content
    webhook = api.post("/api/v1/webhooks", {"url": "http://127.0.0.1:9/hook"}, format="json")
    assert webhook.status_code == 201, webhook.content
    return {
        "key": issued.key,
        "communication": communication.json()["id"],
        "webhook": webhook.json()["id"],
    }


@pytest.fixture
def wsgi_app():
    """The project's WSGI app, keeping the test's database connection open between requests
    (as Django's test client does): its transaction holds the seeded rows."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield get_wsgi_application()
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def _known_path_parameters(operation, seeded) -> dict:
    path = operation.path
    names = {p.name for p in operation.path_parameters}
    known: dict = {}
    if "ref" in names and path.startswith("/api/v1/customers"):
        known["ref"] = "C-1"
    if "code" in names and path.startswith("/api/v1/templates"):
        known["code"] = "letter"
    if "id" in names and path.startswith("/api/v1/communications"):
        known["id"] = seeded["communication"]
    if "id" in names and path.startswith("/api/v1/webhooks"):
        known["id"] = seeded["webhook"]
    # Cases opened by the generated POST /api/v1/cases requests, which run first.
    case = Case.objects.order_by("pk").values_list("reference", flat=True).first()
    if "ref" in names and path.startswith("/api/v1/cases") and case:
        known["ref"] = case
    return known


def _only_credentials_made_invalid(case, credentials) -> bool:
    """A negative case whose only invalid part is the credentials this test replaces with
    real ones (the auth cookie or header): what is sent is valid, so it cannot be refused."""
    negative = {
        location.name
        for location, info in case.meta.components.items()
        if info.mode == GenerationMode.NEGATIVE
    }
    if not negative:
        return False
    replaced = {
        "HEADER": set(credentials["headers"]),
        "COOKIE": set(credentials.get("cookies", {})),
    }
    return all(
        location in replaced
        and set(getattr(case, location.lower() + "s") or {}) <= replaced[location]
        for location in negative
    )


def _run(operation, strategy, examples: int, call) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(case=strategy)
    def run(case):
        call(case)

    # Unsatisfiable: nothing about the operation can be made invalid (e.g. a bare GET by id).
    with contextlib.suppress(Unsatisfiable):
        run()


def test_every_operation_keeps_to_the_schema(seeded, admin_user, wsgi_app):
    # given the live schema, an API key with every scope and a staff session
    started = time.monotonic()
    schema = schemathesis.openapi.from_wsgi("/api/schema/", wsgi_app)
    staff = APIClient()
    staff.force_login(admin_user)
    csrf = _get_new_csrf_string()
    as_staff = {
        "headers": {"X-CSRFToken": csrf},
        "cookies": {"sessionid": staff.cookies["sessionid"].value, "csrftoken": csrf},
    }
    with_key = {"headers": {"Authorization": f"Api-Key {seeded['key']}"}}
    tally = Tally()

    def call_with(credentials, checks):
        def call(case):
            if _only_credentials_made_invalid(case, credentials):
                return
            tally.operations.add(case.operation.label)
            tally.calls += 1
            try:
                # A savepoint per request: a 5xx that broke the transaction is one failure,
                # not a cascade over every later request.
                savepoint = transaction.savepoint()
                response = case.call(**credentials)
                if response.status_code >= 500:
                    transaction.savepoint_rollback(savepoint)
                else:
                    transaction.savepoint_commit(savepoint)
                tally.statuses[(case.operation.label, response.status_code)] += 1
                case.validate_response(response, checks=checks, headers=credentials["headers"])
            except FailureGroup as group:  # failed checks: count them, keep going
                for failure in group.exceptions:
                    record(case, failure)
            except Failure as failure:
                record(case, failure)

        return call

    def record(case, failure) -> None:
        label = f"{case.operation.label}: {failure.title}"
        tally.failures[label] += 1
        tally.samples.setdefault(label, f"{case.as_curl_command()}\n{failure}"[:1500])

    # when every operation is exercised with its examples, valid and invalid data
    for result in schema.get_all_operations():
        operation = result.ok()
        staff_only = not any("ApiKey" in s for s in operation.definition.raw.get("security", []))
        credentials = as_staff if staff_only else with_key
        examples = operation.get_strategies_from_examples()
        if examples:
            _run(operation, st.one_of(examples), len(examples) * 2, call_with(credentials, CHECKS))
        known = _known_path_parameters(operation, seeded)
        positive = operation.as_strategy(generation_mode=GenerationMode.POSITIVE)
        if known:
            positive = st.one_of(
                positive,
                operation.as_strategy(
                    generation_mode=GenerationMode.POSITIVE, path_parameters=known
                ),
            )
        _run(operation, positive, POSITIVE_EXAMPLES, call_with(credentials, CHECKS))
        negative = operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)
        _run(operation, negative, NEGATIVE_EXAMPLES, call_with(credentials, NEGATIVE_CHECKS))

    # then nothing broke the contract
    elapsed = time.monotonic() - started
    summary = (
        f"schemathesis: {len(tally.operations)} operations, {tally.calls} requests, "
        f"{sum(tally.failures.values())} failed checks in {elapsed:.0f} s"
    )
    print(summary)
    for label, count in sorted(tally.failures.items()):
        print(f"  {count:4d}  {label}")
    for (label, status), count in sorted(tally.statuses.items()):
        print(f"  {label} -> {status}: {count}")
    for label, sample in list(tally.samples.items())[:40]:
        print("----", label, "\n", sample)
    assert not tally.failures, summary
