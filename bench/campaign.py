"""Campaign benchmark: segment preview at scale, campaign throughput, throttle accuracy.

    .venv/bin/python bench/campaign.py                                  # 1M customers
    .venv/bin/python bench/campaign.py --customers 100000 --send 1000   # a quick run

On a throwaway PostgreSQL database (created and dropped here; 127.0.0.1:5432, trust auth):

1. `--customers` synthetic customers made in SQL with generate_series (attributes with a product
   and a postcode, an email for 70 %, a phone for 30 %, a postal address for 80 %, a marketing
   opt-in for some), then the preview of a segment ("variable_mortgage" and a postcode prefix) —
   count, sample and channel breakdown — timed (best of 3) through
   `notifications.campaigns.selectors.segment_preview`, what the preview API calls.
2. A regulatory campaign to `--send` customers of their own segment, created, submitted,
   approved and scheduled through the services, sent by `campaign_send` with django-q2 in sync
   mode (every chunk's compose and dispatch run inline, emails to Django's locmem backend):
   recipients per second from schedule to the last email, one communication per customer
   checked.
3. Throttle accuracy: a campaign with an email throttle of `--rate` messages/minute, big enough
   to last `--throttle-seconds`; the messages handed per minute (from the recipients'
   handed_at, first chunk to last) compared with the cap.

Last line:
campaign: preview_s=<s> customers=<n> send_per_s=<n> throttle_rate=<per min> throttle_error_pct=<%>
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"


def sql_admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(statement)


CUSTOMERS_SQL = """
INSERT INTO notifications_customer
  (source_system, external_ref, name, language, postal_address, postal_address_valid,
   attributes, created_at, updated_at)
SELECT 'bench', 'B-' || g, 'Customer ' || g, CASE WHEN g %% 5 = 0 THEN 'de' ELSE 'en' END,
  CASE WHEN g %% 5 < 4 THEN jsonb_build_array(g || ' Main Street', 'N' || (g %% 10) || ' 1AA')
       ELSE '[]'::jsonb END,
  g %% 5 < 4,
  jsonb_build_object(
    'product', (ARRAY['variable_mortgage','fixed_mortgage','savings','current'])[1 + g %% 4],
    'postcode', 'N' || (g %% 10) || ' 1AA',
    'reference', 'DOC-' || g, 'document_title', 'Rate change', 'document_date', '2026-04-12'),
  now(), now()
FROM generate_series(%(first)s, %(last)s) AS g
"""
CONTACTS_SQL = """
INSERT INTO notifications_contactpoint (customer_id, kind, value, is_primary, valid,
  invalid_reason, created_at)
SELECT id, 'email', 'c' || id || '@example.org', true, true, '', now()
  FROM notifications_customer WHERE substr(external_ref, 3)::int % 10 < 7
UNION ALL
SELECT id, 'phone', '+447700' || lpad((id % 1000000)::text, 6, '0'), true, true, '', now()
  FROM notifications_customer WHERE substr(external_ref, 3)::int % 10 >= 7
"""


def setup_django(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ccm.settings")
    os.environ.setdefault("EMAIL_BACKEND", "django.core.mail.backends.locmem.EmailBackend")
    import django

    django.setup()
    from django_q.conf import Conf

    Conf.SYNC = True  # chunks compose and dispatch inline, in this process


def make_customers(n: int) -> float:
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        for first in range(1, n + 1, 250_000):
            cursor.execute(CUSTOMERS_SQL, {"first": first, "last": min(n, first + 249_999)})
        cursor.execute(CONTACTS_SQL)
        cursor.execute("ANALYZE")
    return time.perf_counter() - started


def users():
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from ccm.roles import Role

    made = []
    for name, role in (
        ("author", Role.TEMPLATE_AUTHOR),
        ("reviewer", Role.COMPLIANCE_REVIEWER),
        ("reviewer2", Role.COMPLIANCE_REVIEWER),
        ("ops", Role.OPERATIONS),
    ):
        user = get_user_model().objects.create_user(
            username=name, is_staff=True
        )  # no password: never signs in
        user.groups.add(Group.objects.get(name=role))
        made.append(user)
    return made


def publish(author, reviewer):
    from ccm import approvals
    from documents import services as documents
    from documents.bundle import read_folder
    from documents.demo import LIBRARY
    from documents.models import Template

    bundle = read_folder(LIBRARY / "document_ready")
    template = Template.objects.create(
        code="document_ready", name="Document ready", category="service"
    )
    version = documents.template_version_create(template=template, bundle=bundle, by=author)
    approval = documents.template_version_submit(version=version, by=author)
    approvals.approval_decide(approval=approval, by=reviewer, decision="approve")
    version.refresh_from_db()
    documents.template_version_publish(version=version, by=author)


def preview(n: int) -> tuple[float, int]:
    from notifications.campaigns import selectors

    definition = {"attributes": {"product": "variable_mortgage"}, "postcode_prefixes": ["N2"]}
    best = float("inf")
    count = 0
    for _ in range(3):
        started = time.perf_counter()
        result = selectors.segment_preview(
            definition, category="regulatory", renditions=["email", "sms", "print"]
        )
        best = min(best, time.perf_counter() - started)
        count = result.count
    print(
        f"  preview of {count} of {n} customers: best {best:.2f} s; "
        f"breakdown {result.breakdown.combinations}"
    )
    everyone = time.perf_counter()
    whole = selectors.segment_preview({}, category="regulatory", renditions=["email", "print"])
    print(f"  preview of everyone ({whole.count}): {time.perf_counter() - everyone:.2f} s")
    return best, count


def approved_campaign(name: str, refs: list[str], people, throttle=None):
    from ccm import approvals
    from notifications.campaigns import services as campaigns

    author, _, reviewer2, _ = people
    segment = campaigns.segment_create(name=name, definition={"references": refs}, by=author)
    campaign = campaigns.campaign_create(
        name=name,
        template_code="document_ready",
        segment=segment,
        category="regulatory",
        throttle=throttle or {},
        by=author,
    )
    approval = campaigns.campaign_submit(campaign=campaign, by=author)
    approvals.approval_decide(approval=approval, by=reviewer2, decision="approve")
    campaign.refresh_from_db()
    return campaign


def throughput(send: int, people) -> float:
    from django.core import mail

    from notifications.campaigns import services as campaigns
    from notifications.models import Communication

    refs = [f"B-{i}" for i in range(1, 10 * send) if i % 10 < 7][:send]  # customers with email
    campaign = approved_campaign("throughput", refs, people)
    mail.outbox = []
    started = time.perf_counter()
    campaigns.campaign_schedule(campaign=campaign, by=people[3])
    while campaigns.campaign_send(campaign.pk, budget=3600):
        pass
    elapsed = time.perf_counter() - started
    made = Communication.objects.filter(correlation_id=f"campaign:{campaign.pk}")
    per_customer = made.values("customer_id").distinct().count()
    print(
        f"  {send} recipients in {elapsed:.1f} s: {send / elapsed:.0f}/s; "
        f"communications {made.count()} for {per_customer} customers; emails {len(mail.outbox)}"
    )
    assert made.count() == per_customer == send, "not exactly one communication per customer"
    return send / elapsed


def throttle(rate: int, seconds: int, people) -> tuple[float, float]:
    from notifications.campaigns import services as campaigns
    from notifications.campaigns.models import CampaignRecipient

    # Sync mode: the task's successor runs inline, so the campaign runs to its end.
    want = int(rate * seconds / 60) + max(1, rate // 6)
    refs = [f"B-{i}" for i in range(1, 20 * want) if i % 10 < 7][-want:]
    campaign = approved_campaign("throttle", refs, people, throttle={"email": rate})
    campaigns.campaign_schedule(campaign=campaign, by=people[3])
    campaigns.campaign_send(campaign.pk)
    stamps = sorted(
        CampaignRecipient.objects.filter(campaign=campaign, handed_at__isnull=False).values_list(
            "handed_at", flat=True
        )
    )
    span = (stamps[-1] - stamps[0]).total_seconds()
    # Messages per minute over the span from the first hand-off to the last chunk's start.
    last_chunk = sum(1 for s in stamps if s == stamps[-1])
    measured = (len(stamps) - last_chunk) / span * 60 if span else 0.0
    error = abs(measured - rate) / rate * 100
    print(
        f"  {len(stamps)} handed in {span:.1f} s at a cap of {rate}/min: {measured:.0f}/min "
        f"({error:.1f} % off)"
    )
    return measured, error


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--send", type=int, default=2000)
    parser.add_argument("--rate", type=int, default=600)
    parser.add_argument("--throttle-seconds", type=int, default=60)
    parser.add_argument("--preview-only", action="store_true", help="skip sending")
    args = parser.parse_args()
    import django as dj

    python = platform.python_version()
    print(f"machine: {os.cpu_count()} cores, Python {python}, Django {dj.__version__}")
    name = f"ccm_bench_campaign_{os.getpid()}"
    sql_admin(f"CREATE DATABASE {name}")
    try:
        setup_django(f"postgres://postgres@127.0.0.1:5432/{name}")
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        people = users()
        publish(people[0], people[1])
        print(f"  {args.customers} customers made in {make_customers(args.customers):.1f} s")
        preview_s, _ = preview(args.customers)
        per_s, measured, error = 0.0, 0.0, 0.0
        if not args.preview_only:
            per_s = throughput(args.send, people)
            measured, error = throttle(args.rate, args.throttle_seconds, people)
        print(
            f"campaign: preview_s={preview_s:.2f} customers={args.customers} "
            f"send_per_s={per_s:.0f} throttle_rate={measured:.0f} throttle_error_pct={error:.1f}"
        )
    finally:
        from django.db import connections

        connections.close_all()
        sql_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
