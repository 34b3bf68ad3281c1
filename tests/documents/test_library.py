"""The demo library, as `make run` loads it: every template signs off, renders every channel from
every sample, and regenerates byte for byte."""

from __future__ import annotations

import html
import io
import json
import re

import pypdf
import pytest

from ccm.demo import seed_users
from documents import services
from documents.bundle import read_folder
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


INCIDENT_TEMPLATES = [
    "outage_notice",
    "outage_update",
    "outage_restored",
    "water_quality_advisory",
    "planned_maintenance",
    "technician_appointment",
    "abnormal_consumption_alert",
    "maintenance_plan_offer",
]
_MESSAGE = re.compile(r'_\(\s*"((?:[^"\\]|\\.)*)"')
_PLACEHOLDER_OR_TAG = re.compile(r"\{\w+\}|<[^>]+>")


def _german_catalog(code: str) -> dict[str, str]:
    house = json.loads((LIBRARY / "_shared/house/messages/de.json").read_text())
    return {**house, **json.loads((LIBRARY / code / "messages/de.json").read_text())}


def _messages(code: str) -> set[str]:
    sources = [*(LIBRARY / code).glob("*.html"), *(LIBRARY / code).glob("*.txt")]
    return {m.group(1) for path in sources for m in _MESSAGE.finditer(path.read_text())}


def _english_fragments(code: str) -> set[str]:
    """The English words of every message German translates differently, cut at placeholders."""
    catalog = _german_catalog(code)
    fragments = set()
    for english, german in catalog.items():
        if english == german:
            continue
        for part in _PLACEHOLDER_OR_TAG.split(english):
            part = " ".join(part.split()).strip(" ,.:;()\u2013-")
            if len(part) >= 4 and part not in german:
                fragments.add(part)
    return fragments


def _german_renditions(code: str) -> dict[str, str]:
    bundle = read_folder(LIBRARY / code)
    out = {}
    for name in bundle.samples:
        preview = services.bundle_preview(bundle=bundle, language="de", sample=name)
        assert preview.sms["segments"] <= 2, (code, name, preview.sms)
        out[f"{name}/sms"] = preview.sms["text"]
        out[f"{name}/push"] = f"{preview.push['title']}\n{preview.push['body']}"
        out[f"{name}/subject"] = preview.email["subject"]
        out[f"{name}/text"] = preview.email["text"]
        out[f"{name}/html"] = html.unescape(re.sub(r"<[^>]+>", " ", preview.email["html"]))
        if preview.pdf is not None:
            reader = pypdf.PdfReader(io.BytesIO(preview.pdf.data))
            out[f"{name}/print"] = "\n".join(page.extract_text() for page in reader.pages)
    return out


@pytest.mark.parametrize("code", INCIDENT_TEMPLATES)
def test_an_incident_notice_in_german_has_no_english_left_on_any_channel(code):
    # given the template declares German and its catalog translates every message it uses
    assert "de" in read_folder(LIBRARY / code).meta["languages"]
    assert _messages(code) - set(_german_catalog(code)) == set()
    fragments = _english_fragments(code)
    # when every sample is rendered in German on every channel
    renditions = _german_renditions(code)
    # then no English sentence, label or footer of the catalog is left in any of them
    for channel, text in renditions.items():
        flat = " ".join(text.split())
        left = {f for f in fragments if re.search(rf"(?<!\w){re.escape(f)}(?!\w)", flat)}
        assert not left, (code, channel, left)
        for english in ("Dear ", "Reference ", "Registered in England", "PO Box", "Page "):
            assert english not in flat, (code, channel, english)
    assert any(channel.endswith("/print") for channel in renditions) == (
        code in {"outage_notice", "water_quality_advisory"}
    )
