"""Admin screens for webhook subscriptions and the delivery log (imported by admin.py)."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.utils.html import format_html

from ccm.admin import ReadOnlyInline
from ccm.api.idempotency import api_key_client
from ccm.models import ApiKey
from notifications.models import (
    WebhookAttempt,
    WebhookDelivery,
    WebhookEvent,
    WebhookSubscription,
)
from notifications.webhooks import services as webhooks


class WebhookSubscriptionForm(forms.ModelForm):
    url = forms.URLField(max_length=500, assume_scheme="https")
    events = forms.MultipleChoiceField(
        choices=WebhookEvent.choices, widget=forms.CheckboxSelectMultiple
    )
    api_key = forms.ModelChoiceField(
        queryset=ApiKey.objects.filter(revoked_at__isnull=True),
        required=False,
        empty_label="Every client (an internal system)",
        label="Communications of",
        help_text="An integrator's API key: only the communications it created. Leave empty "
        "for every communication.",
    )

    class Meta:
        model = WebhookSubscription
        fields = ["url", "events", "api_key", "description", "active"]

    def clean(self):
        cleaned = super().clean() or {}
        if cleaned.get("url"):
            try:
                cleaned["url"] = webhooks.webhook_url_check(cleaned["url"])
            except webhooks.WebhookUrlRefused as exc:
                self.add_error("url", str(exc))
        return cleaned


@admin.register(WebhookSubscription)
class WebhookSubscriptionAdmin(admin.ModelAdmin):
    form = WebhookSubscriptionForm
    list_display = ["id", "url", "receives", "event_list", "active", "deleted_at", "created_at"]
    list_filter = ["active"]
    search_fields = ["url", "client", "description"]
    readonly_fields = ["client", "created_by", "created_at", "updated_at", "deleted_at"]

    @admin.display(description="communications of")
    def receives(self, obj: WebhookSubscription) -> str:
        return obj.client or "every client"

    @admin.display(description="events")
    def event_list(self, obj: WebhookSubscription) -> str:
        return ", ".join(obj.events)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["url", "events", "api_key", "description", "active"]
        # The owner is fixed once made: events already sent went to it.
        return ["url", "events", "description", "active", *self.readonly_fields]

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        if change:
            webhooks.webhook_subscription_update(
                subscription=obj,
                by=request.user,
                url=data["url"],
                events=data["events"],
                description=data["description"],
                active=data["active"],
            )
            return
        api_key = data.get("api_key")
        created = webhooks.webhook_subscription_create(
            url=data["url"],
            events=data["events"],
            client=api_key_client(api_key) if api_key else "",
            api_key=api_key,
            description=data["description"],
            active=data["active"],
            by=request.user,
        )
        obj.pk = created.pk  # the admin's log entry and redirect name the row the service made
        messages.warning(
            request,
            format_html(
                "The signing secret, shown only now — give it to the receiver: <code>{}</code>",
                created.secret,
            ),
        )

    def has_delete_permission(self, request, obj=None):
        return False  # deactivate instead: the delivery log keeps pointing at it


class WebhookAttemptInline(ReadOnlyInline):
    model = WebhookAttempt
    fields = readonly_fields = ("number", "attempted_at", "status_code", "error", "duration_ms")


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "event_type",
        "communication",
        "subscription",
        "state",
        "attempts",
        "last_status_code",
        "created_at",
        "delivered_at",
    ]
    list_filter = ["state", "event_type", "subscription"]
    search_fields = ["=event_id", "=communication__id"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]
    inlines = [WebhookAttemptInline]
    actions = ["replay"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_replay_permission(self, request) -> bool:
        return request.user.has_perm("notifications.replay_webhookdelivery")

    @admin.action(description="Replay: send again with the same event id", permissions=["replay"])
    def replay(self, request, queryset):
        done = 0
        for delivery in queryset:
            try:
                webhooks.webhook_delivery_replay(delivery=delivery, by=request.user)
            except webhooks.WebhookError as exc:
                self.message_user(request, f"{delivery.event_id}: {exc}", messages.ERROR)
            else:
                done += 1
        if done:
            self.message_user(request, f"{done} event(s) queued to be sent again.")
