"""A reviewer signs a campaign off on its frozen audience; its progress bar moves while it
sends, without reloading the page."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from playwright.sync_api import Page, expect

from notifications.campaigns import services as campaigns
from notifications.campaigns.models import Campaign
from tests.campaigns import conftest as campaign_fixtures

# The campaign fixtures, shared with tests/campaigns (pytest finds fixtures by module name).
campaign_factory = campaign_fixtures.campaign_factory
document_ready = campaign_fixtures.document_ready
mortgage_customers = campaign_fixtures.mortgage_customers
segment = campaign_fixtures.segment


def test_reviewer_approves_a_campaign_and_its_progress_moves(
    page: Page, login, author, reviewer, ops, campaign_factory, mortgage_customers, sync_tasks
):
    campaign = campaign_factory()
    approval = campaigns.campaign_submit(campaign=campaign, by=author)
    # given the reviewer opens the approval: the proof shows the frozen audience
    login(reviewer)
    page.goto(f"/review/{approval.pk}/")
    expect(page.locator("#audience-hash")).to_have_text(Campaign.objects.get().audience_hash)
    expect(page.locator("#audience-count")).to_have_text("4")
    expect(page.locator("#channel-plan")).to_contain_text("email")
    # when they approve
    page.get_by_role("radio", name="Approve").check()
    page.get_by_role("button", name="Record decision").click()
    expect(page.get_by_role("status")).to_contain_text("Approved")
    campaign.refresh_from_db()
    assert campaign.state == "approved"
    # and operations schedule it for later; the page shows nothing sent yet
    campaigns.campaign_schedule(campaign=campaign, by=ops, at=timezone.now() + timedelta(hours=1))
    page.goto(f"/campaigns/{campaign.pk}/")
    expect(page.locator("#progress-done")).to_have_text("0")
    expect(page.locator("#approved-by")).to_contain_text("rita")
    # when its time comes and it sends
    Campaign.objects.filter(pk=campaign.pk).update(schedule_at=timezone.now())
    sync_tasks(campaigns.campaign_send, campaign.pk)
    # then the bar moves on the open page, without a reload
    expect(page.locator("#progress-done")).to_have_text("4")
    expect(page.locator("#campaign-state")).to_have_text("completed")
    assert page.locator("#progress-bar").get_attribute("value") is not None


def test_operations_pause_a_sending_campaign_and_nothing_more_is_handed(
    page: Page, login, author, reviewer2, ops, campaign_factory, mortgage_customers
):
    from ccm import approvals

    # given a campaign that is sending, nothing handed yet (its task has not run)
    campaign = campaign_factory()
    approval = campaigns.campaign_submit(campaign=campaign, by=author)
    approvals.approval_decide(approval=approval, by=reviewer2, decision="approve")
    campaigns.campaign_schedule(campaign=campaign, by=ops)
    assert campaigns.campaign_start(campaign.pk)
    # when operations pause it from its page, saying why
    login(ops)
    page.goto(f"/campaigns/{campaign.pk}/")
    page.get_by_label("Reason").first.fill("Call centre closed")
    page.get_by_role("button", name="Pause").click()
    # then the page says so and the next chunk hands nobody
    expect(page.locator("#campaign-state")).to_have_text("Paused")
    expect(page.get_by_text("Call centre closed")).to_be_visible()
    assert campaigns.campaign_chunk_send(campaign.pk).handed == 0
    campaign.refresh_from_db()
    assert campaign.state == "paused"


def test_compliance_edits_a_draft_and_a_bad_throttle_is_shown_at_its_field(
    page: Page, login, author, campaign_factory
):
    # given a draft campaign
    campaign = campaign_factory()
    login(author)
    page.goto(f"/campaigns/{campaign.pk}/")
    page.get_by_role("link", name="Edit the draft").click()
    # when the schedule, the window and a throttle the channel cannot have are entered
    page.get_by_label("Send at").fill("2030-01-15T09:30")
    page.get_by_label("Send window: from hour").fill("8")
    page.get_by_label("Send window: until hour").fill("17")
    page.get_by_label("Throttle").fill('{"email": 0}')
    page.get_by_role("button", name="Save the changes").click()
    # then the error is shown at the throttle field, tied to it, and nothing is saved
    throttle = page.get_by_label("Throttle")
    expect(throttle).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#id_throttle_error")).to_contain_text(
        "whole number of messages per minute above 0"
    )
    expect(page.get_by_role("alert")).to_contain_text("Throttle")
    campaign.refresh_from_db()
    assert (campaign.throttle, campaign.window_start_hour) == ({}, None)
    # when it is corrected (what was entered is still there) and saved
    expect(page.get_by_label("Send window: from hour")).to_have_value("8")
    throttle.fill('{"email": 600}')
    page.get_by_role("button", name="Save the changes").click()
    # then the campaign's page shows the saved draft
    expect(page).to_have_url(f"{page.url.split('/campaigns/')[0]}/campaigns/{campaign.pk}/")
    campaign.refresh_from_db()
    assert campaign.throttle == {"email": 600}
    assert (campaign.window_start_hour, campaign.window_end_hour) == (8, 17)
    assert timezone.localtime(campaign.schedule_at).strftime("%Y-%m-%d %H:%M") == (
        "2030-01-15 09:30"
    )
