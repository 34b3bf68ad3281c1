"""Retention: documents (and the personal data they were rendered from) are kept for the period
of their category (CCM_RETENTION_DAYS), then purged by a daily task; a legal hold on the
customer or on a case the document belongs to stops that until it is released.

Purging deletes the file from storage and empties the data snapshots of the document and of the
communications that sent it; the rows stay (with the hash) so the audit trail still says what
existed, and a DocumentPurge row plus an audit event say what was removed and why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from cases.models import Case, CaseCommunication, CaseDocument, DocumentPurge, LegalHold
from ccm import audit
from documents.models import Document
from notifications.models import Communication, Customer

logger = logging.getLogger(__name__)


class RetentionError(ValueError):
    pass


def retention_days() -> dict[str, int]:
    """Days each category is kept (settings.CCM_RETENTION_DAYS); every category needs one."""
    return {category: int(days) for category, days in settings.CCM_RETENTION_DAYS.items()}


# --- legal holds -------------------------------------------------------------------------


@transaction.atomic
def legal_hold_place(
    *, reason: str, by, customer: Customer | None = None, case: Case | None = None
) -> LegalHold:
    if (customer is None) == (case is None):
        raise RetentionError("A legal hold is placed on one customer or one case.")
    if not reason.strip():
        raise RetentionError("Say why the hold is placed (the matter, the request).")
    hold = LegalHold.objects.create(customer=customer, case=case, reason=reason, placed_by=by)
    audit.record(
        actor=by,
        action="legal_hold.placed",
        subject=hold,
        after={"customer": hold.customer_id, "case": hold.case_id, "reason": reason},
    )
    return hold


@transaction.atomic
def legal_hold_release(*, hold: LegalHold, by) -> LegalHold:
    locked = LegalHold.objects.select_for_update().get(pk=hold.pk)
    if locked.released_at is not None:
        raise RetentionError(f"{locked} is already released.")
    locked.released_at = timezone.now()
    locked.released_by = by
    locked.save(update_fields=["released_at", "released_by"])
    audit.record(
        actor=by,
        action="legal_hold.released",
        subject=locked,
        after={"customer": locked.customer_id, "case": locked.case_id},
    )
    return locked


# --- selectors ---------------------------------------------------------------------------


def documents_held() -> QuerySet[Document]:
    """Documents under an active hold: of a held customer (through any communication that
    carried it, or a case it is linked to), or linked to a held case."""
    active = LegalHold.objects.filter(released_at__isnull=True)
    held_customers = active.filter(customer__isnull=False).values("customer")
    held_cases = Case.objects.filter(
        Q(pk__in=active.filter(case__isnull=False).values("case")) | Q(customer__in=held_customers)
    )
    via_communication = Communication.objects.filter(
        Q(customer__in=held_customers)
        | Q(pk__in=CaseCommunication.objects.filter(case__in=held_cases).values("communication")),
        document=OuterRef("pk"),
    )
    via_case = CaseDocument.objects.filter(case__in=held_cases, document=OuterRef("pk"))
    return Document.objects.filter(Q(Exists(via_communication)) | Q(Exists(via_case)))


def documents_expired(*, now: datetime | None = None) -> QuerySet[Document]:
    """Documents past their category's retention, not purged yet, and not held."""
    now = now or timezone.now()
    past = Q(pk__in=[])
    for category, days in retention_days().items():
        past |= Q(
            template_version__template__category=category,
            created_at__lt=now - timedelta(days=days),
        )
    return (
        Document.objects.filter(past, purge__isnull=True)
        .exclude(pk__in=documents_held().values("pk"))
        .select_related("template_version__template")
        .order_by("created_at", "pk")
    )


# --- the purge ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Purged:
    document: int
    category: str
    sha256: str
    created_at: str


def document_purge(*, document: Document, now: datetime | None = None) -> Purged | None:
    """Purge one document if it is (still) expired and not held; the check and the purge
    happen under the row lock, so a hold placed meanwhile wins."""
    with transaction.atomic():
        locked = (
            documents_expired(now=now).select_for_update(of=("self",)).filter(pk=document.pk)
        ).first()
        if locked is None:
            return None
        category = locked.template_version.template.category
        name = locked.file.name or ""
        DocumentPurge.objects.create(
            document=locked,
            category=category,
            retention_days=retention_days()[category],
            sha256=locked.sha256,
            file_name=name,
        )
        Document.objects.filter(pk=locked.pk).update(file="", data={})
        # The request data the communications were composed from is personal data too.
        Communication.objects.filter(document=locked).update(data={})
        audit.record(
            actor=None,
            action="document.purged",
            subject=locked,
            after={
                "category": category,
                "retention_days": retention_days()[category],
                "sha256": locked.sha256,
                "file": name,
                "created_at": locked.created_at.isoformat(),
            },
        )
        # The file goes once the rows say so; a crash in between leaves an orphan object
        # (harmless, found by its name in the audit event), never a row pointing at nothing.
        storage = locked.file.storage
        transaction.on_commit(lambda: storage.delete(name) if name else None)
    return Purged(locked.pk, category, locked.sha256, locked.created_at.isoformat())


def retention_purge_run(*, dry_run: bool = False, limit: int = 1000) -> list[Purged]:
    """The daily task: purge what is expired (at most `limit` a run); with `dry_run`, only
    say what would go."""
    candidates = list(documents_expired()[:limit])
    if dry_run:
        return [
            Purged(d.pk, d.template_version.template.category, d.sha256, d.created_at.isoformat())
            for d in candidates
        ]
    purged = [p for d in candidates if (p := document_purge(document=d)) is not None]
    if purged:
        logger.info("retention purge removed %d documents", len(purged))
    return purged
