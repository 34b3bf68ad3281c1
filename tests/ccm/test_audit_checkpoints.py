"""Signed checkpoints anchor the audit chain: losing its tail, emptying it, or rewriting a row
and recomputing every later hash are all reported by audit_verify (issue 10)."""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

from ccm import audit, audit_checkpoints
from ccm.models import AuditCheckpoint, AuditEvent
from ccm.tasks import SCHEDULES
from notifications.models import ConsentRecord
from tests.ccm.test_audit import _tamper, postgres_only

pytestmark = postgres_only


@pytest.fixture
def chain(db):
    """40 events, then a signed checkpoint of them."""
    events = [audit.record(actor=None, action="tick", after={"i": i}) for i in range(40)]
    checkpoint = audit_checkpoints.audit_checkpoint_create()
    return events, checkpoint


# TRUNCATE waits for the foreign-key checks a test transaction defers; these tests commit.
truncating = pytest.mark.django_db(transaction=True)


def _verify(*args) -> str:
    with pytest.raises(CommandError) as excinfo:
        call_command("audit_verify", *args)
    assert excinfo.value.returncode == 1
    return str(excinfo.value)


def test_an_intact_chain_matches_its_checkpoint(chain, capsys):
    events, checkpoint = chain
    audit.record(actor=None, action="after the checkpoint")
    call_command("audit_verify")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "audit chain ok: 41 events"
    assert out[1].startswith(
        f"matches checkpoint #{checkpoint.pk}: 40 events up to event {events[-1].pk}, signed "
    )


def test_deleting_the_newest_row_is_reported_as_truncation(chain):
    events, checkpoint = chain
    _tamper("DELETE FROM ccm_auditevent WHERE id = %s", [events[-1].pk])
    message = _verify()
    assert f"truncated: checkpoint #{checkpoint.pk}" in message
    assert f"covers 40 events up to event {events[-1].pk}, which is missing; 39 events remain" in (
        message
    )


def test_deleting_the_newest_25_rows_is_reported_as_truncation(chain):
    events, _ = chain
    _tamper("DELETE FROM ccm_auditevent WHERE id >= %s", [events[15].pk])
    assert "which is missing; 15 events remain" in _verify()


@truncating
def test_truncate_is_reported(chain):
    _tamper("TRUNCATE ccm_auditevent", [])
    assert "which is missing; 0 events remain" in _verify()


def test_rewriting_a_row_and_rehashing_every_later_row_is_reported(chain):
    # given a middle row rewritten and every later hash recomputed, so the links all hold
    events, checkpoint = chain
    rows = list(AuditEvent.objects.order_by("id"))
    rows[10].action = "tock"
    prev = rows[9].hash
    statements = []
    for row in rows[10:]:
        row.prev_hash = prev
        row.hash = audit.compute_hash(prev, row)
        statements.append((row.pk, row.action, row.prev_hash, row.hash))
        prev = row.hash
    # prev_hash and hash are unique: move the rewritten tail aside first
    _tamper(
        "UPDATE ccm_auditevent SET prev_hash = 'x' || id, hash = 'y' || id WHERE id >= %s",
        [rows[10].pk],
    )
    for pk, action, prev_hash, digest in statements:
        _tamper(
            "UPDATE ccm_auditevent SET action = %s, prev_hash = %s, hash = %s WHERE id = %s",
            [action, prev_hash, digest, pk],
        )
    assert audit.verify_chain().ok  # what audit_verify said before checkpoints
    # when / then
    message = _verify()
    assert (
        f"rewritten: event {events[-1].pk} no longer has the hash checkpoint #{checkpoint.pk}"
        in (message)
    )


def test_an_altered_checkpoint_is_reported(chain):
    _, checkpoint = chain
    _tamper("UPDATE ccm_auditcheckpoint SET count = 39 WHERE id = %s", [checkpoint.pk])
    assert (
        f"checkpoint #{checkpoint.pk} does not match its signature: the checkpoint was altered"
        in _verify()
    )


@truncating
def test_truncating_the_chain_and_its_checkpoints_is_caught_by_the_exported_copy(chain, tmp_path):
    # given the auditor kept the exported checkpoint
    export = tmp_path / "checkpoints.jsonl"
    call_command("audit_checkpoint", "--export", str(export))
    line = json.loads(export.read_text().splitlines()[-1])
    assert line["count"] == 40
    # when both tables are emptied behind the application's back
    _tamper("TRUNCATE ccm_auditevent", [])
    _tamper("TRUNCATE ccm_auditcheckpoint", [])
    call_command("audit_verify")  # the database alone can no longer tell
    # then the kept copy can
    message = _verify("--against", str(export))
    assert "truncated: checkpoint #" in message
    assert "0 events remain" in message


def test_old_keys_still_verify_after_rotation(chain, settings, capsys):
    # given the key is rotated after the checkpoint was signed
    old = settings.AUDIT_SIGNING_KEY
    settings.AUDIT_SIGNING_KEY = "n" * 40
    # when the old key is not kept, the checkpoint cannot be verified
    assert "signed with key" in _verify()
    # and when it is kept among the old keys, it verifies
    settings.AUDIT_SIGNING_KEYS_OLD = [old]
    call_command("audit_verify")
    assert capsys.readouterr().out.startswith("audit chain ok: 40 events")
    # and new checkpoints carry the new key's id
    audit.record(actor=None, action="tick")
    new = audit_checkpoints.audit_checkpoint_create()
    assert new.key_id == audit_checkpoints.key_id("n" * 40) != chain[1].key_id


def test_the_periodic_task_signs_only_when_the_head_moved(chain):
    assert SCHEDULES["ccm.audit_checkpoint"][0] == "ccm.audit_checkpoints.audit_checkpoint_task"
    assert audit_checkpoints.audit_checkpoint_task() is None
    audit.record(actor=None, action="tick")
    assert audit_checkpoints.audit_checkpoint_task() is not None
    assert AuditCheckpoint.objects.count() == 2


def test_checkpoints_are_exported_to_the_configured_file_and_logged(db, settings, tmp_path, caplog):
    settings.AUDIT_CHECKPOINT_EXPORT = str(tmp_path / "kept.jsonl")
    audit.record(actor=None, action="tick")
    with caplog.at_level("INFO", logger="ccm.audit"):
        checkpoint = audit_checkpoints.audit_checkpoint_create()
    line = audit_checkpoints.checkpoint_line(checkpoint)
    assert (tmp_path / "kept.jsonl").read_text() == line + "\n"
    assert f"audit checkpoint {line}" in caplog.text


TABLES = {
    "ccm_auditevent": AuditEvent,
    "notifications_consentrecord": ConsentRecord,
    "ccm_auditcheckpoint": AuditCheckpoint,
}


@truncating
@pytest.mark.parametrize("table", list(TABLES))
def test_postgres_refuses_truncate(chain, table):
    before = TABLES[table].objects.count()
    refused = pytest.raises(DatabaseError, match="append-only: TRUNCATE is not allowed")
    with refused, transaction.atomic():
        connection.cursor().execute(f"TRUNCATE {table}")
    assert TABLES[table].objects.count() == before
