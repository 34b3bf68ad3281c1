from __future__ import annotations

from django.contrib import admin

from notifications.customers.assets.models import Asset, ServicePoint


@admin.register(Asset)
class AssetAdmin(admin.ModelAdmin):
    list_display = ["code", "kind", "name", "path"]
    list_filter = ["kind"]
    search_fields = ["code", "name"]
    readonly_fields = ["path"]
    raw_id_fields = ["parent"]


@admin.register(ServicePoint)
class ServicePointAdmin(admin.ModelAdmin):
    list_display = ["code", "customer", "asset", "postcode"]
    search_fields = ["code", "postcode", "customer__external_ref"]
    raw_id_fields = ["customer", "asset"]
