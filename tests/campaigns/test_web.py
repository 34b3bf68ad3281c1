from __future__ import annotations

from notifications.campaigns.models import Campaign


def test_author_creates_a_campaign_and_sees_form_errors(client, author, segment, document_ready):
    client.force_login(author)
    # when the form is sent empty
    empty = client.post("/campaigns/new/", {})
    # then every missing field is named, tied to its control
    assert empty.status_code == 400
    html = empty.content.decode()
    assert "Name the campaign." in html
    assert "Choose the segment to send to." in html
    assert 'aria-invalid="true"' in html
    # when it is filled in
    created = client.post(
        "/campaigns/new/",
        {
            "name": "Rate change",
            "template": "document_ready",
            "segment": segment.pk,
            "category": "regulatory",
            "data_source": "attributes",
            "throttle": '{"email": 600}',
        },
    )
    campaign = Campaign.objects.get()
    assert created.status_code == 302
    assert created["Location"] == f"/campaigns/{campaign.pk}/"
    assert campaign.throttle == {"email": 600}


def test_campaign_page_tells_the_story_and_refuses_a_wrong_move(client, ops, approved):
    client.force_login(ops)
    page = client.get(f"/campaigns/{approved.pk}/")
    html = page.content.decode()
    assert page.status_code == 200
    assert approved.audience_hash in html
    assert "rory at" in html  # who approved
    assert "campaign_progress.js" in html
    # resuming a campaign that is not paused is refused on the page, not a 500
    refused = client.post(f"/campaigns/{approved.pk}/resume/")
    assert refused.status_code == 409
    assert "cannot be resumed" in refused.content.decode()
    listed = client.get("/campaigns/?state=approved")
    assert "Rate change" in listed.content.decode()
    assert client.get("/campaigns/?state=nonsense").status_code == 400


def test_cancel_asks_first_and_cancels_only_when_confirmed(client, ops, approved):
    client.force_login(ops)
    # when ops press Cancel with a reason
    asked = client.post(f"/campaigns/{approved.pk}/cancel/", {"reason": "Wrong rate"})
    # then a page says what will happen and carries the reason; nothing is cancelled yet
    html = asked.content.decode()
    assert asked.status_code == 200
    assert "Cancel the campaign Rate change?" in html
    assert "Why: Wrong rate" in html
    assert 'name="reason" value="Wrong rate"' in html
    assert 'name="confirm" value="yes"' in html
    approved.refresh_from_db()
    assert approved.state == "approved"
    # when they confirm on that page
    done = client.post(
        f"/campaigns/{approved.pk}/cancel/", {"reason": "Wrong rate", "confirm": "yes"}
    )
    assert done.status_code == 302
    approved.refresh_from_db()
    assert approved.state == "cancelled"
    assert approved.note == "Wrong rate"


def test_progress_json_for_the_polling_bar(client, ops, approved):
    client.force_login(ops)
    progress = client.get(f"/campaigns/{approved.pk}/progress.json").json()
    assert progress["total"] == 4
    assert progress["recipients"]["pending"] == 4


def test_agent_without_the_role_cannot_see_campaigns(client, agent, approved):
    client.force_login(agent)
    assert client.get("/campaigns/").status_code == 403


def test_author_edits_a_draft_on_its_page(client, author, segment, document_ready):
    from notifications.campaigns import services

    campaign = services.campaign_create(
        name="Rate change", template_code="document_ready", segment=segment, by=author
    )
    client.force_login(author)
    page = client.get(f"/campaigns/{campaign.pk}/")
    assert f'href="/campaigns/{campaign.pk}/edit/"' in page.content.decode()
    form = client.get(f"/campaigns/{campaign.pk}/edit/")
    assert 'value="Rate change"' in form.content.decode()
    fields = {
        "name": "Rate change, evenings",
        "template": "document_ready",
        "segment": segment.pk,
        "category": "regulatory",
        "data_source": "attributes",
        "window_start": "18",
        "window_end": "",
        "window_zone": "customer",
    }
    # a half-given window is an error at the field
    half = client.post(f"/campaigns/{campaign.pk}/edit/", fields)
    assert half.status_code == 400
    assert "Give both hours of the send window, or neither." in half.content.decode()
    saved = client.post(f"/campaigns/{campaign.pk}/edit/", {**fields, "window_end": "21"})
    assert saved.status_code == 302
    campaign.refresh_from_db()
    assert (campaign.name, campaign.window_start_hour, campaign.window_end_hour) == (
        "Rate change, evenings",
        18,
        21,
    )
    assert campaign.window_zone == "customer"
    assert (
        "in each customer's time zone" in client.get(f"/campaigns/{campaign.pk}/").content.decode()
    )


def test_the_segment_page_shows_the_campaign_sign_offs_that_cover_its_audience(
    client, ops, approved
):
    # given a campaign approved on the segment's audience
    client.force_login(ops)
    # when the segment's page is opened
    html = client.get(f"/campaigns/segments/{approved.segment_id}/").content.decode()
    # then it says who signed which exact audience of this version
    assert "A segment is not approved on its own" in html
    assert f'href="/campaigns/{approved.pk}/"' in html
    assert "by rory" in html
    assert approved.audience_hash[:16] in html
