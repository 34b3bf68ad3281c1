"""The planned-maintenance form on the incidents screen in a real browser: a window that ends
before it starts is refused with the reason next to the field and what was typed kept; corrected,
the maintenance is scheduled and its customers told."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from playwright.sync_api import Page, expect

from cases.incidents.models import Incident, IncidentKind
from documents.bundle import read_folder
from documents.demo import LIBRARY
from notifications.channels import sms
from tests.cases.incident_fixtures import grid
from tests.notifications.conftest import publish

FORMAT = "%Y-%m-%dT%H:%M"


def test_operations_fix_a_refused_maintenance_window_at_its_field(
    page: Page, login, ops, author, reviewer, sync_tasks, settings
):
    # given a feeder with two customers and the maintenance notice published
    settings.CCM_ENABLED_CHANNELS = ["email", "sms", "push", "print"]
    publish(read_folder(LIBRARY / "planned_maintenance"), author=author, reviewer=reviewer)
    grid(devices=1, customers=2)
    sms.outbox.clear()
    start = timezone.localtime() + timedelta(days=2)
    login(ops)
    page.goto("/incidents/")
    form = page.locator("form", has=page.get_by_role("button", name="Schedule"))
    # when operations schedule a window that ends before it starts
    form.get_by_label("Title").fill("Cable jointing")
    form.get_by_label("Assets (codes, comma separated)").fill("feeder-1")
    form.get_by_label("Start").fill(start.strftime(FORMAT))
    form.get_by_label("End").fill((start - timedelta(hours=1)).strftime(FORMAT))
    form.get_by_label("Work").fill("we are jointing a new cable")
    form.get_by_role("button", name="Schedule").click()
    # then the End field says why, the others keep what was typed, and nothing is scheduled
    end = page.get_by_label("End")
    expect(end).to_have_attribute("aria-invalid", "true")
    expect(end).to_have_accessible_description("The window must end after it starts.")
    expect(page.get_by_label("Title")).to_have_value("Cable jointing")
    expect(page.get_by_label("Start")).not_to_have_attribute("aria-invalid", "true")
    assert not Incident.objects.exists()
    # when the end is corrected
    end.fill((start + timedelta(hours=3)).strftime(FORMAT))
    page.get_by_role("button", name="Schedule").click()
    # then the maintenance is scheduled and both customers are told
    expect(page.get_by_role("heading", level=1)).to_contain_text("INC-")
    incident = Incident.objects.get()
    assert incident.kind == IncidentKind.PLANNED
    assert incident.window_end - incident.window_start == timedelta(hours=3)
    assert len(sms.outbox) == 2
