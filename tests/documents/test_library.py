"""The demo library, as `make run` loads it: every template signs off, renders every channel from
every sample, and regenerates byte for byte."""

from __future__ import annotations

import io

import pypdf
import pytest

from ccm.demo import seed_users
from documents import services
from documents.demo import LIBRARY, seed_library
from documents.models import Template, VersionState

EXPECTED = {
    "monthly_statement",
    "policy_renewal",
    "payment_reminder",
    "final_demand",
    "complaint_acknowledgement",
    "complaint_interim_update",
    "complaint_final_response",
    "outage_notice",
    "outage_restored",
    "claim_decision",
    "rate_change_notice",
    "document_ready",
    "exception_alert",
    "outage_update",
    "water_quality_advisory",
    "planned_maintenance",
    "technician_appointment",
    "abnormal_consumption_alert",
    "maintenance_plan_offer",
    "usage_statement",
}


@pytest.fixture
def library(db):
    seed_users()
    seed_library()
    return Template.objects.all()


def test_the_whole_library_is_published_through_sign_off(library):
    assert {t.code for t in library} == EXPECTED
    for template in library:
        assert template.published_version is not None, template.code
        assert template.published_version.state == VersionState.PUBLISHED


def test_seeding_twice_changes_nothing(library):
    before = sorted(library.values_list("versions__pk", flat=True))
    seed_library()
    assert sorted(Template.objects.values_list("versions__pk", flat=True)) == before


def test_every_sample_renders_and_regenerates_identically(library):
    for template in library:
        version = template.published_version
        for language in version.meta.get("languages", ["en"]):
            for name, sample in version.content["samples"].items():
                preview = services.template_preview(version=version, data=sample, language=language)
                if preview.sms:
                    assert preview.sms["segments"] <= 2, (template.code, name)
                if "print" not in version.meta["channels"]:
                    continue
                document = services.document_compose(
                    version=version, data=sample, language=language
                )
                reader = pypdf.PdfReader(io.BytesIO(document.file.open("rb").read()))
                assert len(reader.pages) == document.page_count >= 1
                check, _ = services.document_regenerate(document=document)
                assert check.matched, (template.code, language, name)


def test_library_folder_has_every_template():
    assert {p.name for p in LIBRARY.iterdir() if (p / "template.json").exists()} >= EXPECTED
