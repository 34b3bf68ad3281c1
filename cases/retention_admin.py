"""Legal holds in the back-office: placing and releasing go through cases/retention.py."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages

from cases import erasure, retention
from cases.models import DocumentPurge, ErasureRequest, ErasureState, LegalHold
from ccm.admin_site import confirm_first


class LegalHoldForm(forms.ModelForm):
    class Meta:
        model = LegalHold
        fields = ["customer", "case", "reason"]

    def clean(self):
        data = super().clean() or {}
        if bool(data.get("customer")) == bool(data.get("case")):
            raise forms.ValidationError("Place the hold on one customer or on one case.")
        return data


@admin.register(LegalHold)
class LegalHoldAdmin(admin.ModelAdmin):
    form = LegalHoldForm
    list_display = ["__str__", "reason", "placed_by", "placed_at", "released_at"]
    list_filter = ["released_at"]
    search_fields = ["reason", "customer__external_ref", "case__reference"]
    raw_id_fields = ["customer", "case"]
    fields = ["customer", "case", "reason"]
    actions = ["release"]

    def has_change_permission(self, request, obj=None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj, form, change) -> None:
        placed = retention.legal_hold_place(
            customer=obj.customer, case=obj.case, reason=obj.reason, by=request.user
        )
        obj.pk = placed.pk

    @admin.action(description="Release the selected legal holds")
    def release(self, request, queryset):
        page = confirm_first(
            self,
            request,
            queryset,
            consequence="The documents these holds keep become subject to retention again.",
        )
        if page is not None:
            return page
        released = 0
        for hold in queryset.filter(released_at__isnull=True):
            retention.legal_hold_release(hold=hold, by=request.user)
            released += 1
        self.message_user(request, f"{released} legal holds released.")


@admin.register(DocumentPurge)
class DocumentPurgeAdmin(admin.ModelAdmin):
    list_display = ["document", "category", "retention_days", "purged_at", "sha256"]
    list_filter = ["category"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ErasureRequest)
class ErasureRequestAdmin(admin.ModelAdmin):
    """Erasure requests: adding one carries it out (or refuses or defers it, with the reason)
    through cases/erasure.py; the rows are the record and cannot be changed."""

    list_display = ["__str__", "state", "grounds", "reason", "due_at", "requested_at", "done_at"]
    list_filter = ["state"]
    search_fields = ["grounds", "reason"]
    raw_id_fields = ["customer"]
    fields = ["customer", "grounds"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return ["customer", "state", "grounds", "reason", "due_at", "erased", "done_at"]

    def get_fields(self, request, obj=None):
        return self.fields if obj is None else self.get_readonly_fields(request, obj)

    def has_change_permission(self, request, obj=None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj, form, change) -> None:
        done = erasure.customer_erase(customer=obj.customer, by=request.user, grounds=obj.grounds)
        obj.pk = done.pk
        if done.state == ErasureState.DONE:
            self.message_user(request, f"{done}: the customer's personal data is erased.")
        else:
            self.message_user(request, f"{done}: {done.reason}", level=messages.WARNING)
