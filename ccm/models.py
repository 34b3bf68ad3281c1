"""The shared kernel's data: audit chain, four-eyes approvals, signed links, API keys and
idempotency records."""

from __future__ import annotations

from django.conf import settings
from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import F, Q
from django_fsm import ConcurrentTransitionMixin, FSMField, transition

GENESIS_HASH = "0" * 64


class AuditEvent(models.Model):
    """One append-only, hash-chained row per recorded action.

    `hash` is SHA-256 over the previous row's hash and this row's canonical JSON; `prev_hash` is
    unique, so two writers can never attach to the same predecessor (the chain cannot fork). On
    PostgreSQL a trigger rejects UPDATE and DELETE.
    """

    created_at = models.DateTimeField()
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    actor_label = models.CharField(max_length=200, blank=True)
    action = models.CharField(max_length=100, db_index=True)
    subject_type = models.CharField(max_length=100, blank=True)
    subject_id = models.CharField(max_length=64, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    prev_hash = models.CharField(max_length=64, unique=True)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["subject_type", "subject_id"]),
            # The audit log's search: by a subject's id, a request id or who acted.
            models.Index(fields=["subject_id"], name="audit_subject_id"),
            models.Index(fields=["request_id"], name="audit_request_id"),
            models.Index(fields=["actor_label", "id"], name="audit_actor_label"),
        ]
        permissions = [("verify_audit_chain", "Can verify the audit chain")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.action} {self.subject_type}:{self.subject_id}"


class ApprovalState(models.TextChoices):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    CHANGES_REQUESTED = "changes_requested"
    WITHDRAWN = "withdrawn"


class Decision(models.TextChoices):
    APPROVE = "approve"
    REJECT = "reject"
    REQUEST_CHANGES = "request_changes"


class Approval(ConcurrentTransitionMixin, models.Model):
    """A four-eyes sign-off on any approvable object.

    The decider is never the requester nor the subject's author: the transitions refuse it and a
    check constraint makes the database refuse it too.
    """

    subject_type = models.ForeignKey(ContentType, on_delete=models.PROTECT)
    subject_id = models.CharField(max_length=64)
    subject = GenericForeignKey("subject_type", "subject_id")
    purpose = models.CharField(max_length=100, help_text="What is signed off, e.g. publish.")
    summary = models.CharField(max_length=300, blank=True)
    state = FSMField(default=ApprovalState.PENDING, choices=ApprovalState.choices, protected=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="approvals_requested"
    )
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="approvals_authored",
    )
    requested_at = models.DateTimeField(auto_now_add=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="approvals_decided",
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    comment = models.TextField(blank=True)

    class Meta:
        ordering = ["-requested_at", "-id"]
        indexes = [models.Index(fields=["subject_type", "subject_id"])]
        permissions = [("decide_approval", "Can decide approvals (four-eyes sign-off)")]
        constraints = [
            models.CheckConstraint(
                condition=~Q(decided_by=F("requested_by")),
                name="approval_decider_is_not_requester",
            ),
            models.CheckConstraint(
                condition=~Q(decided_by=F("author")),
                name="approval_decider_is_not_author",
            ),
            models.UniqueConstraint(
                fields=["subject_type", "subject_id", "purpose"],
                condition=Q(state="pending"),
                name="approval_one_pending_per_subject",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.purpose} of {self.subject_type.model} {self.subject_id} ({self.state})"

    def _check_four_eyes(self, by) -> None:
        if by.pk in {self.requested_by_id, self.author_id}:
            raise PermissionDenied(
                "Four-eyes rule: the requester or the author cannot decide this approval."
            )

    def _decide(self, *, by, comment: str, when) -> None:
        self._check_four_eyes(by)
        self.decided_by = by
        self.decided_at = when
        self.comment = comment

    @transition(field=state, source=ApprovalState.PENDING, target=ApprovalState.APPROVED)
    def approve(self, *, by, comment: str, when) -> None:
        self._decide(by=by, comment=comment, when=when)

    @transition(field=state, source=ApprovalState.PENDING, target=ApprovalState.REJECTED)
    def reject(self, *, by, comment: str, when) -> None:
        self._decide(by=by, comment=comment, when=when)

    @transition(field=state, source=ApprovalState.PENDING, target=ApprovalState.CHANGES_REQUESTED)
    def request_changes(self, *, by, comment: str, when) -> None:
        self._decide(by=by, comment=comment, when=when)

    @transition(field=state, source=ApprovalState.PENDING, target=ApprovalState.WITHDRAWN)
    def withdraw(self, *, by, comment: str, when) -> None:
        # Withdrawing is the requester's (or author's) act, so no four-eyes check here.
        self.decided_by = None
        self.decided_at = when
        self.comment = comment


class SignedLink(models.Model):
    """The server-side half of a signed link: its nonce makes the link revocable and,
    where `single_use` is set, spendable only once."""

    nonce = models.CharField(max_length=64, unique=True)
    purpose = models.CharField(max_length=100)
    subject_type = models.ForeignKey(ContentType, on_delete=models.PROTECT)
    subject_id = models.CharField(max_length=64)
    subject = GenericForeignKey("subject_type", "subject_id")
    data = models.JSONField(default=dict, blank=True)
    single_use = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    used_at = models.DateTimeField(null=True, blank=True)
    use_count = models.PositiveIntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["subject_type", "subject_id", "purpose"])]

    def __str__(self) -> str:
        return f"{self.purpose} link for {self.subject_type.model} {self.subject_id}"


class ApiKey(models.Model):
    """An integrator's API key. Only a SHA-256 of the secret is stored; the key is shown once."""

    name = models.CharField(max_length=100, unique=True)
    prefix = models.CharField(max_length=12, unique=True)
    key_hash = models.CharField(max_length=64)
    scopes = models.JSONField(default=list, blank=True)
    # Customer source systems whose communications and cases this key may see besides its own
    # (e.g. the billing system's key reading what the CRM sent about billing customers).
    source_systems = models.JSONField(default=list, blank=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="api_keys"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        permissions = [("manage_api_keys", "Can create and revoke API keys")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class IdempotencyRecord(models.Model):
    """The stored outcome of a POST made with an Idempotency-Key, scoped to one client."""

    class State(models.TextChoices):
        IN_PROGRESS = "in_progress"
        DONE = "done"

    client = models.CharField(max_length=100)
    key = models.CharField(max_length=255)
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=500)
    request_hash = models.CharField(max_length=64)
    state = models.CharField(max_length=20, choices=State.choices, default=State.IN_PROGRESS)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.BinaryField(null=True, blank=True)
    response_content_type = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["client", "key"], name="idempotency_key_per_client")
        ]

    def __str__(self) -> str:
        return f"{self.client} {self.key} ({self.state})"


class AuditCheckpoint(models.Model):
    """A signed statement of the audit chain's head at one moment: "`count` events, the last
    one `head_id` with hash `head_hash`". The HMAC is keyed with AUDIT_SIGNING_KEY, which the
    database never holds, so rows deleted or rewritten after a checkpoint cannot be hidden by
    recomputing hashes. Written by ccm.audit_checkpoints; append-only like the chain."""

    created_at = models.DateTimeField()
    count = models.PositiveBigIntegerField()
    head_id = models.BigIntegerField(null=True, blank=True)
    head_hash = models.CharField(max_length=64)
    key_id = models.CharField(max_length=32)
    signature = models.CharField(max_length=64)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"checkpoint #{self.pk}: {self.count} events up to #{self.head_id}"


class ClusterHeartbeat(models.Model):
    """The last run of the heartbeat task on one task cluster (django-q2 cluster name and host).

    The task is scheduled every minute; a heartbeat that stops advancing means the cluster is
    not taking scheduled work (stopped, or wedged), which `/healthz` reports. A host whose
    heartbeat and last task are both old is flagged stale on `/healthz` and the dashboard."""

    cluster = models.CharField(max_length=100)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField(default=0)
    beat_at = models.DateTimeField()
    beats = models.PositiveBigIntegerField(default=0)
    # The last task a worker on this host ran (recorded at most every few seconds per worker):
    # the host's own sign of life, whichever host the scheduled heartbeat went to.
    last_task = models.CharField(max_length=200, blank=True)
    last_task_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["cluster", "host"]
        constraints = [
            models.UniqueConstraint(fields=["cluster", "host"], name="one_heartbeat_per_cluster")
        ]

    def __str__(self) -> str:
        return f"{self.cluster}@{self.host} {self.beat_at:%Y-%m-%d %H:%M:%S}"

    @property
    def alive_at(self):
        """The latest sign of life of this host: its heartbeat or the last task it ran."""
        if self.last_task_at and self.last_task_at > self.beat_at:
            return self.last_task_at
        return self.beat_at


class Notice(models.Model):
    """Something one person is told in the app, and by mail when they have an address: a
    reviewer decided what they submitted, or the daily digest of what waits for them. The row
    is also the mail's outbox (`sent_at`, `attempts`, `last_error`, `message_id`), sent by
    notifications.channels.notices through the internal sender profile."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notices"
    )
    kind = models.CharField(max_length=100)
    title = models.CharField(max_length=300)
    body = models.TextField(blank=True)
    url = models.CharField(max_length=500, blank=True, help_text="Where to act on it.")
    created_at = models.DateTimeField(auto_now_add=True)
    read_at = models.DateTimeField(null=True, blank=True)
    mail_to = models.EmailField(blank=True, help_text="Empty: told in the app only.")
    message_id = models.CharField(max_length=200, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["user", "-created_at"], name="notice_user_recent"),
            # What the navigation counts on every page: one user's unread notices.
            models.Index(fields=["user"], condition=Q(read_at__isnull=True), name="notice_unread"),
        ]

    def __str__(self) -> str:
        return self.title


class NoticeSettings(models.Model):
    """What a person opted into: the daily digest mail of what waits for them (off unless
    they turn it on)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notice_settings"
    )
    daily_digest = models.BooleanField(default=False)
    last_digest_on = models.DateField(null=True, blank=True)

    def __str__(self) -> str:
        return f"notice settings of {self.user_id}"
