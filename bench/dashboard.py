"""Dashboard benchmark: the operations dashboard over 1,000,000 communications.

    .venv/bin/python bench/dashboard.py                        # 1,000,000 communications
    .venv/bin/python bench/dashboard.py --communications 100000
    .venv/bin/python bench/dashboard.py --database ccm_bench_mine   # beside someone else's run

On a throwaway PostgreSQL database (migrated here): synthetic customers, communications spread
over the last 31 days (states, sources, templates and categories mixed) and their deliveries
(email, SMS, push, print; delivered, sent, failed, bounced, pending) are written with
INSERT … SELECT generate_series; then the rollups are built (`rollups_refresh(days=31)`, timed)
and `/ops/` is requested 20 times by a signed-in operations user through Django's test client
(the whole request: middleware, session, view, template), after one warm-up request; then
`/ops/progress.json` (what the dashboard's progress bars poll every 2 s) 20 times.

Last lines:
dashboard: communications=<n> deliveries=<n> rollup_s=<s> p50_ms=<ms> p95_ms=<ms> max_ms=<ms>
progress.json: p50_ms=<ms> p95_ms=<ms>
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
DB_NAME = "ccm_bench_dashboard"
REQUESTS = 20

SEED_SQL = """
INSERT INTO documents_template (code, name, category, owner, description, languages,
                                created_at, updated_at)
SELECT 'bench_' || t, 'Bench template ' || t,
       (ARRAY['regulatory','transactional','service','marketing'])[1 + t % 4], '', '', '["en"]',
       now(), now()
FROM generate_series(1, 8) AS t;

INSERT INTO notifications_customer (source_system, external_ref, name, language, postal_address,
                                    postal_address_valid, created_at, updated_at, salutation,
                                    attributes)
SELECT 'bench', 'B-' || c, 'Customer ' || c, 'en', '[]', true, now(), now(), '', '{}'
FROM generate_series(1, 20000) AS c;

-- Communications: requested over the last 31 days (a few today), states by share.
INSERT INTO notifications_communication (data, category, urgency, source, channel_override,
    correlation_id, client, state, rendered, decision_trace, failure_reason, failure_errors,
    created_at, updated_at, sent_at, template_id, customer_id, address_override, public_id)
SELECT '{}', t.category, 'normal',
       (ARRAY['api','api','api','campaign','event','case','reprint','form'])[1 + i % 8],
       '', '', 'bench',
       CASE WHEN i % 100 < 78 THEN 'delivered' WHEN i % 100 < 88 THEN 'sent'
            WHEN i % 100 < 92 THEN 'undeliverable' WHEN i % 100 < 94 THEN 'compose_failed'
            WHEN i % 100 < 96 THEN 'dispatching' WHEN i % 100 < 97 THEN 'received'
            WHEN i % 100 < 98 THEN 'awaiting_approval' ELSE 'cancelled' END,
       '{}', '[]',
       CASE WHEN i % 100 BETWEEN 92 AND 93 THEN 'data.balance: required property missing'
            ELSE '' END,
       '[]',
       now() - make_interval(secs => (i::bigint * 7919) % (31 * 86400)),
       now() - make_interval(secs => (i::bigint * 7919) % (31 * 86400)) + interval '20 seconds',
       NULL, t.id, 1 + (i % 20000) + (SELECT min(id) - 1 FROM notifications_customer), '',
       gen_random_uuid()
FROM generate_series(1, __N__) AS i
JOIN (SELECT id, category, row_number() OVER (ORDER BY id) - 1 AS k FROM documents_template
      WHERE code LIKE 'bench_%') t ON t.k = i % 8;

-- One delivery per communication that reached dispatch.
INSERT INTO notifications_delivery (channel, address, state, message_id, provider,
    provider_message_id, attempts, last_error, created_at, updated_at, sent_at, communication_id,
    meta, checks)
SELECT ch.channel, 'someone@example.org',
       CASE c.state WHEN 'delivered' THEN 'delivered' WHEN 'sent' THEN 'sent'
            WHEN 'dispatching' THEN 'pending'
            ELSE CASE WHEN c.id % 2 = 0 THEN 'failed' ELSE 'bounced' END END,
       '<bench.' || c.id || '@ccm>', 'bench', '', 1,
       CASE WHEN c.state = 'undeliverable' THEN
            (ARRAY['Postmark 406: inactive recipient', '550 5.1.1 mailbox unknown',
                   'Twilio 21211: invalid number', 'FCM: unregistered token',
                   'Addressee gone away'])[1 + c.id % 5]
            ELSE '' END,
       c.created_at + interval '2 seconds', c.updated_at,
       CASE WHEN c.state IN ('delivered','sent','undeliverable')
            THEN c.created_at + make_interval(secs => 2 + c.id % 90) END,
       c.id, '{}', 0
FROM notifications_communication c
CROSS JOIN LATERAL (SELECT (ARRAY['email','email','email','email','email','email','sms','sms',
                                  'push','print'])[1 + c.id % 10] AS channel) ch
WHERE c.client = 'bench'
  AND c.state IN ('delivered','sent','undeliverable','dispatching');

-- A few complaints.
INSERT INTO notifications_deliveryevent (provider, event_id, event_type, hard, message_id,
    recipient, description, occurred_at, received_at, raw, delivery_id)
SELECT 'bench', 'c-' || d.id, 'complained', false, '', '', '', d.updated_at, d.updated_at, '{}',
       d.id
FROM notifications_delivery d
WHERE d.channel = 'email' AND d.state = 'delivered' AND d.id % 1500 = 0;
ANALYZE;
"""


def sql_admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(statement)


def _slowest_statements(client, top: int = 6) -> str:
    from django.db import connection, reset_queries
    from django.test.utils import CaptureQueriesContext

    reset_queries()
    with CaptureQueriesContext(connection) as captured:
        client.get("/ops/")
    ranked = sorted(captured.captured_queries, key=lambda q: -float(q["time"]))[:top]
    lines = [f"  {len(captured.captured_queries)} statements"]
    lines += [f"  {float(q['time']) * 1000:7.1f} ms  {q['sql'][:150]}" for q in ranked]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--communications", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--database", default=DB_NAME, help=f"throwaway database ({DB_NAME})")
    args = parser.parse_args()
    db_name = args.database
    if not db_name.replace("_", "").isalnum():
        parser.error("--database: letters, digits and underscores only")

    sql_admin(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")
    sql_admin(f"CREATE DATABASE {db_name}")
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{db_name}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ccm.settings")
    os.environ["LOG_LEVEL"] = "WARNING"
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, check=True
    )

    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db import connection
    from django.test import Client
    from django.test.utils import setup_test_environment

    from ccm.roles import Role
    from notifications.reporting.rollups import rollups_refresh

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg = cursor.fetchone()[0]
    print(
        f"machine: {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, Django {django.get_version()}, PostgreSQL {pg}",
        flush=True,
    )
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(SEED_SQL.replace("__N__", str(int(args.communications))))
        cursor.execute("SELECT count(*) FROM notifications_communication")
        communications = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM notifications_delivery")
        deliveries = cursor.fetchone()[0]
    print(
        f"seeded {communications} communications, {deliveries} deliveries "
        f"in {time.perf_counter() - started:.1f} s",
        flush=True,
    )

    started = time.perf_counter()
    rollups_refresh(days=31)
    rollup_s = time.perf_counter() - started
    print(f"rollups of 31 days in {rollup_s:.1f} s", flush=True)

    setup_test_environment()
    user = get_user_model().objects.create_user("bench-ops", password=None, is_staff=True)
    user.groups.add(Group.objects.get(name=Role.OPERATIONS))
    client = Client()
    client.force_login(user)
    warm = client.get("/ops/")
    assert warm.status_code == 200, warm.status_code
    timings = []
    for _ in range(REQUESTS):
        t0 = time.perf_counter()
        response = client.get("/ops/")
        timings.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200
    timings.sort()
    p50 = statistics.median(timings)
    p95 = statistics.quantiles(timings, n=20, method="inclusive")[18]
    print(
        f"dashboard: communications={communications} deliveries={deliveries} "
        f"rollup_s={rollup_s:.1f} p50_ms={p50:.0f} p95_ms={p95:.0f} max_ms={timings[-1]:.0f}"
    )
    polls = []
    for _ in range(REQUESTS):
        t0 = time.perf_counter()
        response = client.get("/ops/progress.json")
        polls.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200
    print(
        f"progress.json: p50_ms={statistics.median(polls):.0f} "
        f"p95_ms={statistics.quantiles(polls, n=20, method='inclusive')[18]:.0f}"
    )
    slowest = _slowest_statements(client)
    print("slowest statements of one request:\n" + slowest)
    connection.close()
    if not args.keep:
        sql_admin(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")


if __name__ == "__main__":
    main()
