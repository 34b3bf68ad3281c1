"""Screens benchmark: every list and search people use, at a bank's size.

    .venv/bin/python bench/screens.py                                      # 100,000 / 10,000
    .venv/bin/python bench/screens.py --communications 1000000 --cases 100000   # the issue's size

On a throwaway PostgreSQL database (`ccm_screens`, migrated here) synthetic data is written with
INSERT … SELECT generate_series: customers (one for every five communications, each with an
email contact point), communications with their documents, cases (complaints, disputes,
exceptions of every kind, in every state, with an open milestone each), audit events, send jobs,
campaigns, pending sign-offs and template versions whose content weighs ~28 KB as real ones do.
Then a signed-in superuser requests each screen (admin changelists and their searches and
filters, the exception, review and case queues, the send jobs list, the API lists) 20 times
through Django's test client (the whole request: middleware, session, view, template) after one
warm-up request, and the script prints p50 / p95, the number of SQL statements of one request and
their time ("sql ms"), and the web process's CPU time a request ("cpu ms": the Python side, which,
unlike the wall clock, does not grow while the process waits for a core on a loaded machine).
`--explain NAME` prints EXPLAIN ANALYZE of that screen's slowest statement.

Last line:
screens: communications=<n> cases=<n> worst_p95_ms=<ms> worst=<screen> over_250ms=<n>
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
DB_NAME = "ccm_screens"
REQUESTS = 20
TARGET_MS = 250

SEED_SQL = """
INSERT INTO documents_template (code, name, category, owner, description, languages,
                                created_at, updated_at)
SELECT 'bench_' || t, 'Bench template ' || t,
       (ARRAY['regulatory','transactional','service','marketing'])[1 + t % 4], '', '', '["en"]',
       now(), now()
FROM generate_series(1, 8) AS t;

-- Three versions a template (the last published), each ~28 KB of content.
INSERT INTO documents_templateversion (number, state, content, content_hash, source, created_at,
    updated_at, submitted_at, published_at, retired_at, author_id, template_id)
SELECT v, CASE WHEN v = 3 THEN 'published' WHEN v = 2 THEN 'retired' ELSE 'draft' END,
       jsonb_build_object('schema', '{"type": "object"}'::jsonb, 'samples', '{}'::jsonb,
                          'print', jsonb_build_object('body', repeat('<p>Clause. </p>', 2000))),
       md5(t.id || '-' || v) || md5(v || '-' || t.id), 'bench', now(), now(), now(), now(), NULL,
       __AUTHOR__, t.id
FROM documents_template t CROSS JOIN generate_series(1, 3) AS v;

INSERT INTO notifications_customer (source_system, external_ref, name, language, postal_address,
    postal_address_valid, created_at, updated_at, salutation, attributes)
SELECT (ARRAY['core','cards','mortgages'])[1 + c % 3], 'B-' || c,
       (ARRAY['Alice','Bob','Chloe','Dev','Emma','Farid','Grace','Hugo'])[1 + c % 8]
           || ' Customer ' || c,
       (ARRAY['en','en','en','fr','de'])[1 + c % 5], '[]', true, now(), now(), '', '{}'
FROM generate_series(1, __CUSTOMERS__) AS c;

INSERT INTO notifications_contactpoint (kind, value, is_primary, valid, invalid_reason,
                                        created_at, customer_id)
SELECT 'email', 'c' || substr(external_ref, 3) || '@example.org', true, true, '', now(), id
FROM notifications_customer;

-- Documents: one for every other communication, newest last.
INSERT INTO documents_document (kind, language, locale, data, file, sha256, size, page_count,
    engine, created_at, template_version_id, public_id)
SELECT 'letter', 'en', 'en-GB', '{}', 'documents/bench/' || d || '.pdf',
       encode(sha256(d::text::bytea), 'hex'), 40000, 2, '{}',
       now() - make_interval(secs => (__DOCUMENTS__ - d) * 2),
       (SELECT min(id) FROM documents_templateversion WHERE state = 'published'),
       gen_random_uuid()
FROM generate_series(1, __DOCUMENTS__) AS d;

-- Communications: requested over the last 31 days, states by share.
INSERT INTO notifications_communication (data, category, urgency, source, channel_override,
    correlation_id, client, state, rendered, decision_trace, failure_reason, failure_errors,
    created_at, updated_at, sent_at, template_id, template_version_id, customer_id,
    address_override, document_id, public_id)
SELECT '{"amount": 12.5}', t.category, (ARRAY['normal','normal','normal','urgent'])[1 + i % 4],
       (ARRAY['api','api','api','campaign','event','case','reprint','form'])[1 + i % 8],
       '', 'corr-' || i, 'bench',
       CASE WHEN i % 100 < 78 THEN 'delivered' WHEN i % 100 < 88 THEN 'sent'
            WHEN i % 100 < 92 THEN 'undeliverable' WHEN i % 100 < 94 THEN 'compose_failed'
            WHEN i % 100 < 96 THEN 'dispatching' WHEN i % 100 < 97 THEN 'received'
            WHEN i % 100 < 98 THEN 'awaiting_approval' ELSE 'cancelled' END,
       '{}', '[]', '', '[]',
       now() - make_interval(secs => (__N__ - i) * 2),
       now() - make_interval(secs => (__N__ - i) * 2) + interval '20 seconds',
       NULL, t.id, t.version_id, (SELECT min(id) FROM notifications_customer) + i % __CUSTOMERS__,
       '', CASE WHEN i % 2 = 0 THEN (SELECT min(id) FROM documents_document) + i / 2 - 1 END,
       gen_random_uuid()
FROM generate_series(1, __N__) AS i
JOIN (SELECT t.id, t.category, v.id AS version_id, row_number() OVER (ORDER BY t.id) - 1 AS k
      FROM documents_template t
      JOIN documents_templateversion v ON v.template_id = t.id AND v.state = 'published') t
  ON t.k = i % 8;

INSERT INTO cases_case (reference, case_type, subject, description, priority, team, state,
    details, received_at, paused_business_days, next_due_at, sla_status, resolution,
    exception_kind, occurrences, error_details, next_action, recovery_action, created_at,
    updated_at, customer_id, assignee_id, public_id)
SELECT 'C-2026-' || lpad(k::text, 7, '0'), ct.case_type,
       initcap(ct.case_type) || ' about account ' || k, 'Bench case', ct.priority,
       (ARRAY['customer_relations','disputes','operations'])[1 + k % 3],
       (ARRAY['new','assigned','in_progress','waiting','resolved','closed','closed','closed'])
           [1 + k % 8],
       CASE WHEN ct.case_type = 'exception'
            THEN jsonb_build_object('template', 'bench_1', 'communication', k) ELSE '{}' END,
       now() - make_interval(secs => (__CASES__ - k) * 30), 0,
       now() + make_interval(secs => (k * 7919) % (20 * 86400)) - interval '3 days',
       (ARRAY['on_track','on_track','approaching','overdue'])[1 + k % 4], '',
       CASE WHEN ct.case_type = 'exception'
            THEN (ARRAY['compose_failed','undeliverable','returned_mail',
                        'regeneration_mismatch'])[1 + k % 4] ELSE '' END,
       1, '{}', '', '', now() - make_interval(secs => (__CASES__ - k) * 30), now(),
       (SELECT min(id) FROM notifications_customer) + (k * 13) % __CUSTOMERS__,
       CASE WHEN k % 5 = 0 THEN __AUTHOR__ END, gen_random_uuid()
FROM generate_series(1, __CASES__) AS k
CROSS JOIN LATERAL (SELECT
    (ARRAY['complaint','complaint','dispute','exception','exception','reprint','correspondence',
           'incident'])[1 + k % 8] AS case_type,
    (ARRAY['low','normal','normal','high','urgent'])[1 + k % 5] AS priority) ct;

INSERT INTO cases_milestone (code, label, sequence, template_code, due_at, case_id)
SELECT 'final', 'Final response', 1, '', coalesce(next_due_at, now()), id FROM cases_case;

INSERT INTO ccm_auditevent (created_at, actor_label, action, subject_type, subject_id, request_id,
                            prev_hash, hash)
SELECT now() - make_interval(secs => (__AUDIT__ - a)),
       (ARRAY['system','alice','bob','api:core'])[1 + a % 4],
       (ARRAY['communication.sent','communication.received','case.opened',
              'template_version.published','document.created'])[1 + a % 5],
       (ARRAY['notifications.communication','notifications.communication','cases.case',
              'documents.templateversion','documents.document'])[1 + a % 5],
       (a / 5)::text, 'req-' || a,
       md5('p' || a) || md5('q' || a), md5('h' || a) || md5('i' || a)
FROM generate_series(1, __AUDIT__) AS a;

INSERT INTO notifications_sendjob (source, client, state, file_name, total, refused, cancel_reason,
    created_at, updated_at, template_id)
SELECT (ARRAY['api_batch','csv','command'])[1 + j % 3], 'bench',
       (ARRAY['completed','completed','completed','sending','cancelled','ready'])[1 + j % 6],
       'job-' || j || '.csv', 1000, 0, '', now() - make_interval(secs => (__JOBS__ - j) * 60),
       now(), (SELECT min(id) FROM documents_template)
FROM generate_series(1, __JOBS__) AS j;

INSERT INTO notifications_segment (name, version, description, definition, created_at)
VALUES ('Bench segment', 1, '', '{}', now());

INSERT INTO notifications_campaign (name, category, data_source, data_csv, throttle, state,
    created_at, updated_at, audience_hash, audience_count, segment_snapshot, channel_plan, note,
    created_by_id, template_version_id, segment_id, window_zone)
SELECT 'Campaign ' || m, (ARRAY['regulatory','service','marketing'])[1 + m % 3], 'none', '', '{}',
       (ARRAY['completed','completed','draft','in_review','scheduled','cancelled'])[1 + m % 6],
       now() - make_interval(days => m), now(), '', 1000, '{}', '{}', '', __AUTHOR__,
       (SELECT min(id) FROM documents_templateversion WHERE state = 'published'),
       (SELECT min(id) FROM notifications_segment), 'business'
FROM generate_series(1, __CAMPAIGNS__) AS m;

-- Pending sign-offs of draft template versions (the review queue).
INSERT INTO ccm_approval (subject_id, purpose, summary, state, requested_at, comment, author_id,
                          requested_by_id, subject_type_id)
SELECT v.id::text, 'template_version.publish', 'Bench sign-off ' || v.id, 'pending', now(), '',
       __AUTHOR__, __AUTHOR__, __VERSION_TYPE__
FROM documents_templateversion v WHERE v.state = 'draft';

"""

# (name, path): what people open, with the searches and filters they use.
SCREENS = [
    ("communications", "/admin/notifications/communication/"),
    ("communications state", "/admin/notifications/communication/?state__exact=compose_failed"),
    ("communications template", "/admin/notifications/communication/?template__id__exact=__T__"),
    ("communications ref", "/admin/notifications/communication/?q=B-__C__"),
    ("communications name", "/admin/notifications/communication/?q=__NAME__"),
    ("communications email", "/admin/notifications/communication/?q=c__C__@example.org"),
    ("communications page 50", "/admin/notifications/communication/?p=50"),
    ("customers", "/admin/notifications/customer/"),
    ("customers ref", "/admin/notifications/customer/?q=B-__C__"),
    ("customers name", "/admin/notifications/customer/?q=__NAME__"),
    ("customers email", "/admin/notifications/customer/?q=c__C__@example.org"),
    ("customers source", "/admin/notifications/customer/?source_system=cards"),
    ("documents", "/admin/documents/document/"),
    ("documents sha", "/admin/documents/document/?q=__SHA__"),
    ("cases", "/admin/cases/case/"),
    ("cases state", "/admin/cases/case/?state__exact=new"),
    ("cases ref", "/admin/cases/case/?q=C-2026-__K__"),
    ("cases name", "/admin/cases/case/?q=__NAME__"),
    ("campaigns", "/admin/notifications/campaign/"),
    ("audit", "/admin/ccm/auditevent/"),
    ("audit action", "/admin/ccm/auditevent/?action=case.opened"),
    ("audit search", "/admin/ccm/auditevent/?q=req-12345"),
    ("send jobs", "/jobs/"),
    ("exception queue", "/cases/exceptions/"),
    ("case queue", "/cases/?queue=operations"),
    ("case queue all", "/cases/?queue=operations&state=all&sort=priority"),
    ("review queue", "/review/"),
    ("api communications", "/api/v1/communications"),
    ("api comms state", "/api/v1/communications?status=compose_failed"),
    ("api cases", "/api/v1/cases"),
    ("api templates", "/api/v1/templates"),
]


def sql_admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(statement)


def seed(args, author_id: int, version_type_id: int) -> None:
    from django.db import connection

    sizes = {
        "__N__": args.communications,
        "__CUSTOMERS__": max(args.communications // 5, 100),
        "__DOCUMENTS__": args.communications // 2 + 1,
        "__CASES__": args.cases,
        "__AUDIT__": args.communications // 2,
        "__JOBS__": max(args.communications // 100, 50),
        "__CAMPAIGNS__": max(args.communications // 1000, 20),
        "__AUTHOR__": author_id,
        "__VERSION_TYPE__": version_type_id,
    }
    sql = SEED_SQL
    for key, value in sizes.items():
        sql = sql.replace(key, str(int(value)))
    with connection.cursor() as cursor:
        cursor.execute(sql)
        # As autovacuum leaves a live database: visibility maps set, so counts over an index
        # read only the index.
        cursor.execute("VACUUM ANALYZE")


def measure(client, path: str, requests: int) -> tuple[float, float, float, int, list[dict]]:
    from django.db import connection, reset_queries
    from django.test.utils import CaptureQueriesContext

    reset_queries()
    with CaptureQueriesContext(connection) as captured:
        warm = client.get(path)
    assert warm.status_code == 200, (path, warm.status_code, warm.content[:500])
    timings = []
    cpu_started = time.process_time()
    for _ in range(requests):
        t0 = time.perf_counter()
        response = client.get(path)
        timings.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    # The web process's own CPU a request (Python: middleware, view, template): unlike the wall
    # clock it does not grow while the process waits for a core on a loaded machine.
    cpu_ms = (time.process_time() - cpu_started) * 1000 / requests
    p50 = statistics.median(timings)
    p95 = statistics.quantiles(timings, n=20, method="inclusive")[18]
    return p50, p95, cpu_ms, len(captured.captured_queries), captured.captured_queries


def explain(queries: list[dict]) -> None:
    from django.db import connection

    slowest = max(queries, key=lambda q: float(q["time"]))
    print(f"slowest statement ({float(slowest['time']) * 1000:.1f} ms):\n{slowest['sql']}\n")
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + slowest["sql"])
        print("\n".join(row[0] for row in cursor.fetchall()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--communications", type=int, default=100_000)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=REQUESTS, help="timed requests (2+)")
    parser.add_argument("--database", default=DB_NAME, help="the throwaway database's name")
    parser.add_argument("--only", help="measure only screens whose name contains this")
    parser.add_argument("--explain", help="EXPLAIN ANALYZE the slowest statement of this screen")
    parser.add_argument("--reuse", action="store_true", help="reuse the seeded database (--keep)")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()

    if not args.reuse:
        sql_admin(f"DROP DATABASE IF EXISTS {args.database} WITH (FORCE)")
        sql_admin(f"CREATE DATABASE {args.database}")
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{args.database}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ccm.settings")
    os.environ["LOG_LEVEL"] = "WARNING"
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, check=True
    )

    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.contenttypes.models import ContentType
    from django.core.signals import request_started
    from django.db import connection, reset_queries
    from django.test import Client

    from documents.models import TemplateVersion

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg = cursor.fetchone()[0]
    print(
        f"machine: {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, Django {django.get_version()}, PostgreSQL {pg}",
        flush=True,
    )
    users = get_user_model().objects
    user = users.filter(username="bench-admin").first() or users.create_superuser(
        "bench-admin", "bench@example.org", None
    )
    if not args.reuse:
        started = time.perf_counter()
        version_type = ContentType.objects.get_for_model(TemplateVersion)
        seed(args, user.pk, version_type.pk)
        print(f"seeded in {time.perf_counter() - started:.1f} s", flush=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM notifications_communication")
        communications = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM cases_case")
        cases = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM notifications_customer")
        customers = cursor.fetchone()[0]
        cursor.execute("SELECT min(id) FROM documents_template")
        template_id = cursor.fetchone()[0]
        cursor.execute("SELECT sha256 FROM documents_document ORDER BY id LIMIT 1 OFFSET 1000")
        sha = cursor.fetchone()[0]
    print(f"{communications} communications, {cases} cases, {customers} customers", flush=True)

    # No test environment: its template instrumentation (a copy of the context at every
    # template rendered) would be measured instead of the screens.
    # Each request would clear the statement log that counts its queries.
    request_started.disconnect(reset_queries)
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)
    picks = {
        "__C__": str(customers * 2 // 3),
        "__K__": str(cases * 2 // 3).rjust(7, "0"),
        "__T__": str(template_id),
        "__SHA__": sha[:12],
    }
    # The name of the customer picked above, as the seed spells it ("Emma Customer 1234").
    first_names = ["Alice", "Bob", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo"]
    pick = int(picks["__C__"])
    picks["__NAME__"] = f"{first_names[pick % 8]}+Customer+{pick}"
    results = []
    print(
        f"{'screen':<26} {'p50 ms':>8} {'p95 ms':>8} {'queries':>8} {'sql ms':>8} {'cpu ms':>8}",
        flush=True,
    )
    for name, path in SCREENS:
        if args.only and args.only not in name:
            continue
        for key, value in picks.items():
            path = path.replace(key, value)
        p50, p95, cpu_ms, count, queries = measure(client, path, args.requests)
        flag = "  SLOW" if p95 > TARGET_MS else ""
        sql_ms = sum(float(q["time"]) for q in queries) * 1000
        print(
            f"{name:<26} {p50:8.0f} {p95:8.0f} {count:8d} {sql_ms:8.0f} {cpu_ms:8.0f}{flag}",
            flush=True,
        )
        results.append((name, p95))
        if args.explain and args.explain == name:
            explain(queries)
    worst_name, worst = max(results, key=lambda r: r[1])
    over = sum(1 for _, p95 in results if p95 > TARGET_MS)
    print(
        f"screens: communications={communications} cases={cases} worst_p95_ms={worst:.0f} "
        f"worst={worst_name.replace(' ', '_')} over_250ms={over}"
    )
    connection.close()
    if not args.keep:
        sql_admin(f"DROP DATABASE IF EXISTS {args.database} WITH (FORCE)")


if __name__ == "__main__":
    main()
