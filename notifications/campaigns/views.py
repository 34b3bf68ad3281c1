"""The back-office campaign screens: list with filters, create, segment preview, the campaign's
whole story with its live progress, and the operations buttons. Every write calls a service;
a refusal comes back as an error on the page, never a 500."""

from __future__ import annotations

import json

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from ccm.forms import AccessibleForm
from ccm.views import confirm_page, confirmed
from documents.models import Category, Template
from notifications.campaigns import api, selectors, services
from notifications.campaigns.models import (
    Campaign,
    CampaignState,
    DataSource,
    Segment,
    WindowZone,
)

VIEW = "notifications.view_campaign"
ADD = "notifications.add_campaign"
CHANGE = "notifications.change_campaign"


def _needs(permission: str):
    def decorate(view):
        return login_required(permission_required(permission, raise_exception=True)(view))

    return decorate


class CampaignForm(AccessibleForm):
    name = forms.CharField(max_length=200, error_messages={"required": "Name the campaign."})
    template = forms.ChoiceField(
        label="Template (its published version is bound)",
        error_messages={"required": "Choose the template to send."},
    )
    segment = forms.ModelChoiceField(
        queryset=Segment.objects.all(),
        empty_label="Choose a segment",
        error_messages={"required": "Choose the segment to send to."},
    )
    category = forms.ChoiceField(
        choices=[("", "The template's category"), *Category.choices], required=False
    )
    data_source = forms.ChoiceField(choices=DataSource.choices, label="Per-customer data")
    data_csv = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}),
        required=False,
        label="CSV data",
        help_text="With CSV data: a customer_ref column (the customer's reference) and one "
        "column per template field.",
    )
    throttle = forms.CharField(
        required=False,
        label="Throttle",
        help_text='Messages per minute per channel, as JSON: {"email": 600}',
    )
    schedule_at = forms.DateTimeField(
        required=False,
        label="Send at",
        help_text="Empty: as soon as operations schedule it. Business time zone.",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        error_messages={"invalid": "Give a date and time, e.g. 2026-12-24 09:00."},
    )
    window_start = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=23,
        label="Send window: from hour",
        help_text="Optional. Messages go only between these hours of the day (0 to 23).",
    )
    window_end = forms.IntegerField(
        required=False, min_value=0, max_value=23, label="Send window: until hour"
    )
    window_zone = forms.ChoiceField(
        choices=WindowZone.choices,
        initial=WindowZone.BUSINESS,
        required=False,
        label="Send window read in",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields["template"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = [("", "Choose a template")] + [
            (t.code, f"{t.code} — {t.name}") for t in Template.objects.order_by("code")
        ]

    def clean_throttle(self):
        raw = (self.cleaned_data.get("throttle") or "").strip()
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except ValueError:
            raise forms.ValidationError(
                'Write the throttle as JSON, e.g. {"email": 600}.'
            ) from None
        errors = services.throttle_errors(value)
        if errors:
            raise forms.ValidationError(errors)
        return value

    def clean(self):
        data = super().clean() or {}
        start, end = data.get("window_start"), data.get("window_end")
        if (start is None) != (end is None):
            self.add_error("window_end", "Give both hours of the send window, or neither.")
        elif start is not None and start == end:
            self.add_error("window_end", "The window ends at a different hour than it starts.")
        data["window"] = (start, end) if start is not None and end is not None else None
        return data

    @classmethod
    def initial_of(cls, campaign: Campaign) -> dict:
        return {
            "name": campaign.name,
            "template": campaign.template_version.template.code,
            "segment": campaign.segment_id,
            "category": campaign.category,
            "data_source": campaign.data_source,
            "data_csv": campaign.data_csv,
            "throttle": json.dumps(campaign.throttle) if campaign.throttle else "",
            "schedule_at": campaign.schedule_at,
            "window_start": campaign.window_start_hour,
            "window_end": campaign.window_end_hour,
            "window_zone": campaign.window_zone,
        }

    def settings(self) -> dict:
        """The cleaned form as the campaign services take it."""
        data = self.cleaned_data
        return {
            "segment": data["segment"],
            "category": data["category"],
            "data_source": data["data_source"],
            "data_csv": data["data_csv"],
            "throttle": data["throttle"],
            "schedule_at": data["schedule_at"],
            "window": data["window"],
            "window_zone": data["window_zone"] or WindowZone.BUSINESS,
        }


class SegmentForm(AccessibleForm):
    name = forms.CharField(max_length=200, error_messages={"required": "Name the segment."})
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    definition = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6}),
        help_text='JSON, e.g. {"attributes": {"product": "variable_mortgage"}}',
        error_messages={"required": "Give the definition (an empty object {} selects everyone)."},
    )

    def clean_definition(self):
        try:
            value = json.loads(self.cleaned_data["definition"])
        except ValueError:
            raise forms.ValidationError("The definition is not valid JSON.") from None
        errors = selectors.segment_definition_errors(value)
        if errors:
            raise forms.ValidationError(errors)
        return value


@require_GET
@_needs(VIEW)
def campaign_list(request: HttpRequest) -> HttpResponse:
    state = request.GET.get("state", "")
    error = ""
    if state and state not in CampaignState.values:
        error, state = f"There is no state {state!r}; choose one from the list.", ""
    q = request.GET.get("q", "").strip()
    page = Paginator(selectors.campaigns_list(state=state, q=q), 50).get_page(
        request.GET.get("page")
    )
    context = {
        "page": page,
        "state": state,
        "q": q,
        "states": CampaignState.choices,
        "error": error,
    }
    return render(request, "campaigns/list.html", context, status=400 if error else 200)


@require_http_methods(["GET", "POST"])
@_needs(ADD)
def campaign_create(request: HttpRequest) -> HttpResponse:
    form = CampaignForm(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            data = form.cleaned_data
            try:
                campaign = services.campaign_create(
                    name=data["name"],
                    template_code=data["template"],
                    by=request.user,
                    **form.settings(),
                )
            except services.CampaignError as exc:
                _errors_on(form, exc)
            else:
                messages.success(request, f"Campaign {campaign.name} created as a draft.")
                return redirect("campaign-detail", campaign.pk)
        status = 400
    return render(request, "campaigns/create.html", {"form": form}, status=status)


def _errors_on(form: forms.Form, exc: services.CampaignError) -> None:
    form.add_error(None, str(exc))
    for row in exc.errors:
        for error in row.get("errors", []):
            form.add_error(None, error)


@require_http_methods(["GET", "POST"])
@_needs(ADD)
def campaign_edit(request: HttpRequest, pk: int) -> HttpResponse:
    """Edit a draft, or a campaign sent back with changes requested."""
    campaign = get_object_or_404(
        Campaign.objects.select_related("template_version__template"), pk=pk
    )
    if campaign.state not in services.EDITABLE_STATES:
        messages.error(
            request,
            f"A campaign that is {campaign.get_state_display().lower()} cannot be edited.",
        )
        return redirect("campaign-detail", campaign.pk)
    if request.method == "POST":
        form = CampaignForm(request.POST)
        if form.is_valid():
            try:
                services.campaign_update(
                    campaign=campaign,
                    by=request.user,
                    name=form.cleaned_data["name"],
                    template=form.cleaned_data["template"],
                    **form.settings(),
                )
            except services.CampaignError as exc:
                _errors_on(form, exc)
            else:
                messages.success(request, f"Campaign {campaign.name}: changes saved.")
                return redirect("campaign-detail", campaign.pk)
        context = {"form": form, "campaign": campaign}
        return render(request, "campaigns/create.html", context, status=400)
    form = CampaignForm(initial=CampaignForm.initial_of(campaign))
    return render(request, "campaigns/create.html", {"form": form, "campaign": campaign})


@require_http_methods(["GET", "POST"])
@_needs("notifications.add_segment")
def segment_create(request: HttpRequest) -> HttpResponse:
    form = SegmentForm(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                segment = services.segment_create(**form.cleaned_data, by=request.user)
            except services.CampaignError as exc:
                form.add_error("definition", [e for row in exc.errors for e in row["errors"]])
            else:
                return redirect("segment-preview", segment.pk)
        status = 400
    return render(request, "campaigns/segment_create.html", {"form": form}, status=status)


@require_GET
@_needs("notifications.view_segment")
def segment_preview(request: HttpRequest, pk: int) -> HttpResponse:
    segment = get_object_or_404(Segment, pk=pk)
    category = request.GET.get("category", Category.REGULATORY)
    if category not in Category.values:
        category = Category.REGULATORY
    error = ""
    try:
        preview = selectors.segment_preview(
            segment.definition, category=category, renditions=selectors.CHANNELS
        )
    except selectors.SegmentInvalid as exc:
        preview, error = None, str(exc)
    context = {
        "segment": segment,
        "preview": preview,
        "category": category,
        "categories": Category.choices,
        "definition": json.dumps(segment.definition, indent=2, sort_keys=True),
        "error": error,
        "sign_offs": selectors.segment_sign_offs(segment)[:50],
    }
    return render(request, "campaigns/segment_preview.html", context)


def _story(campaign: Campaign) -> dict:
    approval = campaign.approval
    return {
        "campaign": campaign,
        "approval": approval,
        "definition": json.dumps(
            campaign.segment_snapshot.get("definition", campaign.segment.definition),
            indent=2,
            sort_keys=True,
        ),
        "progress": selectors.campaign_progress(campaign),
        "plan": campaign.channel_plan or {},
        "can": {
            "submit": campaign.state in {CampaignState.DRAFT, CampaignState.CHANGES_REQUESTED},
            "edit": campaign.state in services.EDITABLE_STATES,
            "schedule": campaign.state == CampaignState.APPROVED,
            "pause": campaign.state == CampaignState.SENDING,
            "resume": campaign.state == CampaignState.PAUSED,
            "cancel": campaign.state not in {CampaignState.COMPLETED, CampaignState.CANCELLED},
            "evidence": campaign.audience_count > 0,
        },
    }


@require_GET
@_needs(VIEW)
def campaign_detail(request: HttpRequest, pk: int) -> HttpResponse:
    campaign = get_object_or_404(
        Campaign.objects.select_related(
            "template_version__template",
            "segment",
            "created_by",
            "submitted_by",
            "approval__decided_by",
        ),
        pk=pk,
    )
    return render(request, "campaigns/detail.html", _story(campaign))


@require_GET
@_needs(VIEW)
def campaign_progress(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse(selectors.campaign_progress(get_object_or_404(Campaign, pk=pk)))


@require_GET
@_needs(VIEW)
def campaign_evidence(request: HttpRequest, pk: int) -> HttpResponse:
    return api.evidence_response(get_object_or_404(Campaign, pk=pk))


ACTIONS = {
    "submit": (ADD, lambda c, by, reason: services.campaign_submit(campaign=c, by=by)),
    "schedule": (CHANGE, lambda c, by, reason: services.campaign_schedule(campaign=c, by=by)),
    "pause": (
        CHANGE,
        lambda c, by, reason: services.campaign_pause(campaign=c, by=by, reason=reason),
    ),
    "resume": (CHANGE, lambda c, by, reason: services.campaign_resume(campaign=c, by=by)),
    "cancel": (
        CHANGE,
        lambda c, by, reason: services.campaign_cancel(campaign=c, by=by, reason=reason),
    ),
}


@require_POST
@login_required
def campaign_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    campaign = get_object_or_404(Campaign, pk=pk)
    if action not in ACTIONS:
        return render(request, "404.html", status=404)
    permission, run = ACTIONS[action]
    context = _story(campaign)
    if not request.user.has_perm(permission):
        context["error"] = "Your role may not do this with campaigns."
        return render(request, "campaigns/detail.html", context, status=403)
    reason = request.POST.get("reason", "").strip()
    if action == "cancel" and context["can"]["cancel"] and not confirmed(request):
        return confirm_page(
            request,
            question=f"Cancel the campaign {campaign.name}?",
            consequences=[
                *([f"Why: {reason}"] if reason else []),
                "Recipients still waiting are skipped, and messages not yet handed to a "
                "provider are cancelled. What a provider already has cannot be called back.",
            ],
            yes="Yes, cancel the campaign",
            back_url=reverse("campaign-detail", args=[campaign.pk]),
            carry={"reason": reason},
        )
    try:
        run(campaign, request.user, reason)
    except services.CampaignError as exc:
        campaign.refresh_from_db()
        context = _story(campaign)
        context["error"] = str(exc)
        context["errors"] = exc.errors
        return render(
            request, "campaigns/detail.html", context, status=409 if not exc.errors else 400
        )
    messages.success(request, f"{action.capitalize()}: done.")
    return redirect("campaign-detail", campaign.pk)
