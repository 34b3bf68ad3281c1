"""Signed checkpoints that anchor the audit chain, so that losing its tail shows.

The hash chain (ccm/audit.py) proves that no row was changed or removed *between* two rows; it
cannot tell a chain that lost its newest rows (or all of them, or had a middle row rewritten and
every later hash recomputed) from an honest shorter one. A checkpoint says "the chain held
`count` events, the newest `head_id` with hash `head_hash`, at `created_at`", signed with
HMAC-SHA256 under AUDIT_SIGNING_KEY — a key in the environment, never in the database, so
someone who can rewrite the tables cannot re-sign. Checkpoints are written every
AUDIT_CHECKPOINT_MINUTES by the queue, logged on the `ccm.audit` logger and, when
AUDIT_CHECKPOINT_EXPORT names a file, appended to it as one JSON line: copies an auditor keeps
outside the database, which `audit_verify --against FILE` checks the chain against.

Each checkpoint names its key by `key_id` (derived from the key), so keys can be rotated:
checkpoints signed with a key listed in AUDIT_SIGNING_KEYS_OLD still verify.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ccm import audit
from ccm.models import AuditCheckpoint, AuditEvent

logger = logging.getLogger("ccm.audit")

_FORMAT = "ccm-audit-checkpoint-v1"


def key_id(key: str) -> str:
    """A name for a signing key that reveals nothing about it."""
    return hashlib.sha256(f"ccm-audit-key-id\0{key}".encode()).hexdigest()[:16]


def _keys() -> dict[str, str]:
    keys = [settings.AUDIT_SIGNING_KEY, *settings.AUDIT_SIGNING_KEYS_OLD]
    return {key_id(key): key for key in keys if key}


def _message(
    *, count: int, head_id: int | None, head_hash: str, created_at: str, kid: str
) -> bytes:
    return "\n".join([_FORMAT, str(count), str(head_id or 0), head_hash, created_at, kid]).encode()


def _sign(key: str, message: bytes) -> str:
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def _as_dict(checkpoint: AuditCheckpoint) -> dict:
    return {
        "checkpoint": checkpoint.pk,
        "created_at": checkpoint.created_at.isoformat(),
        "count": checkpoint.count,
        "head_id": checkpoint.head_id,
        "head_hash": checkpoint.head_hash,
        "key_id": checkpoint.key_id,
        "signature": checkpoint.signature,
    }


def checkpoint_line(checkpoint: AuditCheckpoint) -> str:
    """The checkpoint as one JSON line, the form an auditor keeps."""
    return json.dumps(_as_dict(checkpoint), sort_keys=True)


def audit_checkpoint_create(*, force: bool = False) -> AuditCheckpoint | None:
    """Sign the chain's head now. Without `force`, nothing is written when the head has not
    moved since the last checkpoint (the periodic task runs this; it is safe to run twice)."""
    key = settings.AUDIT_SIGNING_KEY
    with transaction.atomic():
        audit.chain_lock()  # nobody appends while the head is read and counted
        head = AuditEvent.objects.order_by("-id").values("id", "hash").first()
        head_id, head_hash = (head["id"], head["hash"]) if head else (None, "")
        last = AuditCheckpoint.objects.order_by("-id").first()
        if (
            not force
            and last is not None
            and (last.head_id, last.head_hash) == (head_id, head_hash)
        ):
            return None
        count = AuditEvent.objects.count()
        created_at = timezone.now()
        kid = key_id(key)
        message = _message(
            count=count,
            head_id=head_id,
            head_hash=head_hash,
            created_at=created_at.isoformat(),
            kid=kid,
        )
        checkpoint = AuditCheckpoint.objects.create(
            created_at=created_at,
            count=count,
            head_id=head_id,
            head_hash=head_hash,
            key_id=kid,
            signature=_sign(key, message),
        )
    line = checkpoint_line(checkpoint)
    logger.info("audit checkpoint %s", line)
    if settings.AUDIT_CHECKPOINT_EXPORT:
        checkpoint_export(checkpoint=checkpoint, path=Path(settings.AUDIT_CHECKPOINT_EXPORT))
    return checkpoint


def checkpoint_export(*, checkpoint: AuditCheckpoint, path: Path) -> None:
    """Append the checkpoint to `path` as a JSON line."""
    with path.open("a", encoding="utf-8") as out:
        out.write(checkpoint_line(checkpoint) + "\n")


def audit_checkpoint_task() -> int | None:
    """The periodic task (see ccm.tasks.SCHEDULES)."""
    checkpoint = audit_checkpoint_create()
    return checkpoint.pk if checkpoint else None


# -- verification -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Anchor:
    """A checkpoint as it is verified: from the table, or from a line an auditor kept."""

    label: str
    created_at: str
    count: int
    head_id: int | None
    head_hash: str
    key_id: str
    signature: str

    @classmethod
    def from_dict(cls, data: dict, *, label: str) -> Anchor:
        try:
            return cls(
                label=label,
                created_at=str(data["created_at"]),
                count=int(data["count"]),
                head_id=None if data["head_id"] is None else int(data["head_id"]),
                head_hash=str(data["head_hash"]),
                key_id=str(data["key_id"]),
                signature=str(data["signature"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{label} is not a CCM audit checkpoint: {exc}") from exc

    def signature_problem(self) -> str | None:
        key = _keys().get(self.key_id)
        if key is None:
            return (
                f"{self.label} was signed with key {self.key_id}, which is neither "
                "AUDIT_SIGNING_KEY nor one of AUDIT_SIGNING_KEYS_OLD"
            )
        message = _message(
            count=self.count,
            head_id=self.head_id,
            head_hash=self.head_hash,
            created_at=self.created_at,
            kid=self.key_id,
        )
        if not hmac.compare_digest(_sign(key, message), self.signature):
            return f"{self.label} does not match its signature: the checkpoint was altered"
        return None


@dataclass(frozen=True)
class CheckpointReport:
    ok: bool
    anchor: Anchor | None = None
    problems: list[str] = field(default_factory=list)


def anchor_from_file(path: Path) -> Anchor:
    """The last checkpoint line of an exported file."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} holds no checkpoint")
    try:
        data = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: the last line is not JSON: {exc}") from exc
    return Anchor.from_dict(data, label=f"checkpoint #{data.get('checkpoint')} from {path}")


def _latest_anchor() -> Anchor | None:
    checkpoint = AuditCheckpoint.objects.order_by("-id").first()
    if checkpoint is None:
        return None
    return Anchor.from_dict(_as_dict(checkpoint), label=f"checkpoint #{checkpoint.pk}")


def verify_against_checkpoint(anchor: Anchor | None = None) -> CheckpointReport:
    """Check the chain's head against a signed checkpoint (by default the latest in the table):
    the events it covered are all still there, and the one it ended on still has its hash.
    Run after audit.verify_chain, which checks the links between rows."""
    anchor = anchor or _latest_anchor()
    if anchor is None:
        return CheckpointReport(ok=True)
    problem = anchor.signature_problem()
    if problem:
        return CheckpointReport(ok=False, anchor=anchor, problems=[problem])
    signed = f"{anchor.label} (signed {_when(anchor.created_at)})"
    problems = []
    if anchor.head_id is not None:
        covered = AuditEvent.objects.filter(id__lte=anchor.head_id).count()
        head = AuditEvent.objects.filter(id=anchor.head_id).values_list("hash", flat=True).first()
        total = AuditEvent.objects.count()
        if head is None:
            problems.append(
                f"truncated: {signed} covers {anchor.count} events up to event "
                f"{anchor.head_id}, which is missing; {total} events remain"
            )
        elif head != anchor.head_hash:
            problems.append(
                f"rewritten: event {anchor.head_id} no longer has the hash {signed} recorded "
                "(rows up to it were changed and their hashes recomputed)"
            )
        if head is not None and covered != anchor.count:
            problems.append(
                f"truncated: {signed} covers {anchor.count} events up to event "
                f"{anchor.head_id}; {covered} of them remain"
            )
    return CheckpointReport(ok=not problems, anchor=anchor, problems=problems)


def _when(created_at: str) -> str:
    try:
        return datetime.fromisoformat(created_at).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    except ValueError:
        return created_at
