from __future__ import annotations

import io

import pypdf
import pytest
from django.core.exceptions import PermissionDenied

from ccm import approvals
from ccm.models import AuditEvent
from documents import services, signals
from documents.bundle import BundleInvalid
from documents.composition import DataInvalid, UnknownDrawing
from documents.models import Document, RegenerationCheck, VersionState
from tests.documents.factories import letter_bundle


def pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(data)).pages)


def _publish(version, author, reviewer):
    approval = services.template_version_submit(version=version, by=author)
    approvals.approval_decide(approval=approval, by=reviewer, decision="approve")
    version.refresh_from_db()
    return services.template_version_publish(version=version, by=author)


def test_sign_off_flow_is_audited(draft, author, reviewer):
    # when the author submits, a reviewer approves, and the author publishes
    published = _publish(draft, author, reviewer)
    # then
    assert published.state == VersionState.PUBLISHED
    actions = list(AuditEvent.objects.values_list("action", flat=True))
    assert actions[-5:] == [
        "template_version.submitted",
        "approval.requested",
        "template_version.approved",
        "approval.approved",
        "template_version.published",
    ]


def test_author_cannot_approve_own_version(draft, author, make_user):
    author.groups.add(*make_user("tmp", "compliance_reviewer").groups.all())
    approval = services.template_version_submit(version=draft, by=author)
    with pytest.raises(PermissionDenied):
        approvals.approval_decide(approval=approval, by=author, decision="approve")
    draft.refresh_from_db()
    assert draft.state == VersionState.IN_REVIEW


def test_content_is_frozen_once_submitted(draft, author):
    services.template_version_submit(version=draft, by=author)
    with pytest.raises(services.VersionFrozen, match="frozen"):
        services.template_version_update(
            version=draft, bundle=letter_bundle(heading="Hi"), by=author
        )


def test_changes_requested_goes_back_to_draft(draft, author, reviewer):
    approval = services.template_version_submit(version=draft, by=author)
    approvals.approval_decide(
        approval=approval, by=reviewer, decision="request_changes", comment="Fix the tone"
    )
    draft.refresh_from_db()
    assert draft.state == VersionState.CHANGES_REQUESTED
    services.template_version_reopen(version=draft, by=author)
    updated = services.template_version_update(
        version=draft, bundle=letter_bundle(heading="Hello"), by=author
    )
    assert updated.state == VersionState.DRAFT
    assert "Hello" in updated.content["files"]["print.html"]


def test_rejected_version_cannot_be_published(draft, author, reviewer):
    approval = services.template_version_submit(version=draft, by=author)
    approvals.approval_decide(approval=approval, by=reviewer, decision="reject", comment="No")
    draft.refresh_from_db()
    from django_fsm import TransitionNotAllowed

    with pytest.raises(TransitionNotAllowed):
        services.template_version_publish(version=draft, by=author)


def test_publishing_retires_the_previous_version(published, author, reviewer, template):
    v2 = services.template_version_create(
        template=template, bundle=letter_bundle(heading="Hi"), by=author
    )
    _publish(v2, author, reviewer)
    published.refresh_from_db()
    assert published.state == VersionState.RETIRED
    assert template.published_version == v2


def test_agents_cannot_write_templates(template, agent):
    with pytest.raises(PermissionDenied):
        services.template_version_create(template=template, bundle=letter_bundle(), by=agent)


def test_invalid_bundle_lists_what_to_fix(template, author):
    bundle = letter_bundle(channels=["print", "push"], category="spam")
    with pytest.raises(BundleInvalid) as excinfo:
        services.template_version_create(template=template, bundle=bundle, by=author)
    message = str(excinfo.value)
    assert "category" in message
    assert "push.title.txt" in message


def test_compose_archives_a_real_pdf(published):
    document = services.document_compose(
        version=published,
        data={"customer": {"name": "Grace Hopper"}, "balance": 10.5, "as_of": "2026-04-02"},
    )
    data = document.file.open("rb").read()
    assert data.startswith(b"%PDF")
    text = pdf_text(data)
    assert "Dear Grace Hopper" in text
    assert "£10.50" in text
    assert "Terms and conditions" in text  # the static insert is merged in
    assert document.page_count == 2
    assert len(document.sha256) == 64
    assert document.engine["weasyprint"]


def test_compose_in_german_uses_the_variant_and_locale(published):
    document = services.document_compose(
        version=published,
        data={"customer": {"name": "Emmy Noether"}, "balance": 1234.5, "as_of": "2026-04-02"},
        language="de",
    )
    text = pdf_text(document.file.open("rb").read())
    assert "Hallo Emmy Noether" in text
    assert "1.234,50" in text


def test_missing_data_fails_with_every_field_and_archives_nothing(published):
    failures = []
    signals.composition_failed.connect(
        lambda **kw: failures.append(kw), weak=False, dispatch_uid="t"
    )
    try:
        with pytest.raises(DataInvalid) as excinfo:
            services.document_compose(version=published, data={"customer": {}, "balance": "x"})
    finally:
        signals.composition_failed.disconnect(dispatch_uid="t")
    fields = {e.field for e in excinfo.value.errors}
    # (the customer block is the addressee's, never missing: a sample customer in a proof)
    assert {"balance", "as_of"} <= fields
    assert not Document.objects.exists()
    assert len(failures) == 1


def test_regeneration_is_byte_identical_and_recorded(published):
    document = services.document_compose(
        version=published, data=published.content["samples"]["default"]
    )
    check, copy = services.document_regenerate(document=document)
    assert check.matched
    assert check.actual_sha256 == document.sha256
    assert copy is None
    assert RegenerationCheck.objects.filter(document=document, matched=True).count() == 1


def test_a_document_records_how_its_charts_were_drawn(published):
    document = services.document_compose(
        version=published, data=published.content["samples"]["default"]
    )

    assert document.engine["drawing"] == 2
    check, copy = services.document_regenerate(document=document, duplicate=True)
    assert check.engine["drawing"] == copy.engine["drawing"] == 2


def test_a_document_drawn_in_an_unknown_way_is_not_regenerated(published):
    # given a document archived by a CCM that draws charts in a way this one does not know
    document = services.document_compose(
        version=published, data=published.content["samples"]["default"]
    )
    Document.objects.filter(pk=document.pk).update(engine={**document.engine, "drawing": 9})
    document.refresh_from_db()

    # when it is regenerated, it is refused with the reason, and nothing is recorded
    with pytest.raises(UnknownDrawing, match="chart drawing 9 is unknown"):
        services.document_regenerate(document=document, duplicate=True)
    assert not RegenerationCheck.objects.exists()
    assert Document.objects.count() == 1


def test_duplicate_is_stamped_and_stored_as_its_own_file(published):
    document = services.document_compose(
        version=published, data=published.content["samples"]["default"]
    )
    _, copy = services.document_regenerate(document=document, duplicate=True)
    assert copy.kind == "duplicate"
    assert copy.original == document
    assert copy.file.name != document.file.name
    assert copy.sha256 != document.sha256
    assert "DUPLICATE" in pdf_text(copy.file.open("rb").read())
    assert "DUPLICATE" not in pdf_text(document.file.open("rb").read())


def test_regeneration_mismatch_is_an_alarm_not_a_new_file(published):
    # given an archive entry whose recorded hash is not what its inputs give
    document = services.document_compose(
        version=published, data=published.content["samples"]["default"]
    )
    Document.objects.filter(pk=document.pk).update(sha256="0" * 64)
    document.refresh_from_db()
    alarms = []
    signals.regeneration_mismatch.connect(
        lambda **kw: alarms.append(kw), weak=False, dispatch_uid="t"
    )
    try:
        with pytest.raises(services.RegenerationMismatch):
            services.document_regenerate(document=document, duplicate=True)
    finally:
        signals.regeneration_mismatch.disconnect(dispatch_uid="t")
    assert Document.objects.count() == 1  # no duplicate was made from unproven bytes
    assert RegenerationCheck.objects.get().matched is False
    assert AuditEvent.objects.filter(action="document.regeneration_mismatch").exists()
    assert len(alarms) == 1


def test_preview_of_a_draft_is_marked_proof(draft):
    preview = services.template_preview(version=draft)
    assert "PROOF" in pdf_text(preview.pdf.data)
    assert preview.email["subject"] == "Your balance, Ada Lovelace"
    assert preview.sms["segments"] == 1
    assert preview.push is None  # the template has no push rendition
