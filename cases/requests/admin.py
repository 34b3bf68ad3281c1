"""Back-office views of reprint and correspondence requests, approval mails and the processed
inbox: read-only (requests move through their services and the sign-off queue)."""

from __future__ import annotations

from django.contrib import admin

from cases import alerts
from cases.models import CaseAlert
from cases.requests import approval_mail
from cases.requests.models import (
    ApprovalMail,
    CorrespondenceRequest,
    ProcessedInboxMessage,
    ReprintRequest,
)
from notifications.channels.internal import internal_mail_state


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ReprintRequest)
class ReprintRequestAdmin(ReadOnlyAdmin):
    list_display = ["id", "case", "customer", "channel", "address", "state", "source", "created_at"]
    list_filter = ["state", "source", "channel", "address_is_new"]
    search_fields = ["case__reference", "customer__external_ref", "customer__name", "address"]
    list_select_related = ["case", "customer"]


@admin.register(CorrespondenceRequest)
class CorrespondenceRequestAdmin(ReadOnlyAdmin):
    list_display = ["id", "case", "customer", "template", "state", "requested_by", "created_at"]
    list_filter = ["state", "source", "template"]
    search_fields = ["case__reference", "customer__external_ref", "customer__name"]
    list_select_related = ["case", "customer", "template", "requested_by"]


@admin.register(ProcessedInboxMessage)
class ProcessedInboxMessageAdmin(ReadOnlyAdmin):
    list_display = ["processed_at", "from_address", "subject", "outcome", "detail", "case"]
    list_filter = ["outcome"]
    search_fields = ["gmail_id", "message_id", "from_address", "subject"]


@admin.register(ApprovalMail)
class ApprovalMailAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "approval", "to", "state", "sent_at", "attempts", "last_error"]
    # The text carries a live reply token: the list shows who and when, not the mail itself.
    exclude = ["text", "subject"]

    @admin.display(description="state")
    def state(self, mail: ApprovalMail) -> str:
        return internal_mail_state(mail, max_attempts=approval_mail.MAX_ATTEMPTS)


@admin.register(CaseAlert)
class CaseAlertAdmin(ReadOnlyAdmin):
    """Internal alert mails about cases: sent, pending, or failed with the reason."""

    list_display = ["created_at", "case", "subject", "state", "sent_at", "attempts", "last_error"]
    list_select_related = ["case"]
    search_fields = ["key", "subject", "case__reference"]
    readonly_fields = ["state"]

    @admin.display(description="state")
    def state(self, alert: CaseAlert) -> str:
        return internal_mail_state(alert, max_attempts=alerts.MAX_ATTEMPTS)
