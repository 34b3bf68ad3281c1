from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.models import Group
from django.utils.html import format_html

from ccm import approvals
from ccm.admin_site import current_admin_request
from ccm.api.auth import api_key_revoke
from ccm.lists import IndexedValuesFilter, ScaledListAdmin, distinct_values
from ccm.models import ApiKey, Approval, AuditEvent, SignedLink
from ccm.selectors import audit_search


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyInline(admin.TabularInline):
    """Rows shown under a parent in the back-office, never edited there (every app's inlines)."""

    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class SubjectTypeFilter(admin.SimpleListFilter):
    """The kinds of subject in the log, with a name for events that have none (a batch seal of
    communication steps, a chain checkpoint): an empty choice would be a link without text."""

    title = "subject type"
    parameter_name = "subject_type"

    def lookups(self, request, model_admin):
        kinds = distinct_values(AuditEvent, "subject_type")
        return [(kind or "-", kind or "(no subject)") for kind in kinds]

    def queryset(self, request, queryset):
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(subject_type="" if value == "-" else value)


@admin.register(AuditEvent)
class AuditEventAdmin(ScaledListAdmin, ReadOnlyAdmin):
    list_display = ["id", "created_at", "actor_label", "action", "subject_type", "subject_id"]
    # A date range, not a date hierarchy (a SELECT DISTINCT over the whole log).
    list_filter = [("action", IndexedValuesFilter), SubjectTypeFilter, "created_at"]
    # Answered by search_pks, each through an index.
    search_fields = ["action", "subject_id", "actor_label", "request_id", "hash"]
    ordering = ["-id"]  # the newest first
    list_defer = ("before", "after")

    def search_pks(self, term: str):
        return audit_search(term)


@admin.register(Approval)
class ApprovalAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "review",
        "purpose",
        "summary",
        "state",
        "requested_by",
        "author",
        "requested_at",
        "decided_by",
        "decided_at",
    ]
    list_filter = ["state", "purpose"]
    # No bulk decisions: four-eyes means opening each proof (the review screen) before
    # deciding it, never ticking a list of rows.
    actions = None

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("subject_type", "requested_by", "author", "decided_by")
        )

    @admin.display(description="Review")
    def review(self, obj):
        url = approvals.review_url_for(obj)
        if not url:
            return "—"
        # Linked for those who may see what is approved (else the link would answer 403).
        request = current_admin_request()
        subject = obj.subject_type
        if request is None or not request.user.has_perm(
            f"{subject.app_label}.view_{subject.model}"
        ):
            return "—"
        return format_html('<a href="{}">Open proofs</a>', url)


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnlyAdmin):
    list_display = [
        "name",
        "prefix",
        "scopes",
        "source_systems",
        "user",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    actions = ["revoke"]

    @admin.action(description="Revoke selected keys", permissions=["manage"])
    def revoke(self, request, queryset):
        for api_key in queryset:
            api_key_revoke(api_key=api_key, by=request.user)
        self.message_user(request, "Revoked.", messages.SUCCESS)

    def has_manage_permission(self, request):
        return request.user.has_perm("ccm.manage_api_keys")


@admin.register(SignedLink)
class SignedLinkAdmin(ReadOnlyAdmin):
    list_display = [
        "purpose",
        "subject_type",
        "subject_id",
        "created_at",
        "expires_at",
        "revoked_at",
    ]
    list_filter = ["purpose"]
    exclude = ["nonce"]


# Roles are groups that `roles_sync` (ccm/roles.py) puts back in step after every migrate: an
# edit here would be undone, so the back-office shows them and does not offer to edit them.
admin.site.unregister(Group)


@admin.register(Group)
class RoleAdmin(ReadOnlyAdmin):
    list_display = ["name", "permission_count"]
    fields = ["name", "permissions"]

    @admin.display(description="permissions")
    def permission_count(self, group: Group) -> int:
        return group.permissions.count()


admin.site.unregister(get_user_model())


@admin.register(get_user_model())
class StaffUserAdmin(UserAdmin):
    # Django's two-box picker puts aria-label on a bare span, which assistive technology
    # ignores (axe: aria-prohibited-attr); a plain multiple select is labelled and works with
    # the keyboard alone.
    filter_horizontal = ()
