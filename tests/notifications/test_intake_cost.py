"""What one POST /api/v1/communications costs the database: few statements, one transaction,
no audit-chain lock (the steps are sealed later, per chunk), no task of its own while a compose
drain waits in the queue."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_q.conf import Conf
from rest_framework.test import APIClient

from ccm.api.auth import api_key_create
from notifications.models import Communication

DATA = {"customer": {"name": "Ada Lovelace"}, "balance": 12.5, "as_of": "2026-05-01"}
# With an Idempotency-Key: its claim (one INSERT … ON CONFLICT, no savepoint), the customer,
# ONE statement inserting the communication (its id drawn there) and its `received` step (no
# transaction of its own: no BEGIN/COMMIT round trips either), and the stored response. The
# published version is the process's kept copy (checked against the templates' generation in
# the shared cache, read once per request with the API keys'). 8 before (and two
# transactions), then 6 (the version read per request), then 5 (the id drawn on its own).
STATEMENTS_PER_POST = 4


def test_a_request_costs_few_statements_and_takes_no_chain_lock(
    letter, customer, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(Conf, "SYNC", False)
    issued = api_key_create(name="core-banking", scopes=["communications:write"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")

    def post(key: str):
        with django_capture_on_commit_callbacks(execute=True):
            return client.post(
                "/api/v1/communications",
                {"template": "letter", "customer": "C-1", "data": DATA},
                format="json",
                HTTP_IDEMPOTENCY_KEY=key,
            )

    assert post("warm-up").status_code == 202  # kept: key, published version, schema validator
    with CaptureQueriesContext(connection) as queries:
        response = post("order-1")
    assert response.status_code == 202
    every = [q["sql"] for q in queries]
    statements = [sql for sql in every if not sql.startswith(("SAVEPOINT", "RELEASE"))]
    print(f"\nstatements per POST: {len(statements)} (+{len(every) - len(statements)} savepoints)")
    assert not [sql for sql in statements if "pg_advisory" in sql]
    # The rate limit's counter lives in the shared cache: the database cache by default (four
    # statements a request; Redis when CACHE_URL names it). That is the API's throttle, not the
    # intake, and a deployment under load points CACHE_URL at Redis.
    statements = [sql for sql in statements if '"ccm_cache"' not in sql]
    # The warm-up's drain still waits in the queue: this request adds no task of its own.
    assert not [sql for sql in statements if '"django_q_ormq"' in sql]
    # The template's published version is kept by the process: no query.
    assert not [sql for sql in statements if '"documents_template' in sql]
    assert len(statements) <= STATEMENTS_PER_POST
    # From the idempotency claim to its stored response, no transaction of its own (in the
    # test's transaction one would show as a savepoint).
    claim = next(i for i, sql in enumerate(every) if '"ccm_idempotencyrecord"' in sql)
    assert not [sql for sql in every[claim:] if sql.startswith("SAVEPOINT")]


def _prepared_on_this_connection() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE NOT from_sql")
        return [statement for (statement,) in cursor.fetchall()]


@pytest.mark.parametrize("prepared", [True, False])
def test_the_intake_statements_are_prepared_once_per_connection(
    letter, customer, monkeypatch, settings, django_capture_on_commit_callbacks, prepared
):
    """PostgreSQL parses and plans the statements every keyed request runs (the key's claim,
    the customer's lookup, the communication's insert, the stored answer) once on a
    connection, not on every request; DB_PREPARED_STATEMENTS=false (a pooler that cannot
    keep prepared statements) prepares nothing, and the requests are answered the same."""
    settings.DB_PREPARED_STATEMENTS = prepared
    monkeypatch.setattr(Conf, "SYNC", False)
    issued = api_key_create(name="core-banking", scopes=["communications:write"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")
    ids = set()
    for n in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(
                "/api/v1/communications",
                {"template": "letter", "customer": "C-1", "data": DATA},
                format="json",
                HTTP_IDEMPOTENCY_KEY=f"order-{n}",
            )
        assert response.status_code == 202, response.content
        ids.add(response.json()["id"])
    assert len(ids) == 3
    assert Communication.objects.filter(public_id__in=ids, customer=customer).count() == 3
    statements = _prepared_on_this_connection()
    lookups = [s for s in statements if 'FROM "notifications_customer"' in s]
    inserts = [s for s in statements if 'INSERT INTO "notifications_communication"' in s]
    claims = [s for s in statements if 'INSERT INTO "ccm_idempotencyrecord"' in s]
    answers = [s for s in statements if 'UPDATE "ccm_idempotencyrecord"' in s]
    if prepared:
        # Each prepared by the first request and reused by the others.
        assert len(lookups) == len(inserts) == len(claims) == len(answers) == 1
    else:
        assert lookups == inserts == claims == answers == []
    # A retry with a key already answered replays the stored answer.
    replay = client.post(
        "/api/v1/communications",
        {"template": "letter", "customer": "C-1", "data": DATA},
        format="json",
        HTTP_IDEMPOTENCY_KEY="order-1",
    )
    assert replay.status_code == 202
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.json()["id"] in ids
