"""The back-office's send jobs, mounted at /jobs/ (as GOV.UK Notify sends a file):

- operations choose a published template and upload a CSV; every row is checked before
  anything is sent and each bad row is listed with its reason; the first good rows are shown as
  they will read on each channel; then send now or at a time;
- the job's page shows its progress (a bar that a small script moves without reloading, from
  `progress.json`; without JavaScript the page shows the figures when loaded), and cancels
  what has not been handed to a provider;
- operations and compliance see the list of jobs (API batches, files, commands).

Operations add and send jobs (`notifications.add_sendjob`, `change_sendjob`); compliance views
them (`view_sendjob`); others get a 403 page.
"""

from __future__ import annotations

from datetime import datetime

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from ccm.forms import AccessibleForm
from ccm.lists import CountLimitedPaginator
from ccm.views import confirm_page, confirmed, staff_only
from documents import selectors as document_selectors
from documents import services as documents
from documents.composition import CompositionError
from documents.models import Template, TemplateVersion
from notifications.jobs import csv_rows, selectors, services
from notifications.models import JobSource, JobState, SendJob
from notifications.pipeline.content import PORTAL_URL_PLACEHOLDER

VIEW = "notifications.view_sendjob"
ADD = "notifications.add_sendjob"
SEND = "notifications.change_sendjob"
LIST_PAGE_SIZE = 25
BAD_ROWS_SHOWN = 1000
PREVIEW_ROWS = 3


class PublishedTemplateField(forms.ModelChoiceField):
    def label_from_instance(self, obj) -> str:
        return f"{obj.name} ({obj.code})"


class UploadForm(AccessibleForm):
    template = PublishedTemplateField(
        queryset=Template.objects.none(),
        empty_label="Choose a template",
        help_text="Only templates with a published version can be sent.",
        error_messages={"required": "Choose the template to send."},
    )
    file = forms.FileField(
        label="CSV file",
        help_text=(
            "First row: the column names. A column customer_ref with the customer's reference, "
            "then one column per data field of the template, nested fields with dots "
            "(customer.name). Optional columns: source_system, idempotency_key."
        ),
        error_messages={"required": "Choose the CSV file to send."},
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["template"].queryset = Template.objects.filter(  # type: ignore[attr-defined]
            versions__state="published"
        ).order_by("code")


class SendForm(AccessibleForm):
    when = forms.ChoiceField(
        label="When",
        choices=[("now", "Now"), ("at", "At a time")],
        widget=forms.RadioSelect,
        initial="now",
    )
    at = forms.DateTimeField(
        label="Send at",
        required=False,
        input_formats=["%Y-%m-%dT%H:%M"],
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="Local time of the server's zone; at least a minute from now.",
    )

    def clean(self):
        data = super().clean() or {}
        if data.get("when") == "at":
            at = data.get("at")
            if at is None:
                if "at" not in self.errors:
                    self.add_error("at", "Give the date and time to send at.")
            elif at <= timezone.now():
                self.add_error("at", "Give a time in the future, or choose Now.")
        return data


class CancelForm(AccessibleForm):
    reason = forms.CharField(
        max_length=500,
        label="Why cancel",
        help_text="Kept in the audit log.",
        error_messages={"required": "Say why the job is cancelled."},
    )


@require_GET
@staff_only(VIEW)
def job_list(request: HttpRequest) -> HttpResponse:
    page = CountLimitedPaginator(selectors.send_job_list(), LIST_PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    progress = selectors.send_jobs_progress(list(page))
    rows = [{"job": job, "progress": progress[job.pk]} for job in page]
    return render(request, "notifications/jobs/list.html", {"page": page, "rows": rows})


@require_http_methods(["GET", "POST"])
@staff_only(VIEW, ADD)
def job_new(request: HttpRequest) -> HttpResponse:
    form = UploadForm(request.POST or None, request.FILES or None)
    status = 200
    if request.method == "POST":
        job = _prepare(request, form) if form.is_valid() else None
        if job is not None:
            return redirect("jobs-detail", pk=job.pk)
        status = 400
    return render(request, "notifications/jobs/new.html", {"form": form}, status=status)


def _prepare(request: HttpRequest, form: UploadForm) -> SendJob | None:
    template: Template = form.cleaned_data["template"]
    upload = form.cleaned_data["file"]
    version = document_selectors.version_for_sending(code=template.code)
    if version is None:
        form.add_error("template", "This template has no published version any more.")
        return None
    if upload.size > csv_rows.MAX_BYTES:
        form.add_error("file", f"The file is larger than {csv_rows.MAX_BYTES // 2**20} MB.")
        return None
    try:
        rows = csv_rows.rows_read(upload.read(), schema=version.content.get("schema", {}))
        return services.send_job_prepare(
            template_code=template.code,
            rows=rows,
            source=JobSource.CSV,
            client=f"user:{request.user.pk}",
            by=request.user,
            file_name=upload.name or "",
        )
    except (csv_rows.CsvInvalid, services.JobError) as exc:
        form.add_error("file", str(exc))
        return None


def _previews(job: SendJob) -> list[dict]:
    """The first good rows as each text channel will carry them (the letter is rendered when
    sent; its proof is on the template's page)."""
    if job.state != JobState.READY or job.template is None:
        return []
    version: TemplateVersion | None = document_selectors.version_for_sending(code=job.template.code)
    if version is None:
        return []
    channels = [c for c in version.meta.get("channels", []) if c != "print"]
    letter = "print" in version.meta.get("channels", []) or version.meta.get("delivery") == "attach"
    out: list[dict] = []
    items = selectors.send_job_items(job).filter(errors=[])[:PREVIEW_ROWS]
    for item in items:
        data = dict(item.data)
        if version.meta.get("delivery") == "portal_link":
            data.setdefault("portal_url", PORTAL_URL_PLACEHOLDER)
        try:
            preview = documents.template_preview(version=version, data=data, channels=channels)
        except CompositionError as exc:
            out.append({"item": item, "error": str(exc), "letter": letter})
            continue
        out.append({"item": item, "preview": preview, "letter": letter})
    return out


@require_GET
@staff_only(VIEW)
def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = get_object_or_404(SendJob.objects.select_related("template", "created_by"), pk=pk)
    return _detail(request, job)


def _detail(request, job, *, send_form=None, cancel_form=None, status=200) -> HttpResponse:
    bad = selectors.send_job_refused_items(job)
    context = {
        "job": job,
        "progress": selectors.send_job_progress(job),
        "bad_rows": bad[:BAD_ROWS_SHOWN],
        "bad_more": max(0, job.refused - BAD_ROWS_SHOWN),
        "previews": _previews(job),
        "send_form": send_form or SendForm(),
        "cancel_form": cancel_form or CancelForm(),
        "can_send": request.user.has_perm(SEND) and job.state == JobState.READY,
        "can_cancel": request.user.has_perm(SEND)
        and job.state
        in {JobState.VALIDATING, JobState.READY, JobState.SCHEDULED, JobState.SENDING},
        "moving": job.state in {JobState.SCHEDULED, JobState.SENDING},
    }
    return render(request, "notifications/jobs/detail.html", context, status=status)


@require_POST
@staff_only(VIEW, SEND)
def job_send(request: HttpRequest, pk: int) -> HttpResponse:
    job = get_object_or_404(SendJob, pk=pk)
    form = SendForm(request.POST)
    if not form.is_valid():
        return _detail(request, job, send_form=form, status=400)
    at: datetime | None = form.cleaned_data["at"] if form.cleaned_data["when"] == "at" else None
    try:
        job = services.send_job_start(job=job, by=request.user, at=at)
    except services.JobError as exc:
        form.add_error(None, str(exc))
        return _detail(request, job, send_form=form, status=409)
    if job.state == JobState.SCHEDULED:
        messages.success(request, f"Job {job.pk} will be sent at {job.send_at:%Y-%m-%d %H:%M}.")
    else:
        messages.success(request, f"Job {job.pk} is being sent.")
    return redirect("jobs-detail", pk=job.pk)


@require_POST
@staff_only(VIEW, SEND)
def job_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    job = get_object_or_404(SendJob, pk=pk)
    form = CancelForm(request.POST)
    if not form.is_valid():
        return _detail(request, job, cancel_form=form, status=400)
    if not confirmed(request):
        return confirm_page(
            request,
            question=f"Cancel job {job.pk}?",
            consequences=[
                f"Why: {form.cleaned_data['reason']}",
                "Rows not yet handed to the pipeline are never sent, and communications not yet "
                "being dispatched are cancelled. What a provider already has cannot be called "
                "back.",
            ],
            yes=f"Yes, cancel job {job.pk}",
            back_url=reverse("jobs-detail", args=[job.pk]),
            carry={"reason": form.cleaned_data["reason"]},
        )
    try:
        services.send_job_cancel(job=job, by=request.user, reason=form.cleaned_data["reason"])
    except services.JobError as exc:
        form.add_error(None, str(exc))
        return _detail(request, job, cancel_form=form, status=409)
    messages.success(request, f"Job {job.pk} is cancelled: nothing more will be sent.")
    return redirect("jobs-detail", pk=job.pk)


@require_GET
@never_cache
@staff_only(VIEW)
def job_progress(request: HttpRequest, pk: int) -> JsonResponse:
    job = get_object_or_404(SendJob, pk=pk)
    if services.send_job_settle(job_id=job.pk):
        job.refresh_from_db()
    return JsonResponse(
        {
            "state": job.state,
            "state_label": job.get_state_display(),
            **selectors.send_job_progress(job),
        }
    )
