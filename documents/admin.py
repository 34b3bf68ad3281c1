from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django_fsm import TransitionNotAllowed

from ccm import approvals
from ccm.admin_site import confirm_first
from ccm.forms import DecisionForm
from ccm.lists import ScaledListAdmin
from ccm.review import sandboxed_html
from documents import review, selectors, services
from documents.composition import CompositionError
from documents.models import Document, RegenerationCheck, Template, TemplateVersion

# What a submit or publish action can run into; each version reports its own reason.
ACTION_ERRORS = (
    PermissionDenied,
    TransitionNotAllowed,
    services.VersionFrozen,
    approvals.ApprovalConflict,
)


class VersionInline(admin.TabularInline):
    model = TemplateVersion
    fields = ("number", "state", "author", "content_hash", "created_at", "published_at", "review")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="")
    def review(self, obj):
        url = reverse("admin:documents_templateversion_review", args=[obj.pk])
        return format_html('<a href="{}">Proofs and diff</a>', url)


@admin.register(Template)
class TemplateAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "category", "owner", "live_version"]
    list_filter = ["category"]
    search_fields = ["code", "name", "description"]
    readonly_fields = ["created_at", "updated_at"]
    inlines = [VersionInline]

    def get_queryset(self, request):
        return selectors.template_list()

    @admin.display(description="Published version")
    def live_version(self, obj):
        return f"v{obj.published_number}" if obj.published_number else "—"


@admin.register(TemplateVersion)
class TemplateVersionAdmin(admin.ModelAdmin):
    list_display = [
        "template",
        "number",
        "state",
        "author",
        "submitted_at",
        "published_at",
        "links",
    ]
    list_filter = ["state", "template__category"]
    search_fields = ["template__code", "template__name"]
    readonly_fields = [
        "template",
        "number",
        "state",
        "author",
        "content_hash",
        "source",
        "created_at",
        "submitted_at",
        "published_at",
        "retired_at",
    ]
    exclude = ["content"]
    actions = ["submit_for_review", "publish"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="")
    def links(self, obj):
        url = reverse("admin:documents_templateversion_review", args=[obj.pk])
        return format_html('<a href="{}">Review</a>', url)

    @admin.action(description="Submit selected drafts for sign-off")
    def submit_for_review(self, request, queryset):
        for version in queryset:
            try:
                services.template_version_submit(version=version, by=request.user)
                self.message_user(request, f"{version}: submitted.", messages.SUCCESS)
            except ACTION_ERRORS as exc:
                self.message_user(request, f"{version}: {exc}", messages.ERROR)

    @admin.action(description="Publish selected approved versions")
    def publish(self, request, queryset):
        page = confirm_first(
            self,
            request,
            queryset,
            consequence="New communications are composed from these versions; the versions "
            "published now are retired.",
        )
        if page is not None:
            return page
        for version in queryset:
            try:
                services.template_version_publish(version=version, by=request.user)
                self.message_user(request, f"{version}: published.", messages.SUCCESS)
            except ACTION_ERRORS as exc:
                self.message_user(request, f"{version}: {exc}", messages.ERROR)

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path(
                "<int:pk>/review/", wrap(self.review_view), name="documents_templateversion_review"
            ),
            path(
                "<int:pk>/proof.pdf",
                wrap(xframe_options_sameorigin(self.proof_view)),
                name="documents_templateversion_proof",
            ),
            path(
                "<int:pk>/email.html",
                wrap(xframe_options_sameorigin(self.email_view)),
                name="documents_templateversion_email",
            ),
            *super().get_urls(),
        ]

    def _version(self, request, pk: int) -> TemplateVersion:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return get_object_or_404(TemplateVersion.objects.select_related("template"), pk=pk)

    def review_view(self, request, pk: int):
        version = self._version(request, pk)
        approval = approvals.pending_for(version, purpose=services.APPROVAL_PURPOSE)
        form = DecisionForm(request.POST or None)
        if request.method == "POST" and approval is not None and form.is_valid():
            try:
                approvals.approval_decide(
                    approval=approval,
                    by=request.user,
                    decision=form.cleaned_data["decision"],
                    comment=form.cleaned_data["comment"],
                )
            except PermissionDenied as exc:
                messages.error(request, str(exc))
            except approvals.ApprovalConflict as exc:
                messages.error(request, str(exc))
            else:
                messages.success(request, f"{version.template.code} v{version.number}: decided.")
                return redirect("admin:ccm_approval_changelist")
        elif request.method == "POST" and approval is None:
            messages.error(request, "This version has no pending sign-off.")
        can_decide = (
            approval is not None
            and request.user.has_perm("ccm.decide_approval")
            and request.user.pk not in {approval.requested_by_id, approval.author_id}
        )
        context = {
            **self.admin_site.each_context(request),
            **review.version_proof_context(version),
            "title": f"Review {version.template.code} v{version.number}",
            "approval": approval,
            "can_decide": can_decide,
            "form": form,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/documents/review.html", context)

    def _preview(self, request, pk: int, channel: str):
        """The version's `channel` rendered from its default sample, or a response that says
        why not."""
        version = self._version(request, pk)
        try:
            preview = services.template_preview(version=version, channels=[channel])
        except CompositionError as exc:
            return None, HttpResponse(
                f"Cannot render: {exc.reason}", status=422, content_type="text/plain"
            )
        output = preview.pdf if channel == "print" else getattr(preview, channel)
        if output is None:
            raise Http404(f"This template has no {channel} rendition.")
        return output, None

    def proof_view(self, request, pk: int):
        pdf, problem = self._preview(request, pk, "print")
        return problem or HttpResponse(pdf.data, content_type="application/pdf")

    def email_view(self, request, pk: int):
        email, problem = self._preview(request, pk, "email")
        if problem:
            return problem
        return sandboxed_html(email["html"])


class RegenerationCheckInline(admin.TabularInline):
    model = RegenerationCheck
    fields = ("checked_at", "checked_by", "matched", "expected_sha256", "actual_sha256")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Document)
class DocumentAdmin(ScaledListAdmin):
    list_display = [
        "id",
        "template_version",
        "kind",
        "language",
        "page_count",
        "sha256",
        "created_at",
    ]
    list_filter = ["kind", "template_version__template"]
    # Answered by search_pks: the start of the SHA-256, the id or the public id.
    search_fields = ["sha256"]
    list_select_related = ["template_version__template"]
    list_defer = ("data", "engine", "template_version__content")
    readonly_fields = [f.name for f in Document._meta.fields]
    inlines = [RegenerationCheckInline]
    actions = ["regenerate"]

    def search_pks(self, term: str):
        return selectors.document_search(term)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Regenerate and verify the bytes")
    def regenerate(self, request, queryset):
        for document in queryset:
            try:
                services.document_regenerate(document=document, by=request.user)
                self.message_user(request, f"Document {document.pk}: identical.", messages.SUCCESS)
            except services.RegenerationMismatch as exc:
                self.message_user(request, f"ALARM: {exc}", messages.ERROR)
            except CompositionError as exc:
                self.message_user(request, f"Document {document.pk}: {exc.reason}", messages.ERROR)
