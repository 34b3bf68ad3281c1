from __future__ import annotations

import csv
import io
import json
import zipfile

import pytest
from pypdf import PdfReader
from rest_framework.test import APIClient

from ccm.api.auth import api_key_create
from notifications.campaigns import services as campaigns
from notifications.models import Customer

PROBLEM = "application/problem+json"


def key_client(*scopes: str) -> APIClient:
    issued = api_key_create(name="crm", scopes=list(scopes))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")
    return client


@pytest.fixture
def api(db):
    return key_client("campaigns:read", "campaigns:write", "customers:write", "customers:read")


def test_customer_attributes_are_set_and_read_through_the_customers_api(api):
    body = {"external_ref": "A-1", "name": "Ann", "attributes": {"product": "variable_mortgage"}}
    created = api.post("/api/v1/customers", body, format="json")
    assert created.status_code == 201
    assert created.json()["attributes"] == {"product": "variable_mortgage"}
    patched = api.patch("/api/v1/customers/A-1", {"attributes": {"tags": ["vip"]}}, format="json")
    assert patched.json()["attributes"] == {"tags": ["vip"]}
    assert Customer.objects.get(external_ref="A-1").attributes == {"tags": ["vip"]}


def test_a_customers_time_zone_is_an_iana_name(api):
    body = {"external_ref": "A-2", "name": "Aki", "time_zone": "Asia/Tokyo"}
    assert api.post("/api/v1/customers", body, format="json").json()["time_zone"] == "Asia/Tokyo"
    bad = api.patch("/api/v1/customers/A-2", {"time_zone": "Mars/Olympus"}, format="json")
    assert bad.status_code == 400
    assert "give an IANA name such as Europe/Berlin" in json.dumps(bad.json())
    assert Customer.objects.get(external_ref="A-2").time_zone == "Asia/Tokyo"


def test_segment_api_creates_versions_and_previews(api, mortgage_customers):
    body = {"name": "Mortgages", "definition": {"attributes": {"product": "variable_mortgage"}}}
    first = api.post("/api/v1/segments", body, format="json")
    second = api.post("/api/v1/segments", body, format="json")
    assert (first.status_code, second.json()["version"]) == (201, 2)
    preview = api.get(f"/api/v1/segments/{first.json()['id']}/preview?channels=email,print")
    assert preview.status_code == 200
    assert preview.json()["count"] == 4
    assert preview.json()["breakdown"]["combinations"] == {"email": 4}
    bad = api.post("/api/v1/segments", {"name": "x", "definition": {"nope": 1}}, format="json")
    assert bad.status_code == 422
    assert bad["Content-Type"] == PROBLEM


def test_campaign_api_lifecycle_and_refusals(api, document_ready, segment, mortgage_customers):
    created = api.post(
        "/api/v1/campaigns",
        {
            "name": "Rate change",
            "template": "document_ready",
            "segment": segment.pk,
            "category": "regulatory",
            "throttle": {"email": 600},
        },
        format="json",
    )
    assert created.status_code == 201, created.json()
    pk = created.json()["id"]
    submitted = api.post(f"/api/v1/campaigns/{pk}/submit", {}, format="json")
    assert submitted.status_code == 200
    assert submitted.json()["state"] == "in_review"
    assert submitted.json()["audience_count"] == 4
    # scheduling before approval is a conflict, not a 500
    refused = api.post(f"/api/v1/campaigns/{pk}/schedule", {}, format="json")
    assert refused.status_code == 409
    assert "in_review" in refused.json()["detail"]
    progress = api.get(f"/api/v1/campaigns/{pk}/progress")
    assert progress.json()["recipients"]["pending"] == 4


def test_a_draft_is_edited_through_the_api_until_it_is_submitted(
    api, document_ready, segment, mortgage_customers
):
    body = {"name": "Rate change", "template": "document_ready", "segment": segment.pk}
    pk = api.post("/api/v1/campaigns", body, format="json").json()["id"]
    # when the draft's window is set in customers' time zones
    edited = api.patch(
        f"/api/v1/campaigns/{pk}", {"window": [8, 20], "window_zone": "customer"}, format="json"
    )
    assert edited.status_code == 200, edited.json()
    assert (edited.json()["window_start_hour"], edited.json()["window_zone"]) == (8, "customer")
    assert edited.json()["name"] == "Rate change"  # what was not given did not change
    # a bad window is a 422 naming the problem
    bad = api.patch(f"/api/v1/campaigns/{pk}", {"window": [9, 9]}, format="json")
    assert bad.status_code == 422
    assert "two different hours" in json.dumps(bad.json())
    # once submitted, it is frozen: a 409
    api.post(f"/api/v1/campaigns/{pk}/submit", {}, format="json")
    frozen = api.patch(f"/api/v1/campaigns/{pk}", {"name": "Other"}, format="json")
    assert frozen.status_code == 409
    assert "cannot be edited" in frozen.json()["detail"]


def test_read_scope_cannot_write(db, segment, document_ready):
    reader = key_client("campaigns:read")
    response = reader.post(
        "/api/v1/campaigns",
        {"name": "x", "template": "document_ready", "segment": segment.pk},
        format="json",
    )
    assert response.status_code == 403


def test_evidence_pack_is_complete_and_byte_reproducible(api, approved, ops, sync_tasks):
    # given a finished campaign
    sync_tasks(campaigns.campaign_schedule, campaign=approved, by=ops)
    # when the pack is fetched twice
    first = api.get(f"/api/v1/campaigns/{approved.pk}/evidence")
    second = api.get(f"/api/v1/campaigns/{approved.pk}/evidence")
    # then
    assert first.status_code == 200
    assert first["Content-Type"] == "application/zip"
    assert first.content == second.content
    archive = zipfile.ZipFile(io.BytesIO(first.content))
    names = archive.namelist()
    assert {"manifest.json", "signature.json", "recipients.csv", "report.pdf"} <= set(names)
    # the approved content as the reviewer saw it, channel by channel
    content = {n for n in names if n.startswith("content/")}
    assert {n.split(".")[0] for n in content} == {"content/email", "content/sms", "content/push"}
    assert all(archive.read(n).strip() for n in content)
    rows = list(csv.DictReader(io.StringIO(archive.read("recipients.csv").decode())))
    assert [r["reference"] for r in rows] == ["M-000", "M-001", "M-002", "M-003"]
    assert {(r["channel"], r["delivery_state"]) for r in rows} == {("email", "sent")}
    assert all(r["sent_at"] for r in rows)
    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["campaign"]["audience_hash"] == approved.audience_hash
    assert manifest["campaign"]["approved_by"] == "rory"
    actions = [e["action"] for e in manifest["audit_events"]]
    assert {"campaign.submitted", "approval.approved", "campaign.completed"} <= set(actions)
    text = "".join(
        p.extract_text() for p in PdfReader(io.BytesIO(archive.read("report.pdf"))).pages
    )
    assert approved.audience_hash[:20] in text.replace("\n", "")
    assert "Rate change" in text


def test_the_evidence_pack_is_signed_and_a_changed_file_is_found(
    api, approved, ops, sync_tasks, tmp_path
):
    from django.core.management import CommandError, call_command

    from notifications.campaigns import evidence

    sync_tasks(campaigns.campaign_schedule, campaign=approved, by=ops)
    pack = api.get(f"/api/v1/campaigns/{approved.pk}/evidence").content
    # then the pack verifies as issued
    assert evidence.evidence_verify(pack) == evidence.PackCheck(True, [])
    signed = json.loads(zipfile.ZipFile(io.BytesIO(pack)).read("signature.json"))
    assert (signed["algorithm"], len(signed["signature"])) == ("HMAC-SHA256", 64)
    # when one row of the recipients is changed and the pack zipped again
    source = zipfile.ZipFile(io.BytesIO(pack))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as forged:
        for name in source.namelist():
            data = source.read(name)
            if name == "recipients.csv":
                data = data.replace(b"sent", b"bounced", 1)
            forged.writestr(name, data)
    # then the change is named, by the function and by the command
    check = evidence.evidence_verify(out.getvalue())
    assert not check.ok
    assert check.problems == ["recipients.csv: changed (SHA-256 differs from the manifest)"]
    original, forged_path = tmp_path / "pack.zip", tmp_path / "forged.zip"
    original.write_bytes(pack)
    forged_path.write_bytes(out.getvalue())
    printed = io.StringIO()
    call_command("campaign_evidence_verify", str(original), stdout=printed)
    assert printed.getvalue().strip().endswith("pack.zip: ok")
    with pytest.raises(CommandError, match="does not verify"):
        call_command("campaign_evidence_verify", str(forged_path), stdout=io.StringIO())


def test_a_pack_signed_under_another_key_is_not_taken_as_ours(api, approved, settings):
    from notifications.campaigns import evidence

    pack = api.get(f"/api/v1/campaigns/{approved.pk}/evidence").content
    settings.AUDIT_SIGNING_KEY = "k" * 40
    check = evidence.evidence_verify(pack)
    assert not check.ok
    assert "which is not configured here" in check.problems[0]


@pytest.fixture
def signing_pair(settings, tmp_path):
    """A self-signed development pair of this test's own (made on first use)."""
    settings.CCM_EVIDENCE_SIGNING_DEV_DIR = tmp_path
    settings.CCM_EVIDENCE_SIGNING_KEY = str(tmp_path / "key.pem")
    settings.CCM_EVIDENCE_SIGNING_CERT = str(tmp_path / "cert.pem")
    return tmp_path


def test_the_report_carries_a_pades_signature_made_at_completion(
    api, approved, ops, sync_tasks, signing_pair
):
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.validation import validate_pdf_signature
    from pyhanko_certvalidator import ValidationContext

    from documents import signing

    # given a finished campaign
    sync_tasks(campaigns.campaign_schedule, campaign=approved, by=ops)
    approved.refresh_from_db()
    # when its evidence is generated twice
    first = api.get(f"/api/v1/campaigns/{approved.pk}/evidence").content
    second = api.get(f"/api/v1/campaigns/{approved.pk}/evidence").content
    # then the packs are the same bytes, signature and all
    assert first == second
    archive = zipfile.ZipFile(io.BytesIO(first))
    report = archive.read("report.pdf")
    # and pyHanko validates the report's signature against the configured certificate
    [embedded] = PdfFileReader(io.BytesIO(report)).embedded_signatures
    from asn1crypto import pem, x509

    _, _, der = pem.unarmor((signing_pair / "cert.pem").read_bytes())
    status = validate_pdf_signature(
        embedded, ValidationContext(trust_roots=[x509.Certificate.load(der)])
    )
    assert (status.intact, status.valid, status.trusted) == (True, True, True)
    assert status.coverage.name == "ENTIRE_FILE"
    assert embedded.sig_object["/SubFilter"] == "/ETSI.CAdES.detached"
    assert status.signer_reported_dt == approved.completed_at.replace(microsecond=0)
    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["report_signature"]["signed_at"] == approved.completed_at.isoformat()
    assert "development evidence signing" in manifest["report_signature"]["signer"]
    # and a report changed after signing no longer verifies
    forged = report.replace(b"Rate change", b"Rate chanGe", 1)
    assert forged != report
    check = signing.pdf_signature_check(forged)
    assert check is not None
    assert not check.ok


def test_without_a_certificate_the_report_is_unsigned_and_says_so(
    api, approved, ops, sync_tasks, settings
):
    settings.CCM_EVIDENCE_SIGNING_KEY = settings.CCM_EVIDENCE_SIGNING_CERT = ""
    sync_tasks(campaigns.campaign_schedule, campaign=approved, by=ops)
    archive = zipfile.ZipFile(
        io.BytesIO(api.get(f"/api/v1/campaigns/{approved.pk}/evidence").content)
    )
    manifest = json.loads(archive.read("manifest.json"))
    assert "are not set" in manifest["report_signature"]["unsigned"]
    assert b"/ByteRange" not in archive.read("report.pdf")
