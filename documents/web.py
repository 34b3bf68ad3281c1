"""The template authors' screens, mounted at /templates/: the library, a template's versions,
the browser editor with its live preview, submitting for sign-off and publishing.

Writes go through documents.services (and documents.authoring for the editor's files), as the
admin and `templates_import` do.
"""

from __future__ import annotations

import uuid

from django import forms
from django.contrib import messages
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_fsm import TransitionNotAllowed

from ccm import approvals
from ccm.review import sandboxed_html
from ccm.views import confirmed, staff_only
from documents import assets, authoring, services
from documents import bundle as bundles
from documents.composition import CompositionError
from documents.models import Category, Template, TemplateVersion, VersionState

VIEW = "documents.view_templateversion"
WRITE = "documents.add_templateversion"
PUBLISH = "documents.publish_templateversion"
PREVIEW_TTL_S = 15 * 60
STATE_WORDS = {
    VersionState.DRAFT: "Draft",
    VersionState.IN_REVIEW: "In review",
    VersionState.CHANGES_REQUESTED: "Changes requested",
    VersionState.REJECTED: "Rejected",
    VersionState.APPROVED: "Approved, not yet published",
    VersionState.PUBLISHED: "Published",
    VersionState.RETIRED: "Retired",
}
# What a version's action can run into; each is told to the author in words.
REFUSALS = (
    PermissionDenied,
    TransitionNotAllowed,
    services.VersionFrozen,
    approvals.ApprovalConflict,
    bundles.BundleInvalid,
)


def state_words(state: str) -> str:
    return STATE_WORDS.get(VersionState(state), state)


@require_GET
@staff_only(VIEW)
def library(request: HttpRequest) -> HttpResponse:
    templates = Template.objects.prefetch_related(
        Prefetch(
            "versions", queryset=TemplateVersion.objects.only("template_id", "number", "state")
        )
    ).order_by("name")
    rows = [
        {
            "template": t,
            "versions": [
                {"number": v.number, "state": state_words(v.state)}
                for v in sorted(t.versions.all(), key=lambda v: -v.number)[:3]
            ],
        }
        for t in templates
    ]
    return render(request, "documents/authoring/library.html", {"rows": rows})


class NewTemplateForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="What staff and reviewers call it.")
    code = forms.SlugField(
        max_length=100,
        help_text="Lower-case letters, digits and hyphens; integrators send it. It cannot change.",
    )
    category = forms.ChoiceField(choices=Category.choices, widget=forms.RadioSelect)
    channels = forms.MultipleChoiceField(
        choices=[(c, c.capitalize() if c != "sms" else "SMS") for c in bundles.CHANNELS],
        widget=forms.CheckboxSelectMultiple,
        help_text="The renditions to write; you can add more later in template.json.",
    )

    def clean_code(self) -> str:
        code = self.cleaned_data["code"]
        if Template.objects.filter(code=code).exists():
            raise forms.ValidationError(
                f"A template with the code {code!r} exists; choose another."
            )
        return code


@require_http_methods(["GET", "POST"])
@staff_only(WRITE, "documents.add_template")
def template_new(request: HttpRequest) -> HttpResponse:
    form = NewTemplateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            version = authoring.template_start(by=request.user, **form.cleaned_data)
        except REFUSALS as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"{version.template.name}: draft v1 created. Write it below.")
            return redirect("authoring-edit", pk=version.pk)
    status = 400 if form.errors else 200
    return render(request, "documents/authoring/new.html", {"form": form}, status=status)


@require_GET
@staff_only(VIEW)
def template_detail(request: HttpRequest, code: str) -> HttpResponse:
    template = get_object_or_404(Template, code=code)
    versions = template.versions.select_related("author").defer("content").order_by("-number")
    context = {
        "template": template,
        "rows": [{"version": v, "state": state_words(v.state)} for v in versions],
        "draft": authoring.open_draft(template),
        "can_write": request.user.has_perm(WRITE),
        "can_publish": request.user.has_perm(PUBLISH),
    }
    return render(request, "documents/authoring/template.html", context)


@require_POST
@staff_only(WRITE)
def draft_new(request: HttpRequest, code: str) -> HttpResponse:
    template = get_object_or_404(Template, code=code)
    existing = authoring.open_draft(template)
    if existing is not None:
        messages.info(request, f"v{existing.number} is already a draft; carry on with it.")
        return redirect("authoring-edit", pk=existing.pk)
    try:
        version = authoring.draft_start(template=template, by=request.user)
    except REFUSALS as exc:
        messages.error(request, str(exc))
        return redirect("authoring-template", code=code)
    messages.success(request, f"Draft v{version.number} created from the current version.")
    return redirect("authoring-edit", pk=version.pk)


def _version(pk: int) -> TemplateVersion:
    return get_object_or_404(TemplateVersion.objects.select_related("template"), pk=pk)


@require_http_methods(["GET", "POST"])
@staff_only(VIEW)
def version_edit(request: HttpRequest, pk: int) -> HttpResponse:
    """The editor: every file of the version beside its line numbers; Preview composes the
    posted files without storing them; Save stores them if every channel of the chosen sample
    composes and they pass what an import passes (services.bundle_check). Uploading or
    removing an image or font stores that in the draft at once and previews the posted files
    with it (the text in the boxes is kept, still unsaved)."""
    version = _version(pk)
    stored = services.version_bundle(version)
    asset_error = ""
    editable = version.state == VersionState.DRAFT and request.user.has_perm(WRITE)
    files = authoring.editor_files(stored)
    language = request.POST.get("language") or authoring.editor_language(stored)
    sample = request.POST.get("sample") or "default"
    problems: list[authoring.Problem] = []
    preview = None
    status = 200
    if request.method == "POST":
        if not editable:
            raise PermissionDenied("Only a draft can be edited, by a template author.")
        files = authoring.posted_files(
            (key.removeprefix("file:"), request.POST.get(key, ""))
            for key in request.POST
            if key.startswith("file:")
        )
        new_path = request.POST.get("new_path", "").strip()
        if new_path:
            files.setdefault(new_path, request.POST.get("new_text", "") or "\n")
        try:
            stored = _assets_changed(request, version, stored)
        except assets.AssetRefused as exc:
            asset_error, status = str(exc), 422
        except REFUSALS as exc:
            asset_error, status = str(exc), 409
        if asset_error:
            problems = [authoring.Problem("", None, asset_error)]
        else:
            composed = _compose_posted(
                request, version, files=files, stored=stored, language=language, sample=sample
            )
            if isinstance(composed, HttpResponse):
                return composed  # saved
            preview, problems, status = composed
    context = {
        "version": version,
        "template": version.template,
        "state": state_words(version.state),
        "editable": editable,
        "fields": authoring.editor_fields(files, problems),
        "problems": problems,
        "preview": preview,
        "languages": stored.meta.get("languages") or ["en"],
        "language": language,
        "samples": sorted(stored.samples) or ["default"],
        "sample": sample,
        "assets": authoring.editor_assets(stored),
        "asset_error": asset_error,
        "asset_kinds": ", ".join(sorted({f".{ext}" for ext in assets.KINDS})),
    }
    return render(request, "documents/authoring/edit.html", context, status=status)


def _compose_posted(
    request: HttpRequest,
    version: TemplateVersion,
    *,
    files: dict[str, str],
    stored: bundles.Bundle,
    language: str,
    sample: str,
) -> HttpResponse | tuple[dict | None, list[authoring.Problem], int]:
    """Compose the posted files with the draft's stored assets: the page's (preview, problems,
    status), or for Save, once they pass, the redirect after storing them."""
    try:
        bundle = authoring.editor_bundle(files, assets=stored.assets)
        bundles.validate(bundle)
        # Every channel of the chosen sample first (the PDF too), then for Save what an import
        # checks: every sample's text channels in every language.
        composed = services.bundle_preview(bundle=bundle, language=language, sample=sample)
        if request.POST.get("action") == "save":
            services.bundle_check(bundle)
            services.template_version_update(version=version, bundle=bundle, by=request.user)
            messages.success(request, f"Draft v{version.number} saved.")
            return redirect("authoring-edit", pk=version.pk)
        return _preview_keep(request, composed), [], 200
    except (bundles.BundleInvalid, CompositionError) as exc:
        return None, authoring.problems_of(exc, files=files, language=language, sample=sample), 422
    except REFUSALS as exc:
        return None, [authoring.Problem("", None, str(exc))], 409


def _assets_changed(
    request: HttpRequest, version: TemplateVersion, stored: bundles.Bundle
) -> bundles.Bundle:
    """The draft's stored bundle after the image or font the author uploaded or removed (the
    bundle as it was when the form did neither)."""
    action = request.POST.get("action", "")
    if action == "upload":
        upload = request.FILES.get("asset")
        if upload is None:
            raise assets.AssetRefused("Choose an image or font file to upload.")
        name = authoring.asset_add(
            version=version,
            filename=upload.name or "",
            size=upload.size or 0,
            read=upload.read,
            by=request.user,
        )
        messages.success(request, f"{name} is stored in draft v{version.number}: use asset:{name}.")
    elif action.startswith("remove-asset:"):
        name = action.removeprefix("remove-asset:")
        authoring.asset_remove(version=version, name=name, by=request.user)
        messages.success(request, f"{name} is removed from draft v{version.number}.")
    else:
        return stored
    version.refresh_from_db()
    return services.version_bundle(version)


def _preview_keep(request: HttpRequest, preview: services.Preview) -> dict:
    """The preview for the page, its PDF and email HTML kept for the frames to fetch."""
    token = uuid.uuid4().hex
    cache.set(
        f"authoring-preview:{token}",
        {
            "user": request.user.pk,
            "pdf": preview.pdf.data if preview.pdf else None,
            "email": preview.email["html"] if preview.email else None,
        },
        PREVIEW_TTL_S,
    )
    return {
        "token": token,
        "pdf": preview.pdf,
        "email": preview.email,
        "sms": preview.sms,
        "push": preview.push,
    }


def _kept(request: HttpRequest, token: str, part: str):
    kept = cache.get(f"authoring-preview:{token}")
    if not kept or kept["user"] != request.user.pk or not kept.get(part):
        raise Http404("This preview has expired: press Preview again.")
    return kept[part]


@require_GET
@staff_only(WRITE)
@xframe_options_sameorigin
def preview_pdf(request: HttpRequest, token: str) -> HttpResponse:
    return HttpResponse(_kept(request, token, "pdf"), content_type="application/pdf")


@require_GET
@staff_only(WRITE)
@xframe_options_sameorigin
def preview_email(request: HttpRequest, token: str) -> HttpResponse:
    return sandboxed_html(_kept(request, token, "email"))


@require_POST
@staff_only(WRITE)
def version_submit(request: HttpRequest, pk: int) -> HttpResponse:
    version = _version(pk)
    try:
        services.bundle_check(services.version_bundle(version))
        services.template_version_submit(version=version, by=request.user)
    except REFUSALS as exc:
        messages.error(request, f"Not submitted: {exc}")
        return redirect("authoring-edit", pk=pk)
    messages.success(
        request, f"v{version.number} submitted for sign-off. You will be told when it is decided."
    )
    return redirect("authoring-template", code=version.template.code)


@require_POST
@staff_only(WRITE)
def version_reopen(request: HttpRequest, pk: int) -> HttpResponse:
    version = _version(pk)
    try:
        services.template_version_reopen(version=version, by=request.user)
    except REFUSALS as exc:
        messages.error(request, str(exc))
        return redirect("authoring-template", code=version.template.code)
    messages.success(request, f"v{version.number} is a draft again: make the changes asked for.")
    return redirect("authoring-edit", pk=pk)


@require_http_methods(["GET", "POST"])
@staff_only(PUBLISH)
def version_publish(request: HttpRequest, pk: int) -> HttpResponse:
    """Publishing cannot be undone (the version in use is retired): a page says what happens
    and asks; only its confirmed POST publishes."""
    version = _version(pk)
    live = version.template.published_version
    if request.method == "POST" and confirmed(request):
        try:
            services.template_version_publish(version=version, by=request.user)
        except REFUSALS as exc:
            messages.error(request, f"Not published: {exc}")
        else:
            messages.success(request, f"{version.template.name} v{version.number} is published.")
            return redirect("authoring-template", code=version.template.code)
    context = {
        "version": version,
        "template": version.template,
        "live": live if live and live.pk != version.pk else None,
        "state": state_words(version.state),
        "approved": version.state == VersionState.APPROVED,
        "cancel_url": reverse("authoring-template", args=[version.template.code]),
    }
    return render(request, "documents/authoring/publish.html", context)
