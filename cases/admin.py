"""Case screens in the back-office: the queue with SLA indicators and filters, and a case with
its milestones, notes, links, attachments and timeline. Every change goes through a service."""

from __future__ import annotations

from django.contrib import admin, messages
from django.utils.html import format_html, format_html_join

from cases import escalation, selectors, services
from cases.models import (
    Case,
    CaseAttachment,
    CaseCommunication,
    CaseDocument,
    CaseNote,
    CaseState,
    Milestone,
    SlaStatus,
)
from ccm.admin import ReadOnlyInline
from ccm.lists import ScaledListAdmin

# What may be edited on the form (through case_update); everything else moves by services.
EDITABLE = ("subject", "description", "priority", "team")
SLA_COLOURS = {
    SlaStatus.ON_TRACK: "#2E7D32",
    SlaStatus.APPROACHING: "#B26A00",
    SlaStatus.OVERDUE: "#B3261E",
}


class MilestoneInline(ReadOnlyInline):
    model = Milestone
    fields = readonly_fields = (
        "label",
        "template_code",
        "due_at",
        "reached_at",
        "reached_by",
        "communication",
        "warned_at",
        "breached_at",
    )


class CommunicationLinkInline(ReadOnlyInline):
    model = CaseCommunication
    fields = readonly_fields = ("communication", "role", "created_at")
    verbose_name_plural = "communications"


class DocumentLinkInline(ReadOnlyInline):
    model = CaseDocument
    fields = readonly_fields = ("document", "note", "linked_by", "created_at")
    verbose_name_plural = "documents"


class NoteInline(admin.StackedInline):
    """Notes are added here (through the service, audited) and never edited. Stacked, not
    tabular: a tabular row's inputs have no label of their own (only a column heading)."""

    model = CaseNote
    extra = 1
    can_delete = False
    fields = ("body", "author", "created_at")
    readonly_fields = ("author", "created_at")

    def has_change_permission(self, request, obj=None):
        return False


class AttachmentInline(admin.StackedInline):
    model = CaseAttachment
    extra = 1
    can_delete = False
    fields = ("file", "name", "size", "sha256", "uploaded_by", "created_at")
    readonly_fields = ("name", "size", "sha256", "uploaded_by", "created_at")

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Case)
class CaseAdmin(ScaledListAdmin):
    list_display = [
        "reference",
        "case_type",
        "subject",
        "customer",
        "state",
        "priority",
        "team",
        "assignee",
        "sla",
        "next_due_at",
    ]
    list_filter = [
        "case_type",
        "state",
        "team",
        "priority",
        "sla_status",
        "exception_kind",
        "assignee",
        # A date range, not a date hierarchy (a SELECT DISTINCT over every case).
        "received_at",
    ]
    # Answered by search_pks: reference, subject, or the customer's name, reference or email.
    search_fields = ["reference", "subject", "customer__external_ref", "customer__name"]
    list_select_related = ["customer", "assignee"]
    list_defer = ("details", "error_details", "description")
    inlines = [
        MilestoneInline,
        NoteInline,
        CommunicationLinkInline,
        DocumentLinkInline,
        AttachmentInline,
    ]
    editable = EDITABLE
    readonly_fields = [
        *(f.name for f in Case._meta.fields if f.name not in EDITABLE),
        "sla",
        "allowed",
        "timeline",
    ]
    actions = ["take_up", "check_sla"]

    def search_pks(self, term: str):
        return selectors.case_search(term)

    def has_add_permission(self, request):
        return False  # opened through the API, the forms and the exception receivers

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="SLA", ordering="next_due_at")
    def sla(self, case: Case):
        if not case.is_open or case.next_due_at is None:
            return "—"
        if case.state == CaseState.WAITING:
            return format_html('<span title="clock stopped">&#9208; paused</span>')
        return format_html(
            '<span style="color: {}">&#9679; {}</span>',
            SLA_COLOURS[SlaStatus(case.sla_status)],
            case.get_sla_status_display(),
        )

    @admin.display(description="Possible actions")
    def allowed(self, case: Case) -> str:
        return ", ".join(services.allowed_actions(case)) or "—"

    @admin.display(description="Timeline")
    def timeline(self, case: Case):
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (f"{entry.at:%Y-%m-%d %H:%M}", entry.action, entry.actor, entry.detail)
                for entry in selectors.case_timeline(case)
            ),
        )
        return format_html("<table>{}</table>", rows)

    def save_model(self, request, obj, form, change):
        services.case_update(
            case=obj, by=request.user, **{name: form.cleaned_data[name] for name in self.editable}
        )

    def save_formset(self, request, form, formset, change):
        # commit=False builds what the change message lists; the services do the writing.
        case = form.instance
        for obj in formset.save(commit=False):
            if isinstance(obj, CaseNote):
                services.case_note_add(case=case, body=obj.body, by=request.user)
            elif isinstance(obj, CaseAttachment):
                services.case_attachment_add(case=case, file=obj.file.file, by=request.user)

    @admin.action(description="Take up (assign to me and start)")
    def take_up(self, request, queryset):
        for case in queryset.filter(state__in=[CaseState.NEW, CaseState.ASSIGNED]):
            services.case_take_up(case=case, by=request.user)
        messages.success(request, "Cases taken up.")

    @admin.action(description="Check the SLA now")
    def check_sla(self, request, queryset):
        for case in queryset:
            escalation.case_sla_check(case_id=case.pk)
        messages.success(request, "SLA checked.")


# Reprint and correspondence requests; legal holds and purged documents.
from cases import retention_admin  # noqa: E402, F401
from cases.incidents import admin as incidents_admin  # noqa: E402, F401
from cases.requests import admin as request_admin  # noqa: E402, F401
