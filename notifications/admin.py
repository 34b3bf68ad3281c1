from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404
from django.shortcuts import redirect
from django.urls import path
from django.views.decorators.clickjacking import xframe_options_sameorigin

from ccm import approvals
from ccm.admin import ReadOnlyInline
from ccm.forms import DecisionForm
from ccm.lists import IndexedValuesFilter, ScaledListAdmin
from ccm.review import sandboxed_html
from notifications import selectors
from notifications.customers.devices import device_deactivate
from notifications.models import (
    Communication,
    ConsentRecord,
    ContactPoint,
    Customer,
    Delivery,
    DeliveryEvent,
    Device,
    Preference,
    Suppression,
)
from notifications.pipeline import history
from notifications.pipeline.gate import RELEASE_PURPOSE


class ContactInline(ReadOnlyInline):
    model = ContactPoint
    fields = readonly_fields = ("kind", "value", "is_primary", "valid", "invalid_reason")


class PreferenceInline(ReadOnlyInline):
    model = Preference
    fields = readonly_fields = ("category", "channel", "allowed", "updated_at")


class ConsentInline(ReadOnlyInline):
    model = ConsentRecord
    fields = readonly_fields = (
        "recorded_at",
        "channel",
        "category",
        "granted",
        "legal_basis",
        "source",
        "actor_label",
    )
    verbose_name_plural = "consent history (ledger)"


class CommunicationInline(ReadOnlyInline):
    model = Communication
    fk_name = "customer"
    fields = readonly_fields = ("template", "state", "category", "created_at", "sent_at")
    show_change_link = True


@admin.register(Customer)
class CustomerAdmin(ScaledListAdmin):
    list_display = ["name", "external_ref", "source_system", "language", "postal_address_valid"]
    # Answered by search_pks (name, reference, email or phone, each through its index).
    search_fields = ["name", "external_ref", "contacts__value"]
    list_filter = [("source_system", IndexedValuesFilter), ("language", IndexedValuesFilter)]
    ordering = ["name", "id"]  # read in this order from its index
    inlines = [ContactInline, PreferenceInline, ConsentInline, CommunicationInline]
    readonly_fields = ["created_at", "updated_at"]

    def search_pks(self, term: str):
        return selectors.customer_search(term)


class DeliveryInline(ReadOnlyInline):
    model = Delivery
    fields = readonly_fields = (
        "channel",
        "address",
        "state",
        "attempts",
        "message_id",
        "provider_message_id",
        "last_error",
        "sent_at",
    )
    show_change_link = True


@admin.register(Communication)
class CommunicationAdmin(ScaledListAdmin):
    list_display = ["id", "template", "customer", "state", "category", "urgency", "created_at"]
    list_select_related = ["template", "customer"]
    list_defer = ("data", "rendered", "decision_trace", "failure_errors")
    # A date range rather than a date hierarchy: the hierarchy lists the years, months and days
    # that have rows with a SELECT DISTINCT over every communication.
    list_filter = ["state", "category", "urgency", "source", "template", "created_at"]
    # Answered by search_pks (the customer's name, reference, email or phone; the correlation
    # id; the id or public id), each through its index.
    search_fields = ["customer__name", "customer__external_ref", "correlation_id"]
    inlines = [DeliveryInline]
    change_form_template = "admin/notifications/communication_change.html"
    readonly_fields = [f.name for f in Communication._meta.fields]

    def search_pks(self, term: str):
        return selectors.communication_search(term)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # a communication changes through its pipeline, not by editing

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        return [
            path(
                "<int:pk>/email.html",
                self.admin_site.admin_view(xframe_options_sameorigin(self.email_view)),
                name="notifications_communication_email",
            ),
            path(
                "<int:pk>/document.pdf",
                self.admin_site.admin_view(xframe_options_sameorigin(self.document_view)),
                name="notifications_communication_document",
            ),
            *super().get_urls(),
        ]

    def email_view(self, request, pk: int):
        """The rendered email's HTML, for the reviewer's sandboxed frame."""
        communication = self.get_object(request, str(pk))
        if communication is None or not self.has_view_permission(request, communication):
            raise Http404("No such communication.")
        html = (communication.rendered or {}).get("email", {}).get("html")
        if not html:
            raise Http404("This communication has no rendered email.")
        return sandboxed_html(html)

    def document_view(self, request, pk: int):
        """The archived PDF, shown inline: the print proof in the reviewer's frame."""
        communication = self.get_object(request, str(pk))
        if communication is None or not self.has_view_permission(request, communication):
            raise Http404("No such communication.")
        if communication.document is None:
            raise Http404("This communication has no archived document.")
        return FileResponse(communication.document.file.open("rb"), content_type="application/pdf")

    def change_view(self, request, object_id, form_url="", extra_context=None):
        communication = self.get_object(request, object_id)
        if communication is None:
            return super().change_view(request, object_id, form_url, extra_context)
        approval = approvals.pending_for(communication, purpose=RELEASE_PURPOSE)
        form = DecisionForm(request.POST or None)
        if request.method == "POST":
            if approval is None:
                messages.error(request, "This communication is not waiting for a release.")
            elif not form.is_valid():
                for errors in form.errors.values():
                    messages.error(request, " ".join(str(e) for e in errors))
            else:
                try:
                    approvals.approval_decide(
                        approval=approval,
                        by=request.user,
                        decision=form.cleaned_data["decision"],
                        comment=form.cleaned_data["comment"],
                    )
                except (PermissionDenied, approvals.ApprovalConflict) as exc:
                    messages.error(request, str(exc))
                else:
                    messages.success(request, "Decision recorded.")
            return redirect(request.path)
        context = {
            **(extra_context or {}),
            "timeline": history.communication_history(communication),
            "trace": communication.decision_trace,
            "rendered": communication.rendered,
            "consent_applied": selectors.consent_applied(communication),
            "approval": approval,
            "decision_form": form,
            "can_decide": approval is not None
            and request.user.has_perm("ccm.decide_approval")
            and request.user.pk != approval.requested_by_id,
        }
        return super().change_view(request, object_id, form_url, context)


class EventInline(ReadOnlyInline):
    model = DeliveryEvent
    fields = readonly_fields = (
        "occurred_at",
        "provider",
        "event_type",
        "hard",
        "recipient",
        "description",
    )


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ["id", "communication", "channel", "address", "state", "attempts", "sent_at"]
    list_filter = ["state", "channel"]
    search_fields = ["address", "message_id", "provider_message_id"]
    readonly_fields = [f.name for f in Delivery._meta.fields]
    inlines = [EventInline]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(DeliveryEvent)
class DeliveryEventAdmin(admin.ModelAdmin):
    list_display = ["occurred_at", "provider", "event_type", "hard", "recipient", "delivery"]
    list_filter = ["provider", "event_type"]
    readonly_fields = [f.name for f in DeliveryEvent._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Suppression)
class SuppressionAdmin(admin.ModelAdmin):
    list_display = ["channel", "address", "reason", "created_at", "lifted_at"]
    list_filter = ["channel", "reason"]
    search_fields = ["address"]


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "customer",
        "platform",
        "app",
        "active",
        "last_seen_at",
        "deactivated_reason",
    ]
    list_filter = ["platform", "active"]
    search_fields = ["customer__external_ref", "customer__name", "app"]
    list_select_related = ["customer"]
    readonly_fields = [f.name for f in Device._meta.fields]
    actions = ["deactivate"]

    def has_add_permission(self, request):
        return False  # devices are registered by the customer's app, through the API

    def has_delete_permission(self, request, obj=None):
        return False  # deliveries name the device; deactivate it instead

    @admin.action(description="Deactivate: push nothing more to these devices")
    def deactivate(self, request, queryset):
        reason = f"deactivated in the admin by {request.user.get_username()}"
        done = sum(
            device_deactivate(device=device, reason=reason, by=request.user)
            for device in queryset.filter(active=True)
        )
        self.message_user(request, f"{done} device(s) deactivated.", messages.SUCCESS)


# The print batch and webhook screens register themselves on import.
from notifications.campaigns import admin as campaigns_admin  # noqa: E402, F401
from notifications.channels import printing_admin  # noqa: E402, F401
from notifications.customers.assets import admin as assets_admin  # noqa: E402, F401
from notifications.reporting import admin as reporting_admin  # noqa: E402, F401
from notifications.statements import admin as statements_admin  # noqa: E402, F401
from notifications.webhooks import admin as webhooks_admin  # noqa: E402, F401
