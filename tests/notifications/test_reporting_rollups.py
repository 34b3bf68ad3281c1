from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime

import pytest
from django.core.management import call_command
from django.db.models import Count, Sum
from freezegun import freeze_time

from notifications.models import Communication, Delivery, DeliveryEvent
from notifications.reporting.models import DailyStat, FailureStat, ProcessingStat
from notifications.reporting.rollups import rollups_refresh
from tests.notifications.reporting_fixtures import comm_make

DAY = date(2026, 3, 10)


def at(hour: int, minute: int = 0, *, day: date = DAY) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def rollup_rows() -> list[tuple]:
    return sorted(
        DailyStat.objects.values_list(
            "day",
            "level",
            "template_id",
            "channel",
            "category",
            "source",
            "status",
            "outcome",
            "count",
        )
    )


@pytest.fixture
def a_day_of_traffic(db):
    first = comm_make(
        at=at(8), state="delivered", deliveries=(("email", "delivered"),), sent_after_s=2
    )
    # a complaint, reported twice by the provider: one complained delivery
    for event_id in ("c-1", "c-2"):
        DeliveryEvent.objects.create(
            delivery=first.deliveries.get(),
            provider="postmark",
            event_id=event_id,
            event_type="complained",
            occurred_at=at(18),
        )
    comm_make(at=at(9), state="delivered", deliveries=(("email", "delivered"),), sent_after_s=30)
    comm_make(
        at=at(10),
        state="undeliverable",
        deliveries=(("email", "bounced"),),
        sent_after_s=90,
        last_error="550 5.1.1 mailbox unknown\nremote said more",
    )
    comm_make(
        at=at(11),
        state="sent",
        template_code="statement",
        deliveries=(("email", "failed"), ("print", "bounced")),
        sent_after_s=5,
        last_error="address not known",
    )
    comm_make(at=at(12), state="compose_failed", failure_reason="data.balance is required")
    comm_make(at=at(13), state="received", source="event")
    # the day after: not part of DAY's figures
    comm_make(at=at(1, day=date(2026, 3, 11)), state="sent", deliveries=(("sms", "sent"),))


@freeze_time("2026-03-11 02:00:00")
def test_rollups_equal_the_counts_taken_from_the_rows(a_day_of_traffic):
    # when
    rollups_refresh()

    # then: communications by state on DAY
    day_comms = Communication.objects.filter(
        created_at__gte=at(0), created_at__lt=at(0, day=date(2026, 3, 11))
    )
    direct = dict(day_comms.values_list("state").annotate(n=Count("id")))
    rolled = dict(
        DailyStat.objects.filter(day=DAY, level="communication")
        .values_list("status")
        .annotate(n=Sum("count"))
    )
    assert rolled == direct
    # and deliveries by channel and state, a bounced letter named "returned"
    deliveries = Counter(
        (channel, "returned" if (channel, state) == ("print", "bounced") else state)
        for channel, state in Delivery.objects.filter(communication__in=day_comms).values_list(
            "channel", "state"
        )
    )
    rolled_deliveries = Counter(
        {
            (row.channel, row.status): row.count
            for row in DailyStat.objects.filter(day=DAY, level="delivery")
        }
    )
    assert rolled_deliveries == deliveries
    assert rolled_deliveries["print", "returned"] == 1
    # and the communication's channel and outcome is its latest delivery's
    statement = DailyStat.objects.get(day=DAY, level="communication", status="sent")
    assert (statement.channel, statement.outcome) == ("print", "returned")
    # and the event source is reported as an incident
    assert DailyStat.objects.get(day=DAY, status="received").source == "incident"
    # and the complaint counts its delivery once
    complained = DailyStat.objects.get(day=DAY, level="event")
    assert (complained.channel, complained.status, complained.count) == ("email", "complained", 1)
    # and the next day has its own rows
    assert DailyStat.objects.filter(day=date(2026, 3, 11), level="delivery").get().channel == "sms"


@freeze_time("2026-03-11 02:00:00")
def test_rollup_of_processing_times_and_failures(a_day_of_traffic):
    rollups_refresh()

    email = ProcessingStat.objects.filter(day=DAY, channel="email").aggregate(
        requested=Sum("requested"),
        dispatched=Sum("dispatched"),
        within=Sum("dispatched_within_60s"),
    )
    assert email == {"requested": 4, "dispatched": 4, "within": 3}
    # percentiles over the three letter-template emails sent after 2, 30 and 90 s
    letter = ProcessingStat.objects.get(day=DAY, channel="email", template__code="letter")
    assert letter.dispatch_p50_s == pytest.approx(30)
    assert letter.dispatch_p95_s == pytest.approx(30 + 0.9 * 60)
    whole_day = ProcessingStat.objects.get(day=DAY, template=None)
    assert (whole_day.requested, whole_day.dispatched, whole_day.dispatched_within_60s) == (6, 4, 3)
    assert whole_day.dispatch_p50_s == pytest.approx((5 + 30) / 2)
    failures = {
        (f.stage, f.channel, f.reason): f.count for f in FailureStat.objects.filter(day=DAY)
    }
    assert failures == {
        ("compose", "", "data.balance is required"): 1,
        ("delivery", "email", "550 5.1.1 mailbox unknown"): 1,
        ("delivery", "email", "address not known"): 1,
        ("delivery", "print", "address not known"): 1,
    }


def test_rerunning_a_day_gives_the_same_rows(a_day_of_traffic):
    with freeze_time("2026-03-11 02:00:00"):
        rollups_refresh()
        first = rollup_rows()
        rollups_refresh()
    assert rollup_rows() == first
    assert first


def test_a_late_bounce_is_picked_up_by_the_trailing_recompute(db):
    # given an email delivered five days ago and a letter sent ten days ago, both rolled up
    email = comm_make(
        at=at(9, day=date(2026, 3, 5)), state="delivered", deliveries=(("email", "delivered"),)
    )
    letter = comm_make(
        at=at(9, day=date(2026, 2, 28)), state="sent", deliveries=(("print", "sent"),)
    )
    with freeze_time("2026-03-06 02:00:00"):
        rollups_refresh(days=10)
    # when both bounce later, and the nightly run comes
    Delivery.objects.filter(communication=email).update(state="bounced")
    Delivery.objects.filter(communication=letter).update(state="bounced")
    with freeze_time("2026-03-10 02:00:00"):
        rollups_refresh()
    # then both days show the bounce (the letter's day is 10 days back: print settles in 14)
    statuses = set(
        DailyStat.objects.filter(level="delivery").values_list("day", "channel", "status")
    )
    assert statuses == {
        (date(2026, 3, 5), "email", "bounced"),
        (date(2026, 2, 28), "print", "returned"),
    }


def test_days_beyond_the_email_window_are_left_as_they_were(db):
    email = comm_make(
        at=at(9, day=date(2026, 3, 1)), state="delivered", deliveries=(("email", "delivered"),)
    )
    with freeze_time("2026-03-02 02:00:00"):
        rollups_refresh()
    Delivery.objects.filter(communication=email).update(state="bounced")
    with freeze_time("2026-03-10 02:00:00"):
        written = rollups_refresh()
    assert "2026-03-01" not in written
    assert DailyStat.objects.get(level="delivery").status == "delivered"


@freeze_time("2026-03-11 02:00:00")
def test_rollup_stats_command_backfills_days(a_day_of_traffic, capsys):
    call_command("rollup_stats", "--days", "3")
    out = capsys.readouterr().out
    assert "2026-03-10: " in out
    assert "Recomputed 3 days." in out
    assert DailyStat.objects.filter(day=DAY).exists()
