"""Every write of the documents app: templates and their sign-off, composition, the archive."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import Max
from django.urls import reverse
from django.utils import timezone

from ccm import approvals, audit
from ccm.models import Approval, ApprovalState
from documents import bundle as bundles
from documents import signals
from documents.addressee import sample_addressee, with_addressee
from documents.composition import (
    PRINT_DRAWING,
    CompositionError,
    DataInvalid,
    LruCache,
    Sources,
    validate_data,
)
from documents.models import (
    Document,
    DocumentKind,
    RegenerationCheck,
    Template,
    TemplateVersion,
    VersionState,
)
from documents.rendering import Limits, RenderedPdf, engine_info, stamp
from documents.sandbox import compose_text, render_pdf

logger = logging.getLogger(__name__)

APPROVAL_PURPOSE = "template_version.publish"
PROOF_MARK = "PROOF"
TEXT_CHANNELS = frozenset({"email", "sms", "push"})
DUPLICATE_MARK = "DUPLICATE"


class VersionFrozen(Exception):
    """The version was submitted; its content can no longer change. Create a new version."""


class RegenerationMismatch(Exception):
    """Re-rendering from the archive did not give the archived bytes: an alarm, not a file."""

    def __init__(self, check: RegenerationCheck):
        super().__init__(
            f"document {check.document_id} regenerated to {check.actual_sha256}, "
            f"archived as {check.expected_sha256}"
        )
        self.check = check


# --- bundles and sources, cached by content hash (content is immutable per hash) -------------

_sources_cache: LruCache[tuple[str, str], Sources] = LruCache(64)


def version_bundle(version: TemplateVersion) -> bundles.Bundle:
    return bundles.Bundle.from_content(version.content)


def version_sources(version: TemplateVersion, language: str) -> Sources:
    return _sources_cache.get(
        (version.content_hash, language),
        lambda: bundles.sources(version_bundle(version), language),
    )


def render_limits() -> Limits:
    return Limits(timeout_s=settings.CCM_RENDER_TIMEOUT_S, memory_mb=settings.CCM_RENDER_MEMORY_MB)


def compose_limits() -> Limits:
    """The limits of one text rendition (email, SMS, push): tighter than a PDF's, since a
    message is small and previews are composed while someone waits."""
    return Limits(
        timeout_s=settings.CCM_COMPOSE_TIMEOUT_S, memory_mb=settings.CCM_COMPOSE_MEMORY_MB
    )


def text_channels_compose(
    *,
    version: TemplateVersion,
    language: str,
    items: Sequence[tuple[Mapping, Sequence[str]]],
) -> list[dict | CompositionError]:
    """The email, SMS and push renditions of `version` for each (data, channels) item, composed
    in the render worker under compose_limits(). One result per item: the rendered channels, or
    the CompositionError saying why not."""
    if not any(TEXT_CHANNELS.intersection(channels) for _, channels in items):
        return [{} for _ in items]
    return compose_text(
        sources=version_sources(version, language),
        locale=bundles.locale_for(language),
        items=items,
        limits=compose_limits(),
    )


def language_for(version: TemplateVersion, language: str | None) -> str:
    return _language(version.meta, language)


def _language(meta: Mapping, language: str | None) -> str:
    languages = meta.get("languages") or ["en"]
    if language is None:
        return languages[0]
    if language not in languages:
        # Fall back to the template's first language rather than failing a regulated notice.
        return languages[0]
    return language


# --- templates and versions ----------------------------------------------------------------


@transaction.atomic
def template_create(
    *,
    code: str,
    name: str,
    category: str,
    by,
    owner: str = "",
    description: str = "",
    languages: list[str] | None = None,
) -> Template:
    template = Template.objects.create(
        code=code,
        name=name,
        category=category,
        owner=owner,
        description=description,
        languages=languages or ["en"],
    )
    audit.record(actor=by, action="template.created", subject=template, after={"code": code})
    return template


def _check_author(by) -> None:
    if not by.has_perm("documents.add_templateversion"):
        raise PermissionDenied("Only template authors can write template versions.")


@transaction.atomic
def template_version_create(
    *, template: Template, bundle: bundles.Bundle, by, source: str = "ui"
) -> TemplateVersion:
    """A new draft version holding `bundle` (validated first)."""
    _check_author(by)
    bundles.validate(bundle)
    if bundle.meta.get("code") != template.code:
        raise bundles.BundleInvalid(
            f"template.json code {bundle.meta.get('code')!r} is not {template.code!r}"
        )
    locked = Template.objects.select_for_update().get(pk=template.pk)
    number = (locked.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    content = bundle.to_content()
    version = TemplateVersion.objects.create(
        template=locked,
        number=number,
        author=by,
        content=content,
        content_hash=bundles.content_hash(content),
        source=source[:300],
    )
    audit.record(
        actor=by,
        action="template_version.created",
        subject=version,
        after={"number": number, "content_hash": version.content_hash, "source": source},
    )
    return version


@transaction.atomic
def template_version_update(
    *, version: TemplateVersion, bundle: bundles.Bundle, by
) -> TemplateVersion:
    _check_author(by)
    locked = TemplateVersion.objects.select_for_update().get(pk=version.pk)
    if locked.state != VersionState.DRAFT:
        raise VersionFrozen(
            f"Version {locked.number} is {locked.state}; its content is frozen. "
            "Create a new version to change it."
        )
    bundles.validate(bundle)
    before = locked.content_hash
    locked.content = bundle.to_content()
    locked.content_hash = bundles.content_hash(locked.content)
    locked.save(update_fields=["content", "content_hash", "updated_at"])
    audit.record(
        actor=by,
        action="template_version.updated",
        subject=locked,
        before={"content_hash": before},
        after={"content_hash": locked.content_hash},
    )
    return locked


@transaction.atomic
def template_version_submit(*, version: TemplateVersion, by) -> Approval:
    """Freeze the version's content and ask a compliance reviewer to sign it off."""
    _check_author(by)
    locked = TemplateVersion.objects.select_for_update().get(pk=version.pk)
    if bundles.content_hash(locked.content) != locked.content_hash:
        raise VersionFrozen("The stored content does not match its hash; refusing to submit.")
    locked.submit(when=timezone.now())
    locked.save()
    audit.record(
        actor=by,
        action="template_version.submitted",
        subject=locked,
        after={"content_hash": locked.content_hash},
    )
    version.refresh_from_db()
    return approvals.approval_request(
        subject=locked,
        requested_by=by,
        purpose=APPROVAL_PURPOSE,
        summary=f"{locked.template.name} v{locked.number} ({locked.template.code})",
    )


def _on_version_decision(version: TemplateVersion, approval: Approval) -> None:
    """Called by the kernel inside the deciding transaction."""
    locked = TemplateVersion.objects.select_for_update().get(pk=version.pk)
    transition = {
        ApprovalState.APPROVED: locked.approve,
        ApprovalState.REJECTED: locked.reject,
        ApprovalState.CHANGES_REQUESTED: locked.request_changes,
        ApprovalState.WITHDRAWN: locked.reopen,
    }[ApprovalState(approval.state)]
    transition()
    locked.save()
    audit.record(
        actor=approval.decided_by or approval.requested_by,
        action=f"template_version.{locked.state}",
        subject=locked,
        after={"approval": approval.pk, "comment": approval.comment},
    )


def register_approvable(*, proof) -> None:
    """`proof` renders what the reviewer signs (documents.review.version_proof, handed over by
    DocumentsConfig.ready(): review renders through this module)."""
    approvals.register(
        TemplateVersion,
        author_of=lambda version: version.author,  # type: ignore[attr-defined]
        on_decision=_on_version_decision,  # type: ignore[arg-type]
        review_url=lambda version: reverse(
            "admin:documents_templateversion_review", args=[version.pk]
        ),
        label="Template version",
        proof=proof,
        decided_url=lambda version: reverse(
            "authoring-template",
            args=[version.template.code],  # type: ignore[attr-defined]
        ),
    )


@transaction.atomic
def template_version_reopen(*, version: TemplateVersion, by) -> TemplateVersion:
    """After a reviewer requested changes, the author takes the version back to draft."""
    _check_author(by)
    locked = TemplateVersion.objects.select_for_update().get(pk=version.pk)
    if locked.state != VersionState.CHANGES_REQUESTED:
        raise VersionFrozen(
            f"Only a version with changes requested can be reopened, not {locked.state}."
        )
    locked.reopen()
    locked.save()
    audit.record(actor=by, action="template_version.reopened", subject=locked)
    return locked


@transaction.atomic
def template_version_publish(*, version: TemplateVersion, by) -> TemplateVersion:
    """Publish an approved version; the version published before it is retired."""
    if not by.has_perm("documents.publish_templateversion"):
        raise PermissionDenied("Publishing needs the documents.publish_templateversion permission.")
    template = Template.objects.select_for_update().get(pk=version.template_id)
    locked = TemplateVersion.objects.select_for_update().get(pk=version.pk)
    if bundles.content_hash(locked.content) != locked.content_hash:
        raise VersionFrozen("The stored content does not match its signed-off hash.")
    now = timezone.now()
    previous = template.versions.select_for_update().filter(state=VersionState.PUBLISHED).first()
    if previous is not None:
        previous.retire(when=now)
        previous.save()
        audit.record(actor=by, action="template_version.retired", subject=previous)
    locked.publish(when=now)
    locked.save()
    meta = locked.meta
    template.name = meta.get("name", template.name)
    template.category = meta.get("category", template.category)
    template.owner = meta.get("owner", template.owner)
    template.description = meta.get("description", template.description)
    template.languages = meta.get("languages", template.languages)
    template.save()
    audit.record(
        actor=by,
        action="template_version.published",
        subject=locked,
        after={"content_hash": locked.content_hash, "retired": previous.pk if previous else None},
    )
    return locked


# --- files kept in git ---------------------------------------------------------------------


@dataclass(frozen=True)
class ImportResult:
    code: str
    outcome: str  # "created", "new_version", "unchanged", "invalid"
    version: int | None = None
    reason: str = ""


def templates_import(*, folder: Path, by) -> list[ImportResult]:
    """Create a draft version for every template folder whose content differs from the latest
    version; unchanged templates get nothing. Each template is imported on its own, so one bad
    folder does not stop the others."""
    results: list[ImportResult] = []
    for path in sorted(p for p in folder.iterdir() if (p / "template.json").is_file()):
        try:
            results.append(_import_one(path, by=by))
        except (bundles.BundleInvalid, PermissionDenied) as exc:
            results.append(ImportResult(code=path.name, outcome="invalid", reason=str(exc)))
    return results


@transaction.atomic
def _import_one(path: Path, *, by) -> ImportResult:
    bundle = bundles.read_folder(path)
    bundle_check(bundle)
    meta = bundle.meta
    if meta["code"] != path.name:
        raise bundles.BundleInvalid(f"folder {path.name} holds template.json code {meta['code']!r}")
    template = Template.objects.filter(code=meta["code"]).first()
    created = template is None
    if template is None:
        template = template_create(
            code=meta["code"],
            name=meta["name"],
            category=meta["category"],
            owner=meta.get("owner", ""),
            description=meta.get("description", ""),
            languages=meta.get("languages", ["en"]),
            by=by,
        )
    latest = template.versions.order_by("-number").first()
    if latest is not None and latest.content_hash == bundles.content_hash(bundle.to_content()):
        return ImportResult(code=template.code, outcome="unchanged", version=latest.number)
    version = template_version_create(
        template=template, bundle=bundle, by=by, source=f"git:{path.name}"
    )
    return ImportResult(
        code=template.code, outcome="created" if created else "new_version", version=version.number
    )


def _sample_context(data: dict) -> dict:
    """A sample as a preview composes it: addressed to its own sample customer."""
    snapshot = data_snapshot(data)
    return with_addressee(snapshot, sample_addressee(snapshot))


def bundle_check(bundle: bundles.Bundle) -> None:
    """What a bundle must pass to be stored, from a folder in git or from the browser editor:
    bundles.validate, then every sample composed through the email, SMS and push renditions,
    in every language, under the composition limits. A template that cannot is refused with
    the reason, rather than failing later in a preview, on the review page or in the
    pipeline."""
    bundles.validate(bundle)
    channels = sorted(TEXT_CHANNELS.intersection(bundle.meta.get("channels", [])))
    if not channels:
        return
    samples = list(bundle.samples.items())
    problems = []
    for language in bundle.meta.get("languages") or ["en"]:
        results = compose_text(
            sources=bundles.sources(bundle, language),
            locale=bundles.locale_for(language),
            items=[(_sample_context(data), channels) for _, data in samples],
            limits=compose_limits(),
        )
        for (name, _), result in zip(samples, results, strict=True):
            if isinstance(result, CompositionError):
                problems.append(
                    f"samples/{name}.json ({language}) does not compose: {result.reason}"
                )
        if problems:
            break  # the other languages would most likely repeat it (a slow one, each time)
    if problems:
        raise bundles.BundleInvalid("; ".join(problems), problems=problems)


def templates_export(
    *, folder: Path, codes: Iterable[str] | None = None, latest: bool = False
) -> list[str]:
    """Write each template's published (or latest) version in the folder format."""
    written = []
    templates = Template.objects.all()
    if codes:
        templates = templates.filter(code__in=list(codes))
    for template in templates:
        versions = template.versions.order_by("-number")
        version = (
            versions.first() if latest else versions.filter(state=VersionState.PUBLISHED).first()
        )
        if version is None:
            continue
        bundles.write_folder(version_bundle(version), folder / template.code)
        written.append(template.code)
    return written


# --- composition and the archive -----------------------------------------------------------


def data_snapshot(data: Mapping) -> dict:
    """What is archived is exactly what is rendered: the JSON round-trip of the data."""
    try:
        return json.loads(json.dumps(data, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise DataInvalid(f"data must be JSON: {exc}") from exc


def document_compose(
    *,
    version: TemplateVersion,
    data: Mapping,
    language: str | None = None,
    by=None,
) -> Document:
    """Validate, render and archive one document. A failure raises CompositionError with the
    reason and field errors, and the `composition_failed` signal fires; nothing is archived."""
    language = language_for(version, language)
    locale = bundles.locale_for(language)
    # The pipeline passes the addressee from the customer record; a proof composed straight
    # from a sample is addressed to the sample's customer.
    snapshot = data_snapshot(data)
    snapshot = with_addressee(snapshot, sample_addressee(snapshot))
    try:
        validate_data(version.content.get("schema", {}), snapshot)
        rendered = render_pdf(
            sources=version_sources(version, language),
            locale=locale,
            data=snapshot,
            limits=render_limits(),
            drawing=PRINT_DRAWING,
        )
    except CompositionError as exc:
        signals.composition_failed.send(
            sender=TemplateVersion, version=version, data=snapshot, error=exc
        )
        raise
    return _archive(
        version=version,
        language=language,
        locale=locale,
        data=snapshot,
        pdf=rendered,
        kind=DocumentKind.ORIGINAL,
        by=by,
        drawing=PRINT_DRAWING,
    )


def _archive(
    *,
    version: TemplateVersion,
    language: str,
    locale: str,
    data: dict,
    pdf: RenderedPdf,
    kind: str,
    by,
    drawing: int,
    original: Document | None = None,
) -> Document:
    digest = hashlib.sha256(pdf.data).hexdigest()
    name = f"{version.template.code}-v{version.number}-{uuid.uuid4().hex[:12]}.pdf"
    with transaction.atomic():
        document = Document(
            template_version=version,
            kind=kind,
            original=original,
            language=language,
            locale=locale,
            data=data,
            sha256=digest,
            size=len(pdf.data),
            page_count=pdf.page_count,
            engine=engine_with_drawing(drawing),
            created_by=by,
        )
        document.file.save(name, ContentFile(pdf.data), save=False)
        document.save()
        audit.record(
            actor=by,
            action=f"document.{kind}",
            subject=document,
            after={"sha256": digest, "version": version.pk, "pages": pdf.page_count},
        )
    return document


def engine_with_drawing(drawing: int) -> dict:
    """What produced a PDF (engine_info) and how its charts were drawn (CHART_DRAWINGS)."""
    return {**engine_info(), "drawing": drawing}


def document_drawing(document: Document) -> int:
    """How `document`'s charts were drawn: as its engine info says, or drawing 1 for a document
    archived before the drawing was recorded (inline SVG was then the only one)."""
    return document.engine.get("drawing", 1)


def document_regenerate(
    *, document: Document, by=None, duplicate: bool = False
) -> tuple[RegenerationCheck, Document | None]:
    """Re-render `document` from its archived version and data snapshot and prove the bytes are
    identical. With `duplicate`, the proven bytes are stamped DUPLICATE and archived as a file of
    their own. A mismatch is recorded, fires `regeneration_mismatch` and raises."""
    version = document.template_version
    drawing = document_drawing(document)
    rendered = render_pdf(
        sources=version_sources(version, document.language),
        locale=document.locale,
        data=document.data,
        limits=render_limits(),
        drawing=drawing,
    )
    actual = hashlib.sha256(rendered.data).hexdigest()
    with transaction.atomic():
        check = RegenerationCheck.objects.create(
            document=document,
            checked_by=by,
            matched=actual == document.sha256,
            expected_sha256=document.sha256,
            actual_sha256=actual,
            engine=engine_with_drawing(drawing),
        )
        audit.record(
            actor=by,
            action="document.regenerated" if check.matched else "document.regeneration_mismatch",
            subject=document,
            after={"expected": document.sha256, "actual": actual},
        )
    if not check.matched:
        logger.error(
            "regeneration mismatch for document %s: %s != %s", document.pk, actual, document.sha256
        )
        signals.regeneration_mismatch.send(sender=Document, document=document, check=check)
        raise RegenerationMismatch(check)
    copy = None
    if duplicate:
        copy = _archive(
            version=version,
            language=document.language,
            locale=document.locale,
            data=document.data,
            pdf=RenderedPdf(
                data=stamp(rendered.data, DUPLICATE_MARK), page_count=rendered.page_count
            ),
            kind=DocumentKind.DUPLICATE,
            by=by,
            drawing=drawing,
            original=document,
        )
    return check, copy


# --- previews and proofs (nothing archived) ------------------------------------------------


@dataclass(frozen=True)
class Preview:
    pdf: RenderedPdf | None
    email: dict | None
    sms: dict | None
    push: dict | None


def template_preview(
    *,
    version: TemplateVersion,
    data: Mapping | None = None,
    language: str | None = None,
    channels: Iterable[str] | None = None,
    sample: str = "default",
    addressee: Mapping | None = None,
) -> Preview:
    """Render the version's channels from `data` (or a sample set). The PDF is marked PROOF
    unless the version is the published one. The reserved `customer` variables are
    `addressee` (a real customer's) or else the data's own `customer` block over a sample
    customer."""
    return _preview(
        bundle=version_bundle(version),
        sources=lambda lang: version_sources(version, lang),
        data=data,
        language=language,
        channels=channels,
        sample=sample,
        addressee=addressee,
        watermark=None if version.state == VersionState.PUBLISHED else PROOF_MARK,
    )


def bundle_preview(
    *,
    bundle: bundles.Bundle,
    language: str | None = None,
    channels: Iterable[str] | None = None,
    sample: str = "default",
) -> Preview:
    """template_preview for content not stored yet (the browser editor's live preview): the
    same composition, in the render worker under the same limits, PDF marked PROOF."""
    cache_key = bundles.content_hash(bundle.to_content())
    return _preview(
        bundle=bundle,
        sources=lambda lang: _sources_cache.get(
            (cache_key, lang), lambda: bundles.sources(bundle, lang)
        ),
        data=None,
        language=language,
        channels=channels,
        sample=sample,
        addressee=None,
        watermark=PROOF_MARK,
    )


def _preview(
    *,
    bundle: bundles.Bundle,
    sources: Callable[[str], Sources],
    data: Mapping | None,
    language: str | None,
    channels: Iterable[str] | None,
    sample: str,
    addressee: Mapping | None,
    watermark: str | None,
) -> Preview:
    language = _language(bundle.meta, language)
    locale = bundles.locale_for(language)
    if data is None:
        if sample not in bundle.samples:
            raise DataInvalid(f"no sample data set named {sample!r}")
        data = bundle.samples[sample]
    snapshot = data_snapshot(data)
    snapshot = with_addressee(
        snapshot, addressee if addressee is not None else sample_addressee(snapshot)
    )
    validate_data(bundle.schema, snapshot)
    available = bundle.meta.get("channels", [])
    wanted = [c for c in (channels or available) if c in available]
    out: dict[str, Any] = {"pdf": None, "email": None, "sms": None, "push": None}
    text_channels = [c for c in wanted if c != "print"]
    if text_channels:
        # Text first: it is quick, and a template that fails there fails before a PDF is made.
        (rendered,) = compose_text(
            sources=sources(language),
            locale=locale,
            items=[(snapshot, text_channels)],
            limits=compose_limits(),
        )
        if isinstance(rendered, CompositionError):
            raise rendered
        out.update(rendered)
    if "print" in wanted:
        out["pdf"] = render_pdf(
            sources=sources(language),
            locale=locale,
            data=snapshot,
            watermark=watermark,
            limits=render_limits(),
        )
    return Preview(**out)
