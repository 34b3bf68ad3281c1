"""The database health check before a request's first query (CONN_HEALTH_CHECKS with persistent
connections): a quiet connection is used without a `SELECT 1` round trip, and one the server
ended is still found and replaced before a request uses it."""

from __future__ import annotations

import time

import pytest
from django.db import connection, connections

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def second():
    """A connection of its own (the test's is inside the test's transaction)."""
    wrapper = connections.create_connection("default")
    wrapper.ensure_connection()
    yield wrapper
    wrapper.close()


def _sent(wrapper) -> list[str]:
    """Record what the wrapper's driver connection sends from now on."""
    sent: list[str] = []
    raw = wrapper.connection
    execute = raw.execute

    def recording(query, *args, **kwargs):
        sent.append(str(query))
        return execute(query, *args, **kwargs)

    raw.execute = recording
    cursor = raw.cursor

    def recording_cursor(*args, **kwargs):
        sent.append("cursor")
        return cursor(*args, **kwargs)

    raw.cursor = recording_cursor
    return sent


def test_a_quiet_connection_passes_the_check_without_a_round_trip(second):
    sent = _sent(second)
    second.health_check_done = False
    second.close_if_health_check_failed()
    assert second.connection is not None
    assert sent == []  # no SELECT 1
    with second.cursor() as cursor:
        cursor.execute("SELECT 2")
        assert cursor.fetchone() == (2,)


def test_a_connection_the_server_ended_is_replaced_before_a_query_uses_it(second):
    with second.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    time.sleep(0.2)  # the server's goodbye reaches the socket
    assert not second.is_usable()
    second.health_check_done = False
    second.close_if_health_check_failed()
    assert second.connection is None  # closed: the next query connects afresh
    with second.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] != pid
