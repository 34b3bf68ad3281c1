"""Every communication's own history, written in bulk and sealed into the audit chain.

The pipeline works in chunks, and one audit event per communication step would make the chain's
lock the bottleneck of every chunk and every API request. Instead:

- each step (received, composed, released, a delivery sent, failed, bounced, …) is a
  `CommunicationStep` row with its time, actor and details, inserted with the chunk's other
  rows in the chunk's transaction (no lock, one INSERT for the whole chunk);
- each row carries the SHA-256 of its canonical content;
- `steps_seal` (after each chunk commits, and every minute) takes the steps no audit event
  covers yet, in id order, and appends ONE chained audit event whose Merkle root covers their
  hashes; the steps point at it;
- `communication_verify` proves one communication's history: every step's hash matches its
  content, every sealing event's root matches the steps it sealed, and the event is intact and
  linked in the chain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from ccm import audit, context
from ccm.models import AuditEvent
from notifications.models import Communication, CommunicationStep, Delivery

SEAL_LIMIT = 5000
# Below this many steps one INSERT is cheaper than a COPY (a COPY costs extra round trips).
COPY_FROM = 50
# Only one sealer at a time (the others skip: nothing is lost, the next run seals it).
_SEAL_LOCK_ID = 0x4343_4D53_4541_4C53  # "CCMSEALS"


@dataclass(frozen=True)
class Step:
    """A step to record: the communication, optionally its delivery, and what happened."""

    communication_id: int
    action: str
    detail: dict = field(default_factory=dict)
    delivery_id: int | None = None


def _body(row: CommunicationStep) -> dict:
    return _content(
        row.communication_id,
        row.delivery_id,
        row.at,
        row.actor_id,
        row.actor_label,
        row.action,
        row.detail,
        row.request_id,
    )


def _content(
    communication_id, delivery_id, at, actor_id, actor_label, action, detail, request_id=""
) -> dict:
    """What a step's hash covers (the request id only when there is one)."""
    content = {
        "communication": communication_id,
        "delivery": delivery_id,
        "at": at.isoformat(),
        "actor_id": actor_id,
        "actor_label": actor_label,
        "action": action,
        "detail": detail,
    }
    if request_id:
        content["request_id"] = request_id
    return content


def _actor_parts(actor) -> tuple[Any, str]:
    if actor is None:
        return None, "system"
    return (actor if actor.pk else None), actor.get_username()


# Communication id → the request that asked for it. A task that carries several requests'
# communications (the compose drain, a dispatch chunk) names each one's own request in its
# steps, not the one request that enqueued the task.
_asked_by: ContextVar[Mapping[int, str]] = ContextVar("ccm_steps_asked_by", default={})  # noqa: B039


@contextmanager
def steps_named_by_request(steps: QuerySet[CommunicationStep]) -> Iterator[None]:
    """Within: pipeline steps of the communications whose `communication.received` steps are
    among `steps` carry the request id their intake had."""
    asked = dict(
        steps.filter(action="communication.received")
        .exclude(request_id="")
        .values_list("communication_id", "request_id")
    )
    token = _asked_by.set(asked)
    try:
        yield
    finally:
        _asked_by.reset(token)


def steps_record(
    steps: Iterable[Step], *, actor=None, at: datetime | None = None, seal_soon: bool = True
) -> int:
    """Insert the steps in the caller's transaction (one statement); they are sealed into the
    audit chain after it commits (`seal_soon`), or by the next chunk or the periodic seal."""
    when = at or timezone.now()
    rows = _rows(steps, actor=actor, at=when)
    if rows:
        _insert(rows, when)
        if seal_soon:
            pending = _seal_once.get()
            if pending is None:
                transaction.on_commit(steps_seal_soon)
            else:
                pending.append(True)  # `steps_sealed_once` seals them when it ends
    return len(rows)


# The columns of `step_rows`' tuples, in order.
STEP_COLUMNS = (
    "communication_id, delivery_id, at, actor_id, actor_label, action, detail, hash, request_id"
)


def step_rows(steps: Iterable[Step], *, actor, at: datetime, hashed: bool = True) -> list[tuple]:
    """The rows (STEP_COLUMNS) of `steps`, each with the hash of its content: for a caller
    that inserts them in a statement of its own (the intake writes a request's communication
    and its first step in one; with `hashed=False` each row carries the canonical text its
    hash is taken of instead, for a statement that fills in the id and hashes it itself)."""
    return [
        (*row[:6], json.loads(row[6]), *row[7:])
        for row in _rows(steps, actor=actor, at=at, hashed=hashed)
    ]


def _rows(steps: Iterable[Step], *, actor, at: datetime, hashed: bool = True) -> list[tuple]:
    """As `step_rows`, with each detail as its JSON text (what the INSERT sends)."""
    user, label = _actor_parts(actor)
    actor_id = user.pk if user is not None else None
    request_id = (context.request_id() or "")[:200]
    asked = _asked_by.get()
    # What every step of the call shares, in its canonical form (keys in sorted order).
    shared = f'"actor_id":{json.dumps(actor_id)},"actor_label":{json.dumps(label)},' + (
        f'"at":{json.dumps(at.isoformat())},'
    )
    texts: dict[Any, str] = {}

    def text(value) -> str:
        if value not in texts:
            texts[value] = json.dumps(value)
        return texts[value]

    rows = []
    for step in steps:
        rid = asked.get(step.communication_id, request_id)
        detail, canonical = _detail_json(step.detail)
        if canonical is None:
            content = _content(
                step.communication_id,
                step.delivery_id,
                at,
                actor_id,
                label,
                step.action,
                json.loads(detail),
                rid,
            )
            body = audit.plain_canonical(content)
        else:
            # The canonical JSON `audit.plain_leaf_hash` makes of `_content`, written directly:
            # the values the steps of a call share are encoded once, not per step.
            body = (
                f'{{"action":{text(step.action)},{shared}'
                f'"communication":{step.communication_id},'
                f'"delivery":{text(step.delivery_id)},"detail":{canonical}'
                + (f',"request_id":{text(rid)}}}' if rid else "}")
            )
        digest = hashlib.sha256(body.encode()).hexdigest() if hashed else body
        rows.append(
            (
                *(step.communication_id, step.delivery_id, at, actor_id, label, step.action),
                *(detail, digest, rid),
            )
        )
    return rows


def _detail_json(detail: dict) -> tuple[str, str | None]:
    """A step's detail as JSON (what the JSONField gives back: `audit._jsonable`), and its
    canonical text (sorted keys, no spaces) when it can be written without a round trip: every
    key a string, so JSON keeps their order (an int key becomes a string and sorts anew)."""
    if not detail:
        return "{}", "{}"
    text = json.dumps(detail, default=str, sort_keys=True, separators=(",", ":"))
    return text, (text if _string_keys(detail) else None)


def _string_keys(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _string_keys(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_string_keys(v) for v in value)
    return True


# Inside `steps_sealed_once`: a list the transactions that recorded steps mark, instead of
# each sealing after its own commit.
_seal_once: ContextVar[list[bool] | None] = ContextVar("ccm_steps_seal_once", default=None)


@contextmanager
def steps_sealed_once() -> Iterator[None]:
    """Within: the steps of every transaction are sealed together when the block ends (one
    chained event, one UPDATE of the steps), not after each commit. A task that composes and
    dispatches a chunk commits three times; one seal covers all of them. If the process dies
    before the end, the periodic seal covers what was committed."""
    pending: list[bool] = []
    token = _seal_once.set(pending)
    try:
        yield
    finally:
        _seal_once.reset(token)
        if pending:
            transaction.on_commit(steps_seal_soon)  # at once outside a transaction


def _insert(rows: list[tuple], when: datetime) -> None:
    """Plain tuples, no model instances: a chunk writes thousands of steps."""
    if connection.vendor != "postgresql":
        CommunicationStep.objects.bulk_create(
            [
                CommunicationStep(
                    communication_id=r[0],
                    delivery_id=r[1],
                    at=when,
                    actor_id=r[3],
                    actor_label=r[4],
                    action=r[5],
                    detail=json.loads(r[6]),
                    hash=r[7],
                    request_id=r[8],
                )
                for r in rows
            ]
        )
        return
    table = CommunicationStep._meta.db_table
    columns = STEP_COLUMNS
    values = [(r[0], r[1], when, *r[3:]) for r in rows]
    if len(rows) < COPY_FROM:
        # A request's few steps: one INSERT is one round trip, a COPY several.
        row = "(" + ", ".join(["%s"] * 9) + ")"
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} ({columns}) VALUES {', '.join([row] * len(values))}",  # noqa: S608
                [value for v in values for value in v],
            )
        return
    # Names are the model's own; every value travels in the COPY stream.
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy,
    ):
        for v in values:
            copy.write_row(v)


def step_record(
    *,
    communication: Communication,
    action: str,
    detail: dict | None = None,
    actor=None,
    delivery: Delivery | None = None,
) -> None:
    steps_record(
        [Step(communication.pk, action, detail or {}, delivery.pk if delivery else None)],
        actor=actor,
    )


def steps_seal_soon() -> None:
    """Seal what the committed transaction wrote, unless the sealer is busy (it then will)."""
    try:
        steps_seal()
    except Exception:
        import logging

        logging.getLogger(__name__).exception("sealing communication steps failed")


def steps_seal(*, limit: int = SEAL_LIMIT) -> int:
    """Append one audit event covering (Merkle root) up to `limit` unsealed steps."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_SEAL_LOCK_ID])
                if not cursor.fetchone()[0]:
                    return 0
        rows = list(
            CommunicationStep.objects.filter(seal__isnull=True)
            .order_by("id")
            .values_list("id", "hash")[:limit]
        )
        if not rows:
            return 0
        ids = [pk for pk, _ in rows]
        event = audit.record_batch(
            action="communication_steps.sealed",
            leaves=[h for _, h in rows],
            after={"first_step": ids[0], "last_step": ids[-1]},
        )
        CommunicationStep.objects.filter(id__any=ids).update(seal=event)
    return len(rows)


def steps_seal_all() -> int:
    """The periodic task: seal everything that is waiting."""
    total = 0
    while sealed := steps_seal():
        total += sealed
    return total


@dataclass(frozen=True)
class Proof:
    ok: bool
    steps: int
    seals: list[int]
    unsealed: int = 0
    reason: str = ""


def communication_verify(communication_id: int) -> Proof:
    """Prove one communication's history against the audit chain (see the module docstring)."""
    mine = list(CommunicationStep.objects.filter(communication_id=communication_id).order_by("id"))
    for row in mine:
        if audit.leaf_hash(_body(row)) != row.hash:
            return Proof(False, len(mine), [], reason=f"step {row.pk} does not match its hash")
    seal_ids = sorted({row.seal_id for row in mine if row.seal_id is not None})
    for seal_id in seal_ids:
        event = AuditEvent.objects.get(pk=seal_id)
        if not audit.event_verify(event):
            return Proof(False, len(mine), seal_ids, reason=f"audit event {seal_id} is broken")
        sealed = list(
            CommunicationStep.objects.filter(seal_id=seal_id)
            .order_by("id")
            .values_list("hash", flat=True)
        )
        after = event.after or {}
        if after.get("count") != len(sealed) or audit.merkle_root(sealed) != after.get(
            "merkle_root"
        ):
            return Proof(
                False, len(mine), seal_ids, reason=f"steps sealed by event {seal_id} changed"
            )
    unsealed = sum(1 for row in mine if row.seal_id is None)
    return Proof(True, len(mine), seal_ids, unsealed=unsealed)


@dataclass(frozen=True)
class Entry:
    """One line of a communication's timeline (the API's and the back-office's)."""

    created_at: datetime
    action: str
    actor_label: str
    after: dict | None


def communication_history(communication: Communication) -> list[Entry]:
    """The communication's steps and the audit events about it or its deliveries, in time
    order: pipeline steps live in `CommunicationStep`, people's decisions (cancel, resend,
    corrections) and older history in the audit log."""
    entries = [
        Entry(
            s.at,
            s.action,
            s.actor_label,
            {**s.detail, **({"delivery": s.delivery_id} if s.delivery_id else {})},
        )
        for s in communication.steps.order_by("id")
    ]
    delivery_ids = [str(pk) for pk in communication.deliveries.values_list("pk", flat=True)]
    subject_type, subject_id = audit.subject_label(communication)
    events = AuditEvent.objects.filter(
        subject_type=subject_type, subject_id=subject_id
    ) | AuditEvent.objects.filter(
        subject_type="notifications.delivery", subject_id__in=delivery_ids
    )
    entries += [
        Entry(e.created_at, e.action, e.actor_label, e.after) for e in events.order_by("id")
    ]
    entries.sort(key=lambda e: e.created_at)
    return entries
