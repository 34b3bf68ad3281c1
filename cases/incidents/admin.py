"""Read-only admin views of events and incidents; changes go through the incidents screen."""

from __future__ import annotations

from django.contrib import admin

from cases.incidents.models import Event, Incident, IncidentUpdate


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Event)
class EventAdmin(ReadOnly):
    list_display = ["occurred_at", "source", "event_id", "event_type", "action", "severity"]
    list_filter = ["event_type", "action", "severity"]
    search_fields = ["event_id", "dedup_key"]
    raw_id_fields = ["asset", "incident"]


class UpdateInline(admin.TabularInline):
    model = IncidentUpdate
    fields = ["sequence", "kind", "customers_total", "notices_sent", "notices_refused"]
    readonly_fields = ["sequence", "kind", "customers_total", "notices_sent", "notices_refused"]
    extra = 0
    can_delete = False


@admin.register(Incident)
class IncidentAdmin(ReadOnly):
    list_display = ["reference", "title", "state", "severity", "first_event_at"]
    list_filter = ["state", "severity", "event_type"]
    search_fields = ["reference", "dedup_key"]
    inlines = [UpdateInline]
