"""Campaigns on the operations dashboard and in reports: the campaign's progress bar, its
reconciliation by reference, and the campaign-outcome report (PDF with charts, CSV)."""

from __future__ import annotations

import csv
import hashlib
import io
import re

import pypdf
from django.utils import timezone

from notifications.campaigns import services as campaigns
from notifications.models import Customer
from notifications.reporting.models import ReportDefinition, ReportRun
from notifications.reporting.reconciliation import Scope, reconcile
from notifications.reporting.reports import report_definition_save, report_run_request


def test_a_campaign_under_way_has_a_bar_that_links_to_its_reconciliation(
    approved, ops, settings, sync_tasks, client
):
    # given a campaign that handed one of its four recipients, then was paused
    settings.CCM_BULK_CHUNK = 1
    settings.CCM_CAMPAIGN_HANDOFF_CHUNKS = 1
    campaigns.campaign_schedule(campaign=approved, by=ops)
    campaigns.campaign_start(approved.pk)
    sync_tasks(campaigns.campaign_chunk_send, approved.pk)
    campaigns.campaign_pause(campaign=approved, by=ops, reason="Call centre overloaded")
    # when the dashboard asks for the work in progress
    client.force_login(ops)
    body = client.get("/ops/progress.json").json()
    # then the campaign is there at 25 %
    [work] = [w for w in body["work"] if w["kind"] == "campaign"]
    assert (work["label"], work["state"], work["done"], work["total"], work["percent"]) == (
        "Campaign Rate change",
        "paused",
        1,
        4,
        25.0,
    )
    assert work["url"] == f"/campaigns/{approved.pk}/"
    assert f"reference=campaign%3A{approved.pk}" in work["reconcile_url"]
    # and the dashboard draws its bar
    page = client.get("/ops/").content.decode()
    assert re.search(r'<progress max="100" value="25" aria-label="Campaign Rate change">', page)
    # and the campaign's page links to the same reconciliation
    detail = client.get(f"/campaigns/{approved.pk}/").content.decode()
    assert f"/ops/reconciliation/?reference=campaign%3A{approved.pk}&amp;start=" in detail
    # and its reconciliation accounts for the one communication
    recon = client.get(work["reconcile_url"])
    assert recon.status_code == 200
    assert "Every communication is accounted for." in recon.content.decode()


def test_the_campaign_outcome_report_tells_what_became_of_each_audience(approved, ops, sync_tasks):
    # given a campaign sent today to four customers, one of whom could not be reached
    Customer.objects.get(external_ref="M-003").contacts.update(valid=False)
    sync_tasks(campaigns.campaign_schedule, campaign=approved, by=ops)
    approved.refresh_from_db()
    assert approved.state == "completed"
    definition = report_definition_save(
        definition=ReportDefinition(
            name="Campaign outcomes today",
            kind="campaign_outcome",
            period="today",
            recipients=[],
            skip_if_empty=True,
        ),
        by=ops,
    )
    # when it is run
    sync_tasks(report_run_request, definition=definition, by=ops)
    # then the run succeeded with a PDF that reads as the campaign's outcome
    run = ReportRun.objects.get()
    assert run.state == "succeeded", run.error
    assert run.summary["campaigns"] == 1
    pdf = run.pdf_file.read()
    assert hashlib.sha256(pdf).hexdigest() == run.pdf_sha256
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    text = "\n".join(page.extract_text() for page in reader.pages)
    today = timezone.localdate()
    assert f"Campaign outcome: {today:%d %b %Y}" in text
    assert "Rate change" in text
    assert "What became of each campaign" in text  # the chart's title
    assert "unreachable" in text  # why the fourth customer got nothing
    assert re.search(r"4\s+customers in their\s+audiences", text)
    assert re.search(r"every item\s+accounted\s+for", text)
    # and a CSV with one line per campaign
    [row] = list(csv.DictReader(io.StringIO(run.csv_file.read().decode())))
    # (the unreachable customer's communication is undeliverable: the pipeline's selection,
    # the one that chooses every message's channels, found none)
    assert (row["campaign"], row["audience"], row["handed"], row["skipped"]) == (
        "Rate change",
        "4",
        "4",
        "0",
    )
    assert (row["requested"], row["reconciled"]) == ("4", "yes")
    # which matches reconciling the campaign by its reference
    result = reconcile(Scope(start=today, end=today, reference=approved.reference))
    assert result["lines"][0]["total"]["count"] == 4
    parts = {p["label"]: p["count"] for p in result["lines"][2]["parts"]}
    assert parts["Undeliverable (no channel)"] == 1
    assert result["balanced"]


def test_a_campaign_outcome_report_takes_only_a_campaign_filter(db):
    import pytest
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as caught:
        report_definition_save(
            definition=ReportDefinition(
                name="Bad", kind="campaign_outcome", period="yesterday", filters={"channel": "sms"}
            )
        )
    assert "use ['campaign']" in caught.value.message_dict["filters"][0]
