"""Per-communication history: every pipeline step of every communication, with its time and
actor, sealed into the audit hash chain in batches (see notifications/pipeline/history.py)."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class CommunicationStep(models.Model):
    """One step in one communication's life (received, composed, a delivery sent, …).

    Rows are written in bulk by the pipeline, never updated except to point at the audit event
    that seals them: `hash` covers the row's content, the seal's Merkle root covers the hashes."""

    # Indexed by (communication, id) below, which serves every lookup by communication.
    communication = models.ForeignKey(
        "notifications.Communication",
        on_delete=models.PROTECT,
        related_name="steps",
        db_index=False,
    )
    delivery_id = models.BigIntegerField(null=True, blank=True)
    at = models.DateTimeField()
    # Indexed where set (Meta): most steps are the system's.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
    )
    actor_label = models.CharField(max_length=200, blank=True)
    action = models.CharField(max_length=100)
    detail = models.JSONField(default=dict, blank=True)
    # The id of the web request (or the task it enqueued) that took this step, for tracing.
    request_id = models.CharField(max_length=200, blank=True, default="")
    hash = models.CharField(max_length=64)
    seal = models.ForeignKey(
        "ccm.AuditEvent",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        # No database constraint: the audit table's own trigger refuses TRUNCATE with its
        # reason, which a foreign key would pre-empt (and the chain is append-only anyway).
        db_constraint=False,
        # Indexed where set (Meta): a step is inserted unsealed.
        db_index=False,
    )

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["communication", "id"]),
            # The sealer looks for what no audit event covers yet.
            models.Index(
                fields=["id"], condition=models.Q(seal__isnull=True), name="step_unsealed"
            ),
            # `communication_verify` reads the steps of each seal.
            models.Index(
                fields=["seal"], condition=models.Q(seal__isnull=False), name="step_sealed_by"
            ),
            models.Index(
                fields=["actor"], condition=models.Q(actor__isnull=False), name="step_actor_set"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.action} of communication {self.communication_id}"
