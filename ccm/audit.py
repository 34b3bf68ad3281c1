"""The hash-chained audit log: `record` appends, `verify_chain` walks it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.db import connection, models, transaction
from django.utils import timezone

from ccm import context
from ccm.models import GENESIS_HASH, AuditEvent

# Any fixed 64-bit number; it names the advisory lock that serialises chain appends on PostgreSQL.
_CHAIN_LOCK_ID = 0x4343_4D41_5544_4954  # "CCMAUDIT"


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so what is hashed is exactly what the JSONField gives back."""
    if value is None:
        return None
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def canonical_json(event: AuditEvent) -> str:
    body = {
        "created_at": event.created_at.isoformat(),
        "actor_id": event.actor_id,
        "actor_label": event.actor_label,
        "action": event.action,
        "subject_type": event.subject_type,
        "subject_id": event.subject_id,
        "before": event.before,
        "after": event.after,
        "request_id": event.request_id,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def compute_hash(prev_hash: str, event: AuditEvent) -> str:
    return hashlib.sha256((prev_hash + canonical_json(event)).encode()).hexdigest()


def subject_label(subject: models.Model | None) -> tuple[str, str]:
    if subject is None:
        return "", ""
    return subject._meta.label_lower, str(subject.pk)


def _actor_label(actor) -> str:
    if actor is None:
        return "system"
    return actor.get_username()


def _lock_chain() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_ID])
    # SQLite runs every transaction with BEGIN IMMEDIATE (see settings), which already
    # serialises writers on the whole database.


def chain_lock() -> None:
    """Take the chain lock now; it is held until the transaction ends. A writer that locks a
    row every writer shares (a counter) takes this first: receivers that run after an append
    already hold it, and two writers that take the two locks in opposite orders deadlock."""
    _lock_chain()


def record(
    *,
    actor,
    action: str,
    subject: models.Model | None = None,
    before: dict | None = None,
    after: dict | None = None,
) -> AuditEvent:
    """Append one event to the chain inside the caller's transaction.

    The chain lock is held until that transaction commits, so concurrent writers line up
    instead of forking the chain; a rolled-back action leaves no event behind.
    """
    subject_type, subject_id = subject_label(subject)
    with transaction.atomic():
        _lock_chain()
        last = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
        event = AuditEvent(
            created_at=timezone.now(),
            actor=actor if actor is not None and actor.pk else None,
            actor_label=_actor_label(actor),
            action=action,
            subject_type=subject_type,
            subject_id=subject_id,
            before=_jsonable(before),
            after=_jsonable(after),
            request_id=context.request_id() or "",
            prev_hash=last or GENESIS_HASH,
        )
        event.hash = compute_hash(event.prev_hash, event)
        event.save(force_insert=True)
    return event


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    count: int
    broken_id: int | None = None
    reason: str = ""


def _walk(batch_size: int = 2000) -> Iterator[AuditEvent]:
    last_id = 0
    while True:
        batch = list(AuditEvent.objects.filter(id__gt=last_id).order_by("id")[:batch_size])
        if not batch:
            return
        yield from batch
        last_id = batch[-1].id


def verify_chain() -> ChainReport:
    """Walk the chain from its first row; report the first row whose link or hash is wrong."""
    expected_prev = GENESIS_HASH
    count = 0
    for event in _walk():
        if event.prev_hash != expected_prev:
            return ChainReport(False, count, event.id, "prev_hash does not match the previous row")
        if compute_hash(event.prev_hash, event) != event.hash:
            return ChainReport(False, count, event.id, "row content does not match its hash")
        expected_prev = event.hash
        count += 1
    return ChainReport(True, count)


def history(subject: models.Model) -> models.QuerySet[AuditEvent]:
    subject_type, subject_id = subject_label(subject)
    return AuditEvent.objects.filter(subject_type=subject_type, subject_id=subject_id).order_by(
        "id"
    )


# --- batches of leaf hashes (Merkle roots) ---------------------------------------------------


def leaf_hash(body: dict) -> str:
    """SHA-256 of a record's canonical JSON: what a batch event's Merkle root is built from."""
    return plain_leaf_hash(_jsonable(body))


def plain_leaf_hash(body: dict) -> str:
    """`leaf_hash` of a body that is already what JSON gives back (string keys; strings,
    numbers, booleans, None, lists and dicts only): the same hash without the round trip,
    which costs more than the hash for the thousands of steps a chunk records."""
    return hashlib.sha256(plain_canonical(body).encode()).hexdigest()


def plain_canonical(body: dict) -> str:
    """The text `plain_leaf_hash` hashes (ASCII: JSON escapes anything else)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def merkle_root(leaves: list[str]) -> str:
    """The root of a binary Merkle tree over `leaves` in order (an odd node is paired with
    itself, as in Bitcoin); the empty tree's root is the genesis hash."""
    if not leaves:
        return GENESIS_HASH
    level = list(leaves)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [
            hashlib.sha256((level[i] + level[i + 1]).encode()).hexdigest()
            for i in range(0, len(level), 2)
        ]
    return level[0]


def record_batch(*, action: str, leaves: list[str], after: dict | None = None) -> AuditEvent:
    """One chained event that vouches for many records at once: its `after` carries the count
    and the Merkle root of their hashes, so the chain lock is taken once per batch."""
    return record(
        actor=None,
        action=action,
        after={**(after or {}), "count": len(leaves), "merkle_root": merkle_root(leaves)},
    )


def event_verify(event: AuditEvent) -> bool:
    """Whether one event's row still matches its hash and links to the row before it."""
    if compute_hash(event.prev_hash, event) != event.hash:
        return False
    previous = AuditEvent.objects.filter(id__lt=event.id).order_by("-id").first()
    return event.prev_hash == (previous.hash if previous else GENESIS_HASH)
