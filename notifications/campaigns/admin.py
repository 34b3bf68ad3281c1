"""Read-only admin lists of segments and campaigns; the work happens on the campaign screens
(notifications/campaigns/views.py), which call the services."""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from ccm.lists import ScaledListAdmin
from notifications.campaigns.models import Campaign, Segment


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Segment)
class SegmentAdmin(ReadOnlyAdmin):
    list_display = ["name", "version", "created_by", "created_at"]
    search_fields = ["name"]


@admin.register(Campaign)
class CampaignAdmin(ScaledListAdmin, ReadOnlyAdmin):
    list_display = ["name", "state", "category", "audience_count", "created_at", "page"]
    list_filter = ["state", "category"]
    search_fields = ["name"]
    list_defer = ("data_csv", "segment_snapshot", "channel_plan")

    @admin.display(description="Campaign page")
    def page(self, campaign: Campaign) -> str:
        return format_html('<a href="{}">Open</a>', reverse("campaign-detail", args=[campaign.pk]))
