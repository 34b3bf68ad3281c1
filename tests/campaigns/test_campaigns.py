from __future__ import annotations

import pytest
from django.core import mail
from django.core.exceptions import PermissionDenied

from ccm import approvals
from ccm.models import AuditEvent
from notifications.campaigns import selectors
from notifications.campaigns import services as campaigns
from notifications.campaigns.models import CampaignRecipient
from notifications.customers import services as customer_services
from notifications.models import Communication, Customer
from notifications.pipeline.content import addressee_of, intake_data_validate
from tests.campaigns.conftest import make_customer, sent_after_a_lost_commit


def test_segment_compiles_filters_includes_and_excludes(mortgage_customers, admin_user, author):
    # given two other customers: a fixed-rate one and a variable one on a list of references
    make_customer(10, admin_user, product="fixed")
    everyone_n0 = campaigns.segment_create(
        name="N0", definition={"postcode_prefixes": ["n0"]}, by=author
    )
    definition = {
        "attributes": {"product": ["variable_mortgage", "fixed"]},
        "exclude": [everyone_n0.pk],
    }
    # when
    refs = sorted(selectors.segment_customers(definition).values_list("external_ref", flat=True))
    listed = selectors.segment_customers({"references": ["M-001", "M-010"]})
    # then the N0 postcodes (even numbers) are excluded, the fixed one is included
    assert refs == ["M-001", "M-003"]
    assert sorted(listed.values_list("external_ref", flat=True)) == ["M-001", "M-010"]


def test_a_bad_definition_is_refused_with_every_reason(author):
    with pytest.raises(campaigns.CampaignError) as caught:
        campaigns.segment_create(
            name="x", definition={"lnguages": ["en"], "include": [999]}, by=author
        )
    assert caught.value.errors[0]["errors"] == [
        "Unknown filter 'lnguages'; use one of attributes, consent, exclude, include, languages, "
        "postcode_prefixes, references, source_systems, tags.",
        "include names segments that do not exist: [999].",
    ]


def test_preview_breakdown_matches_selection_per_customer(mortgage_customers, admin_user):
    # given one customer with no email but a postal address, and one nobody can reach
    customer_services.customer_upsert(
        external_ref="M-100", name="Paper", postal_address=["1 Lane", "N1 1AA"], by=admin_user
    )
    customer_services.customer_upsert(external_ref="M-101", name="Ghost", by=admin_user)
    for ref in ("M-100", "M-101"):
        customer = Customer.objects.get(external_ref=ref)
        campaigns.customer_attributes_set(
            customer=customer, attributes={"product": "variable_mortgage"}, by=admin_user
        )
    # when
    preview = selectors.segment_preview(
        {"attributes": {"product": "variable_mortgage"}},
        category="regulatory",
        renditions=["email", "print"],
    )
    # then
    assert preview.count == 6
    assert preview.breakdown.combinations == {"email": 4, "print": 1, "none": 1}
    assert preview.breakdown.unreachable == 1
    assert [c.external_ref for c in preview.sample][:2] == ["M-000", "M-001"]


def test_submit_freezes_audience_and_reviewer_signs_it(
    campaign_factory, mortgage_customers, author
):
    campaign = campaign_factory()
    # when
    approval = campaigns.campaign_submit(campaign=campaign, by=author)
    # then
    campaign.refresh_from_db()
    assert campaign.state == "in_review"
    assert campaign.audience_count == 4
    assert campaign.audience_hash == campaigns.recipients_hash(campaign)
    assert len(campaign.audience_hash) == 64
    assert campaign.channel_plan["channels"] == {"email": 4}
    assert campaign.segment_snapshot["definition"] == {
        "attributes": {"product": "variable_mortgage"}
    }
    assert approval.state == "pending"
    submitted = AuditEvent.objects.get(action="campaign.submitted")
    assert submitted.after["audience_hash"] == campaign.audience_hash
    data = CampaignRecipient.objects.get(campaign=campaign, customer__external_ref="M-002").data
    assert data["customer"] == {"name": "Customer 2", "reference": "M-002"}


def test_author_cannot_approve_own_campaign(campaign_factory, mortgage_customers, make_user):
    from ccm.roles import Role

    # given an author who is also a reviewer
    both = make_user("both", Role.TEMPLATE_AUTHOR, Role.COMPLIANCE_REVIEWER)
    campaign = campaign_factory(by=both)
    approval = campaigns.campaign_submit(campaign=campaign, by=both)
    # then
    with pytest.raises(PermissionDenied):
        approvals.approval_decide(approval=approval, by=both, decision="approve")
    campaign.refresh_from_db()
    assert campaign.state == "in_review"


def test_bad_csv_rows_are_all_listed_and_nothing_is_frozen(
    campaign_factory, mortgage_customers, author
):
    csv_text = (
        "customer_ref,customer.name,reference,document_title,document_date\n"
        "M-000,Ann,D1,Rate change,2026-04-12\n"
        "M-001,Bob,D2,,2026-04-12\n"
        "M-999,Zed,D3,Rate change,2026-04-12\n"
    )
    campaign = campaign_factory(data_source="csv", data_csv=csv_text)
    with pytest.raises(campaigns.CampaignError) as caught:
        campaigns.campaign_submit(campaign=campaign, by=author)
    problems = {(e["row"], e["reference"]) for e in caught.value.errors}
    assert (4, "M-999") in problems  # not in the segment
    assert (None, "M-002") in problems
    assert (None, "M-003") in problems
    assert (None, "M-001") in problems  # no document title
    # and the template's own `reference` field is data, not the customer's key
    assert not any(ref == "M-000" for _, ref in problems)
    assert CampaignRecipient.objects.count() == 0
    campaign.refresh_from_db()
    assert campaign.state == "draft"


def test_audience_is_frozen_and_an_opt_out_is_skipped_with_reason(
    approved, admin_user, ops, sync_tasks
):
    # given a customer who joins the segment after approval
    make_customer(50, admin_user)
    # and a marketing-style opt-out is irrelevant to a regulatory notice, but an unreachable
    # customer (their email removed) is not sent, with the reason: the pipeline's selection
    # (the one that chooses every message's channels) finds nobody to send to
    customer = Customer.objects.get(external_ref="M-003")
    customer.contacts.update(valid=False)
    # when
    sync_tasks(campaigns.campaign_schedule, campaign=approved, by=ops)
    # then
    approved.refresh_from_db()
    assert approved.state == "completed"
    recipients = {
        r.customer.external_ref: r for r in approved.recipients.select_related("customer")
    }
    assert set(recipients) == {"M-000", "M-001", "M-002", "M-003"}
    unreachable = recipients["M-003"]
    assert unreachable.communication.state == "undeliverable"
    reasons = selectors.unreached(approved)
    assert list(reasons) == [unreachable.pk]
    assert reasons[unreachable.pk].startswith("unreachable: email: no valid email address; ")
    sent_to = sorted(m.to[0].split("<")[1].rstrip(">") for m in mail.outbox)
    assert sent_to == ["c0@example.org", "c1@example.org", "c2@example.org"]
    # one communication per customer of the frozen audience, none for the newcomer
    assert Communication.objects.filter(source="campaign").count() == 4


def test_marketing_opt_out_after_approval_is_skipped(
    campaign_factory, mortgage_customers, author, reviewer2, ops, admin_user, sync_tasks
):
    # given every customer opted in to marketing email
    for customer in mortgage_customers:
        customer_services.consent_record(
            customer=customer,
            channel="email",
            category="marketing",
            granted=True,
            legal_basis="consent",
            source="form",
            by=admin_user,
        )
    campaign = campaign_factory(category="marketing")
    approval = campaigns.campaign_submit(campaign=campaign, by=author)
    approvals.approval_decide(approval=approval, by=reviewer2, decision="approve")
    # when one opts out after approval
    customer_services.consent_record(
        customer=mortgage_customers[1],
        channel="email",
        category="marketing",
        granted=False,
        legal_basis="consent",
        source="unsubscribe",
        by=admin_user,
    )
    campaign.refresh_from_db()
    sync_tasks(campaigns.campaign_schedule, campaign=campaign, by=ops)
    # then
    opted_out = CampaignRecipient.objects.get(campaign=campaign, customer=mortgage_customers[1])
    assert opted_out.communication.state == "undeliverable"
    reasons = selectors.unreached(campaign)
    assert list(reasons) == [opted_out.pk]
    assert reasons[opted_out.pk].startswith("opted out of marketing since approval")
    assert len(mail.outbox) == 3


def test_running_the_send_twice_gives_one_communication_per_customer(approved, ops, sync_tasks):
    # given a crash after the first chunk: its communications exist, the recipients were not
    # marked (as if the commit of the recipients' rows was lost); when the task runs again, twice
    sent_after_a_lost_commit(approved, ops=ops, run=sync_tasks)
    # then
    approved.refresh_from_db()
    assert approved.state == "completed"
    assert Communication.objects.filter(source="campaign").count() == 4
    assert len(mail.outbox) == 4
    handed = CampaignRecipient.objects.filter(campaign=approved, state="handed")
    assert handed.count() == 4
    assert set(handed.values_list("communication__idempotency_key", flat=True)) == {
        f"campaign:{approved.pk}:{pk}" for pk in handed.values_list("customer_id", flat=True)
    }


def test_pause_stops_further_chunks_and_resume_finishes(approved, ops, settings, sync_tasks):
    settings.CCM_BULK_CHUNK = 1
    settings.CCM_CAMPAIGN_HANDOFF_CHUNKS = 1
    campaigns.campaign_schedule(campaign=approved, by=ops)
    campaigns.campaign_start(approved.pk)
    sync_tasks(campaigns.campaign_chunk_send, approved.pk)
    # when operations pause it
    campaigns.campaign_pause(campaign=approved, by=ops, reason="Call centre overloaded")
    outcome = campaigns.campaign_chunk_send(approved.pk)
    # then nothing more is handed
    assert outcome.handed == 0
    assert CampaignRecipient.objects.filter(campaign=approved, state="handed").count() == 1
    approved.refresh_from_db()
    progress = selectors.campaign_progress(approved)
    assert progress["recipients"]["pending"] == 3
    assert progress["state"] == "paused"
    # and resuming finishes the rest
    sync_tasks(campaigns.campaign_resume, campaign=approved, by=ops)
    approved.refresh_from_db()
    assert approved.state == "completed"
    assert Communication.objects.filter(source="campaign").count() == 4


def test_cancel_skips_everyone_still_waiting(approved, ops):
    campaigns.campaign_schedule(campaign=approved, by=ops)
    campaigns.campaign_start(approved.pk)
    campaigns.campaign_cancel(campaign=approved, by=ops, reason="Wrong rate")
    approved.refresh_from_db()
    assert approved.state == "cancelled"
    assert set(approved.recipients.values_list("state", flat=True)) == {"skipped"}
    assert campaigns.campaign_chunk_send(approved.pk).handed == 0


def test_a_changed_published_version_pauses_the_campaign(approved, ops, author, reviewer):
    from documents import services as documents
    from documents.bundle import read_folder
    from documents.demo import LIBRARY

    version = documents.template_version_create(
        template=approved.template_version.template,
        bundle=read_folder(LIBRARY / "document_ready"),
        by=author,
    )
    approval = documents.template_version_submit(version=version, by=author)
    approvals.approval_decide(approval=approval, by=reviewer, decision="approve")
    version.refresh_from_db()
    documents.template_version_publish(version=version, by=author)
    campaigns.campaign_schedule(campaign=approved, by=ops)
    campaigns.campaign_start(approved.pk)
    # when
    campaigns.campaign_chunk_send(approved.pk)
    # then
    approved.refresh_from_db()
    assert approved.state == "paused"
    assert "no longer the published one" in approved.note
    assert Communication.objects.count() == 0


def test_nothing_is_handed_outside_the_send_window(
    campaign_factory, mortgage_customers, author, reviewer2, ops
):
    from django.utils import timezone

    hour = timezone.localtime().hour
    campaign = campaign_factory(window=((hour + 1) % 24, (hour + 2) % 24))
    approval = campaigns.campaign_submit(campaign=campaign, by=author)
    approvals.approval_decide(approval=approval, by=reviewer2, decision="approve")
    campaigns.campaign_schedule(campaign=campaign, by=ops)
    campaigns.campaign_start(campaign.pk)
    # when a chunk runs outside the window
    outcome = campaigns.campaign_chunk_send(campaign.pk)
    # then nothing went, and the campaign still waits to send
    campaign.refresh_from_db()
    assert (outcome.handed, campaign.state) == (0, "sending")
    assert Communication.objects.count() == 0
    # and inside the window it goes
    campaign.window_start_hour, campaign.window_end_hour = hour, (hour + 1) % 24
    campaign.save(update_fields=["window_start_hour", "window_end_hour"])
    assert campaigns.campaign_chunk_send(campaign.pk).handed == 4


def test_a_tampered_audience_cannot_be_approved(
    campaign_factory, mortgage_customers, author, reviewer2
):
    campaign = campaign_factory()
    approval = campaigns.campaign_submit(campaign=campaign, by=author)
    # given a data row changed behind the reviewer's back
    CampaignRecipient.objects.filter(customer=mortgage_customers[0]).update(data={"x": 1})
    # then approving is refused and the campaign stays in review
    with pytest.raises(approvals.ApprovalConflict):
        approvals.approval_decide(approval=approval, by=reviewer2, decision="approve")
    campaign.refresh_from_db()
    assert campaign.state == "in_review"


@pytest.mark.parametrize("small_segment", [100_000, 0])
def test_breakdown_is_the_same_by_lookup_or_by_scan(
    mortgage_customers, admin_user, monkeypatch, small_segment
):
    # given a customer who also has a phone, and one whose email is suppressed
    customer_services.customer_upsert(
        external_ref="M-000", name="Customer 0", phones=["07911 123456"], by=admin_user
    )
    from notifications.models import Suppression

    Suppression.objects.create(channel="email", address="c1@example.org", reason="hard_bounce")
    monkeypatch.setattr(selectors, "SMALL_SEGMENT", small_segment)
    # when
    breakdown = selectors.channel_breakdown(
        selectors.segment_customers({"attributes": {"product": "variable_mortgage"}}),
        category="service",
        renditions=["email", "sms"],
    )
    # then
    assert breakdown.combinations == {"email": 3, "none": 1}
    assert breakdown.channels == {"email": 3}
    assert breakdown.unreachable == 1


def test_a_csv_without_the_customer_ref_column_says_so(
    campaign_factory, mortgage_customers, author
):
    campaign = campaign_factory(
        data_source="csv", data_csv="reference,document_title\nM-000,Rate change\n"
    )
    with pytest.raises(campaigns.CampaignError) as caught:
        campaigns.campaign_submit(campaign=campaign, by=author)
    assert caught.value.errors == [
        {
            "row": 1,
            "reference": "",
            "errors": ["The CSV needs a customer_ref column (the customer's reference)."],
        }
    ]


def test_a_window_in_customers_time_zones_sends_to_each_in_their_own_hours(
    campaign_factory, mortgage_customers, author, reviewer2, ops, admin_user
):
    from zoneinfo import ZoneInfo

    from django.utils import timezone

    # given one customer in Tokyo; the others have no zone (the business's, UTC here)
    customer_services.customer_upsert(
        external_ref="M-002", name="Customer 2", time_zone="Asia/Tokyo", by=admin_user
    )
    tokyo_hour = timezone.now().astimezone(ZoneInfo("Asia/Tokyo")).hour
    campaign = campaign_factory(window=(tokyo_hour, (tokyo_hour + 1) % 24), window_zone="customer")
    approval = campaigns.campaign_submit(campaign=campaign, by=author)
    approvals.approval_decide(approval=approval, by=reviewer2, decision="approve")
    campaigns.campaign_schedule(campaign=campaign, by=ops)
    campaigns.campaign_start(campaign.pk)
    # when chunks run now, when it is that hour in Tokyo but not in UTC
    first = campaigns.campaign_chunk_send(campaign.pk)
    second = campaigns.campaign_chunk_send(campaign.pk)
    # then only the Tokyo customer was sent to; the others wait for their own window
    campaign.refresh_from_db()
    assert (first.handed, second.handed, campaign.state) == (1, 0, "sending")
    assert list(Communication.objects.values_list("customer__external_ref", flat=True)) == ["M-002"]
    waiting = CampaignRecipient.objects.filter(campaign=campaign, state="pending")
    assert sorted(waiting.values_list("time_zone", flat=True)) == ["UTC"] * 3


def test_the_business_window_still_holds_everyone(campaign_factory, mortgage_customers, author):
    from zoneinfo import ZoneInfo

    from django.utils import timezone

    tokyo_hour = timezone.now().astimezone(ZoneInfo("Asia/Tokyo")).hour
    campaign = campaign_factory(window=(tokyo_hour, (tokyo_hour + 1) % 24))
    assert campaign.window_zone == "business"
    assert not campaigns.in_send_window(campaign, timezone.now())
    assert campaigns.in_send_window(campaign, timezone.now(), "Asia/Tokyo")


def test_a_draft_is_edited_and_the_next_submission_freezes_the_edit(
    campaign_factory, mortgage_customers, author, reviewer2
):
    campaign = campaign_factory()
    # when the author narrows the segment and sets a window before submitting
    narrow = campaigns.segment_create(
        name="Two", definition={"references": ["M-000", "M-001"]}, by=author
    )
    campaigns.campaign_update(
        campaign=campaign, by=author, name="Rate change (two)", segment=narrow, window=(8, 20)
    )
    campaigns.campaign_submit(campaign=campaign, by=author)
    # then what is frozen is the edit, and the edit is in the audit trail
    campaign.refresh_from_db()
    assert (campaign.name, campaign.audience_count) == ("Rate change (two)", 2)
    assert (campaign.window_start_hour, campaign.window_end_hour) == (8, 20)
    edited = AuditEvent.objects.get(action="campaign.edited")
    assert edited.before["segment"] != edited.after["segment"] == narrow.pk
    # and a submitted campaign cannot be edited
    with pytest.raises(campaigns.CampaignError, match="in review cannot be edited"):
        campaigns.campaign_update(campaign=campaign, by=author, name="Sneaky")


def test_an_edit_with_bad_settings_changes_nothing(campaign_factory, author):
    campaign = campaign_factory()
    with pytest.raises(campaigns.CampaignError) as caught:
        campaigns.campaign_update(campaign=campaign, by=author, window=(9, 9), throttle={"fax": 10})
    reasons = caught.value.errors[0]["errors"]
    assert reasons[0].startswith("throttle for 'fax': give a channel of email, sms")
    assert reasons[1] == "The send window is two different hours of the day, 0 to 23."
    campaign.refresh_from_db()
    assert (campaign.window_start_hour, campaign.throttle) == (None, {})


def test_a_frozen_row_skips_the_schema_but_not_the_identity_check(
    document_ready, mortgage_customers
):
    from documents.composition import DataInvalid

    customer = mortgage_customers[0]
    addressee = addressee_of(customer)
    incomplete = {"reference": "DOC-1"}  # no document_title, document_date
    # a row not yet checked against this version is refused by the schema
    with pytest.raises(DataInvalid):
        intake_data_validate(document_ready, incomplete, addressee=addressee)
    # a row the campaign froze after checking it against this very version is not re-checked
    intake_data_validate(
        document_ready, incomplete, addressee=addressee, validated_for=document_ready
    )


def test_a_frozen_row_still_has_its_identity_checked(author, reviewer, mortgage_customers):
    from documents.bundle import read_folder
    from documents.composition import DataInvalid
    from documents.demo import LIBRARY
    from tests.notifications.conftest import publish

    bundle = read_folder(LIBRARY / "rate_change_notice")
    version = publish(bundle, author=author, reviewer=reviewer)
    [(field, _)] = [
        (name, spec)
        for name, spec in bundle.schema["properties"].items()
        if spec.get("x-ccm-identity") == "reference"
    ]
    data = {**bundle.samples[next(iter(bundle.samples))], field: "SOMEONE-ELSE"}
    # when the data names another customer, validated or not, the intake refuses it
    with pytest.raises(DataInvalid, match="does not belong to customer M-000"):
        intake_data_validate(
            version,
            data,
            addressee=addressee_of(mortgage_customers[0]),
            validated_for=version,
        )


def test_a_sampled_breakdown_is_scaled_to_the_exact_count():
    sampled = selectors.Breakdown(
        total=3, channels={"email": 2}, combinations={"email": 2, "none": 1}, unreachable=1
    )
    estimate = sampled.scaled_to(10)
    assert estimate.as_dict() == {
        "total": 10,
        "channels": {"email": 7},
        "combinations": {"email": 7, "none": 3},
        "unreachable": 3,
        "estimated": True,
        "sampled": 3,
    }


@pytest.mark.parametrize("sample_customers", [40, 20])
def test_a_large_segments_preview_counts_exactly_and_estimates_the_breakdown(
    mortgage_customers, admin_user, monkeypatch, sample_customers
):
    # given a segment "larger" than previews break down exactly, on a 40-customer table
    for i in range(4, 10):
        make_customer(i, admin_user, email=i % 2 == 0)
    monkeypatch.setattr(selectors, "_customers_estimate", lambda: 40)
    monkeypatch.setattr(selectors, "ESTIMATE_ABOVE", 2)
    monkeypatch.setattr(selectors, "SAMPLE_CUSTOMERS", sample_customers)
    # when (a sample of every page (40 of 40), or of half of them: all or none of this table)
    preview = selectors.segment_preview(
        {"attributes": {"product": "variable_mortgage"}},
        category="regulatory",
        renditions=["email"],
    )
    # then the count is exact and the breakdown adds up to it
    assert preview.count == 10
    assert sum(preview.breakdown.combinations.values()) == 10
    if preview.breakdown.estimated:
        assert preview.breakdown.combinations == {"email": 7, "none": 3}
        assert preview.breakdown.sampled == 10
    else:  # nobody on the sampled pages: broken down exactly instead
        assert preview.breakdown.combinations == {"email": 7, "none": 3}


def test_freezing_reads_the_customers_once_however_many_there_are(
    campaign_factory, mortgage_customers, admin_user, author
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def statements_to_submit() -> int:
        campaign = campaign_factory()
        with CaptureQueriesContext(connection) as captured:
            campaigns.campaign_submit(campaign=campaign, by=author)
        return len(captured.captured_queries)

    # given the four mortgage customers, then six more
    four = statements_to_submit()
    for i in range(4, 10):
        make_customer(i, admin_user)
    # then checking each row against its addressee reads nothing per customer
    assert statements_to_submit() == four
