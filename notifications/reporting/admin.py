"""Report definitions are edited in the back-office; every save goes through the service, which
checks the schedule, time zone, recipients and filters."""

from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import ValidationError

from notifications.reporting.models import ReportDefinition
from notifications.reporting.reports import report_definition_save, report_definition_validate


@admin.register(ReportDefinition)
class ReportDefinitionAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "period", "schedule", "time_zone", "enabled", "next_run_at"]
    list_filter = ["kind", "enabled"]
    readonly_fields = ["next_run_at", "created_at", "created_by"]
    fields = [
        "name",
        "kind",
        "period",
        "filters",
        "pdf",
        "csv",
        "recipients",
        "schedule",
        "time_zone",
        "skip_if_empty",
        "enabled",
        "next_run_at",
        "created_at",
        "created_by",
    ]

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)

        class Checked(form):  # type: ignore[valid-type, misc]
            def _post_clean(self):
                super()._post_clean()
                try:
                    report_definition_validate(self.instance)
                except ValidationError as exc:
                    self._update_errors(exc)

        return Checked

    def save_model(self, request, obj, form, change):
        report_definition_save(definition=obj, by=request.user)
