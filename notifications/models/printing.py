"""Print batches for the mail house: letters collected into one print stream, handed over,
mailed, and sometimes returned."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django_fsm import ConcurrentTransitionMixin, FSMField, transition

from documents.models import Document
from notifications.models import Customer, Delivery


class PrintBatchState(models.TextChoices):
    OPEN = "open"
    CLOSED = "closed"
    HANDED_OVER = "handed_over"
    MAILED = "mailed"


class PrintBatch(ConcurrentTransitionMixin, models.Model):
    """Letters collected for one run at the mail house.

    open (letters join) → closed (the print stream and manifest are produced and fixed by their
    SHA-256) → handed_over (the mail house has the files) → mailed (the letters are in the post).
    At most one batch is open at a time: every print delivery joins it.
    """

    state = FSMField(default=PrintBatchState.OPEN, choices=PrintBatchState.choices, protected=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # The last sequence handed out; items are numbered 1..item_count in the order they joined.
    item_count = models.PositiveIntegerField(default=0)
    page_count = models.PositiveIntegerField(default=0, help_text="Pages in the print stream")
    stream = models.FileField(upload_to="print/%Y/%m/", blank=True)
    stream_sha256 = models.CharField(max_length=64, blank=True)
    manifest = models.FileField(upload_to="print/%Y/%m/", blank=True)
    manifest_sha256 = models.CharField(max_length=64, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    closed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    handed_over_at = models.DateTimeField(null=True, blank=True)
    handed_over_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    mailed_at = models.DateTimeField(null=True, blank=True)
    mailed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "print batches"
        constraints = [
            models.UniqueConstraint(
                fields=["state"], condition=Q(state="open"), name="one_open_print_batch"
            )
        ]
        permissions = [
            ("close_printbatch", "Can close print batches (produces the print stream)"),
            ("hand_over_printbatch", "Can hand print batches over to the mail house"),
            ("record_print_outcome", "Can record print batches mailed and returned mail"),
        ]

    def __str__(self) -> str:
        return f"{self.reference} ({self.state})"

    @property
    def reference(self) -> str:
        """How the batch is named on cover sheets, in provider ids and to the mail house."""
        return f"batch-{self.pk}"

    @transition(field=state, source=PrintBatchState.OPEN, target=PrintBatchState.CLOSED)
    def close(self, *, by, when, page_count: int, stream_sha256: str, manifest_sha256: str) -> None:
        self.closed_by = by
        self.closed_at = when
        self.page_count = page_count
        self.stream_sha256 = stream_sha256
        self.manifest_sha256 = manifest_sha256

    @transition(field=state, source=PrintBatchState.CLOSED, target=PrintBatchState.HANDED_OVER)
    def hand_over(self, *, by, when) -> None:
        self.handed_over_by = by
        self.handed_over_at = when

    @transition(field=state, source=PrintBatchState.HANDED_OVER, target=PrintBatchState.MAILED)
    def mark_mailed(self, *, by, when) -> None:
        self.mailed_by = by
        self.mailed_at = when


class PrintItem(models.Model):
    """One letter in a batch: the delivery it carries, and what was printed for whom."""

    batch = models.ForeignKey(PrintBatch, on_delete=models.PROTECT, related_name="items")
    delivery = models.OneToOneField(Delivery, on_delete=models.PROTECT, related_name="print_item")
    sequence = models.PositiveIntegerField()
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="+")
    # Snapshots: what goes on the envelope is what the customer record said when the letter
    # joined the batch, whatever changes later.
    recipient_name = models.CharField(max_length=200)
    postal_address = models.JSONField(help_text="Address lines as printed")
    document = models.ForeignKey(Document, on_delete=models.PROTECT, related_name="+")
    pages = models.PositiveIntegerField()
    document_sha256 = models.CharField(max_length=64)
    added_at = models.DateTimeField(auto_now_add=True)
    returned_at = models.DateTimeField(null=True, blank=True)
    return_reason = models.CharField(max_length=300, blank=True)
    returned_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["batch_id", "sequence"]
        constraints = [
            models.UniqueConstraint(fields=["batch", "sequence"], name="print_item_sequence")
        ]

    def __str__(self) -> str:
        return self.provider_id

    @property
    def provider_id(self) -> str:
        """The print channel's message id: batch and sequence, as on the cover sheet."""
        return f"batch-{self.batch_id}/{self.sequence}"
