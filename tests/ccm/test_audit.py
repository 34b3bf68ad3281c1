from __future__ import annotations

import threading

import pytest
from django.core.management import call_command
from django.db import connection, connections, transaction

from ccm import audit
from ccm.models import GENESIS_HASH, AuditEvent

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="needs PostgreSQL (set DATABASE_URL)"
)


def test_events_are_chained_by_hash(admin_user):
    # given
    first = audit.record(actor=admin_user, action="thing.created", after={"n": 1})
    second = audit.record(actor=None, action="thing.changed", before={"n": 1}, after={"n": 2})
    # then
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash
    assert second.hash == audit.compute_hash(first.hash, AuditEvent.objects.get(pk=second.pk))
    assert second.actor_label == "system"
    assert audit.verify_chain().ok


def test_audit_verify_reports_ok_with_count(db, capsys):
    for i in range(3):
        audit.record(actor=None, action="tick", after={"i": i})
    call_command("audit_verify")
    assert capsys.readouterr().out.strip() == "audit chain ok: 3 events"


def _tamper(sql: str, params: list) -> None:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # What a superuser could do: bypass the append-only trigger for this session.
            cursor.execute("SET session_replication_role = replica")
        cursor.execute(sql, params)
        if connection.vendor == "postgresql":
            cursor.execute("SET session_replication_role = DEFAULT")


def test_audit_verify_finds_a_row_changed_by_raw_sql(db):
    # given three events, the middle one rewritten behind the application's back
    events = [audit.record(actor=None, action="tick", after={"i": i}) for i in range(3)]
    _tamper("UPDATE ccm_auditevent SET action = %s WHERE id = %s", ["tock", events[1].pk])
    # when
    from django.core.management.base import CommandError

    with pytest.raises(CommandError) as excinfo:
        call_command("audit_verify")
    # then
    assert excinfo.value.returncode == 1
    assert f"broken at event {events[1].pk}" in str(excinfo.value)
    report = audit.verify_chain()
    assert (report.ok, report.broken_id, report.count) == (False, events[1].pk, 1)


def test_audit_verify_finds_a_deleted_row(db):
    events = [audit.record(actor=None, action="tick", after={"i": i}) for i in range(3)]
    _tamper("DELETE FROM ccm_auditevent WHERE id = %s", [events[1].pk])
    report = audit.verify_chain()
    assert not report.ok
    assert report.broken_id == events[2].pk


def test_rolled_back_action_leaves_no_event(db):
    with pytest.raises(RuntimeError), transaction.atomic():
        audit.record(actor=None, action="doomed")
        raise RuntimeError("business rule failed after auditing")
    assert not AuditEvent.objects.exists()


@postgres_only
@pytest.mark.parametrize(
    "sql",
    ["UPDATE ccm_auditevent SET action = 'x'", "DELETE FROM ccm_auditevent"],
)
def test_postgres_trigger_rejects_update_and_delete(db, sql):
    audit.record(actor=None, action="tick")
    from django.db import DatabaseError

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        connection.cursor().execute(sql)
    assert AuditEvent.objects.get().action == "tick"


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_keep_one_chain():
    # given 6 threads appending at once, each in its own transaction
    writers, per_writer = 6, 15
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            barrier.wait()
            for i in range(per_writer):
                with transaction.atomic():
                    audit.record(actor=None, action="concurrent", after={"w": n, "i": i})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # then every event is on one unbroken chain
    assert errors == []
    report = audit.verify_chain()
    assert report.ok
    assert report.count == writers * per_writer
