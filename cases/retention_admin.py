"""Legal holds in the back-office: placing and releasing go through cases/retention.py."""

from __future__ import annotations

from django import forms
from django.contrib import admin

from cases import retention
from cases.models import DocumentPurge, LegalHold
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
