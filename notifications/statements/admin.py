from __future__ import annotations

from django.contrib import admin, messages

from notifications.statements import services
from notifications.statements.models import (
    CustomerTariff,
    Meter,
    Reading,
    ReadingCorrection,
    RecommendationRuleSet,
    Statement,
    Tariff,
    TariffBand,
)


@admin.register(Meter)
class MeterAdmin(admin.ModelAdmin):
    list_display = ["serial", "service_point", "unit", "kind", "interval_minutes"]
    list_filter = ["unit", "kind"]
    search_fields = ["serial", "service_point__code", "service_point__customer__external_ref"]
    raw_id_fields = ["service_point"]


class CorrectionInline(admin.TabularInline):
    model = ReadingCorrection
    extra = 0
    can_delete = False
    readonly_fields = ["value", "quality", "received_at", "replaced_at"]


@admin.register(Reading)
class ReadingAdmin(admin.ModelAdmin):
    """Read-only: readings arrive through the API or the import command (one intake)."""

    list_display = ["meter", "start", "value", "quality", "received_at"]
    list_filter = ["quality"]
    search_fields = ["meter__serial"]
    readonly_fields = ["meter", "start", "value", "quality", "received_at"]
    inlines = [CorrectionInline]
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class BandInline(admin.StackedInline):
    # Stacked: every field keeps a visible label (a tabular inline's cells have none).
    model = TariffBand
    extra = 1


@admin.register(Tariff)
class TariffAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "standing_charge", "vat_rate", "valid_from", "valid_to"]
    inlines = [BandInline]


@admin.register(CustomerTariff)
class CustomerTariffAdmin(admin.ModelAdmin):
    list_display = ["customer", "tariff", "valid_from"]
    search_fields = ["customer__external_ref"]
    raw_id_fields = ["customer"]


@admin.register(RecommendationRuleSet)
class RecommendationRuleSetAdmin(admin.ModelAdmin):
    """Rules are data: a version is frozen from review on and published by a reviewer's
    sign-off (four-eyes), like a template version."""

    list_display = ["version", "state", "created_by", "created_at", "published_at"]
    readonly_fields = ["version", "rules", "state", "created_by", "created_at", "published_at"]
    actions = ["submit_for_review"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Submit for sign-off")
    def submit_for_review(self, request, queryset) -> None:
        for rule_set in queryset:
            try:
                services.rule_set_submit(rule_set=rule_set, by=request.user)
            except services.RunError as exc:
                self.message_user(request, str(exc), messages.ERROR)


@admin.register(Statement)
class StatementAdmin(admin.ModelAdmin):
    list_display = ["customer", "period_start", "period_end", "state", "total", "run"]
    list_filter = ["state", "period_end"]
    search_fields = ["customer__external_ref"]
    readonly_fields = [f.name for f in Statement._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
