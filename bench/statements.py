"""Statements benchmark through the public entry points: readings intake over HTTP, the bill
run with PDFs started with `POST /api/v1/statement-runs` against the project's own render rate,
and the clusters' memory over the run.

    .venv/bin/python bench/statements.py                          # 200 customers
    .venv/bin/python bench/statements.py --customers 50 --intake 100000   # quick
    .venv/bin/python bench/statements.py --customers 1500 --no-compose --every 100   # memory
    .venv/bin/python bench/statements.py --customers 10 --intake 0 --profile-render 3
    .venv/bin/python bench/statements.py --issue-size --intake 0 --render 0
        # the issue's run: 10,000 customers with a year of half-hours (175 M readings made with
        # generate_series); every statement computed, held or handed, PDFs left queued but for
        # --sample of them, one of which is reprinted byte for byte

On a throwaway PostgreSQL database (created and dropped here; 127.0.0.1:5432, trust auth),
prepared directly (migrations, the library's `usage_statement` template and the recommendation
rules published through sign-off, `--customers` customers each with `--days` days of half-hours
made in SQL, a flat or a day/night tariff, 1 % with a day missing and 1 % with a spike: held).
CCM is then served as deployed: gunicorn with production settings (DEBUG off, Redis cache in
BENCH_REDIS_DB, ports from BENCH_PORTS), named queues CCM_TASK_QUEUES=render,dispatch with one
`manage.py qcluster` per queue (default: Q_WORKERS=1, which works the run's chunks; dispatch;
render: --render-workers), sending email through Anymail's Postmark backend to the loopback stub
of bench/dispatch.py. An integrator's API key calls:

1. intake: `--intake` half-hourly readings posted `--call` a request (100,000) as `--shape` (csv,
   rows or objects) to `POST /api/v1/readings`, then the same again (all unchanged): readings per
   second. The issue's target is >= 50,000/s.
2. render baseline (before the servers start, this process alone): `document_compose` of the
   template's sample `--render` times, what bench/render.py measures for the project path,
   and the render worker's CPU seconds a statement (render_cpu_s).
3. bill run: `POST /api/v1/statement-runs` for the last month, followed with
   `GET /api/v1/statement-runs/{id}` until it is completed and every handed statement has its
   archived PDF: statements per second from the POST. Every `--every` statements the resident
   set (VmRSS, summed over each cluster's processes) of the default cluster and of the render
   cluster; the run is memory-flat if the default cluster's stays put.
With --no-compose (implied by --issue-size) the render cluster is not started during the run:
the rate is the run's own work (compute, validate, hold, hand to the intake), then the render
cluster is started for `--sample` PDFs and one statement is reprinted byte for byte.

Last lines: the machine, the load (as `uptime`), and
statements: intake=<readings/s> replay=<readings/s> run=<statements/s> render=<docs/s>
render_cpu_s=<render worker CPU s a statement> run_vs_render=<ratio> handed=<n> held=<n>
default_rss_mb=<first quarter→last quarter> render_rss_mb=<first→last>   (one line)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from dispatch import TOKEN, start_stub  # noqa: E402
from events import group_rss_mb, load  # noqa: E402
from scale import wait_for_clusters  # noqa: E402
from serve import (  # noqa: E402
    Client,
    cache_url,
    machine_line,
    production_env,
    sql_admin,
    start_cluster,
    start_gunicorn,
    stop,
    throwaway_database_drop,
)

PERIOD = (date(2026, 1, 1), date(2026, 1, 31))
QUEUES = ("render", "dispatch")  # named queues as deployed; the default queue works the run


CUSTOMERS_SQL = """
INSERT INTO notifications_customer
  (source_system, external_ref, name, salutation, language, postal_address,
   postal_address_valid, attributes, created_at, updated_at)
SELECT 'bench', 'S-' || g, 'Customer ' || g, '', CASE WHEN g % 5 = 0 THEN 'de' ELSE 'en' END,
  jsonb_build_array(g || ' Main Street', 'Leeds LS' || (g % 10) || ' 1AA'), true, '{}'::jsonb,
  now(), now()
FROM generate_series(1, %(n)s) AS g;
INSERT INTO notifications_contactpoint (customer_id, kind, value, is_primary, valid,
  invalid_reason, created_at)
SELECT id, 'email', 'c' || id || '@example.org', true, true, '', now()
  FROM notifications_customer WHERE source_system = 'bench';
INSERT INTO notifications_asset (code, kind, name, path, updated_at)
  VALUES ('bench-region', 'region', 'Bench', 'bench-region/', now());
INSERT INTO notifications_asset (code, kind, name, parent_id, path, updated_at)
SELECT 'am-' || c.id, 'meter', '', a.id, 'bench-region/am-' || c.id || '/', now()
  FROM notifications_customer c, notifications_asset a
 WHERE c.source_system = 'bench' AND a.code = 'bench-region';
INSERT INTO notifications_servicepoint (code, customer_id, asset_id, address, postcode, updated_at)
SELECT 'sp-' || c.id, c.id, a.id, c.id || ' Main Street, Leeds', 'LS1 1AA', now()
  FROM notifications_customer c JOIN notifications_asset a ON a.code = 'am-' || c.id;
INSERT INTO notifications_meter (serial, service_point_id, unit, kind, interval_minutes,
  register_digits, max_interval_value, created_at)
SELECT 'M-' || c.id, sp.id, 'kWh', 'interval', 30, 6, 50, now()
  FROM notifications_customer c JOIN notifications_servicepoint sp ON sp.customer_id = c.id;
INSERT INTO notifications_customertariff (customer_id, tariff_id, valid_from)
SELECT c.id, t.id, DATE '2024-01-01'
  FROM notifications_customer c
  JOIN notifications_tariff t ON t.code = CASE WHEN c.id % 3 = 0 THEN 'e7' ELSE 'flat' END
 WHERE c.source_system = 'bench';
"""

# A year (or --days) of half-hours per meter in SQL, ending with the period: the bulk of the
# run's history, which the intake step does not need to carry. The issue's run is 175 M rows, so
# the table's secondary indexes are dropped for the load and built once afterwards (a sort
# instead of 175 M random index inserts), and the load runs without the foreign-key trigger
# (session_replication_role; the meters are this script's own) - the usual way to bulk-load.
READINGS_SQL = """
INSERT INTO notifications_reading (meter_id, start, value, quality, received_at)
SELECT m.id, ts,
  round((0.12 + 0.3 * (extract(hour from ts) BETWEEN 17 AND 21)::int
         + 0.05 * sin(extract(epoch from ts) / 3600 + m.id))::numeric, 3),
  'actual', now()
  FROM notifications_meter m,
       generate_series(%(first)s::timestamptz, %(last)s::timestamptz, interval '30 minutes') ts
 WHERE m.id BETWEEN %(lo)s AND %(hi)s
 ORDER BY m.id, ts
"""
READING_UNIQUE = "reading_meter_start_unique"
METERS_A_STATEMENT = 200  # 200 meters x a year = 3.5 M rows an INSERT


def readings_generate(cursor, *, first: datetime, last: datetime) -> int:
    """Every meter's half-hours from `first` to `last` (inclusive), with generate_series."""
    cursor.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'notifications_reading' "
        "AND indexname NOT IN ('notifications_reading_pkey', %s)",
        [READING_UNIQUE],
    )
    others = cursor.fetchall()
    # Unlogged (this database is thrown away): 175 M rows write no WAL. A permanent table may
    # not refer to an unlogged one, so the corrections go first.
    cursor.execute("ALTER TABLE notifications_readingcorrection SET UNLOGGED")
    cursor.execute("ALTER TABLE notifications_reading SET UNLOGGED")
    cursor.execute(f"ALTER TABLE notifications_reading DROP CONSTRAINT {READING_UNIQUE}")
    for name, _definition in others:
        cursor.execute(f'DROP INDEX "{name}"')
    cursor.execute("SET session_replication_role = replica")
    cursor.execute("SELECT min(id), max(id) FROM notifications_meter")
    lo, hi = cursor.fetchone()
    rows = 0
    for start in range(lo, hi + 1, METERS_A_STATEMENT):
        cursor.execute(
            READINGS_SQL,
            {"first": first, "last": last, "lo": start, "hi": start + METERS_A_STATEMENT - 1},
        )
        rows += cursor.rowcount
    cursor.execute("SET session_replication_role = DEFAULT")
    cursor.execute("SET maintenance_work_mem = '1GB'")
    cursor.execute(
        f"ALTER TABLE notifications_reading ADD CONSTRAINT {READING_UNIQUE} "
        "UNIQUE (meter_id, start)"
    )
    for _name, definition in others:
        cursor.execute(definition)
    cursor.execute("RESET maintenance_work_mem")
    return rows


def prepare(*, customers: int, days: int, workdir: Path):

    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    from ccm.demo import seed_users
    from documents.demo import LIBRARY, seed_library
    from notifications.statements import demo as statements_demo
    from notifications.statements import recommendations, services

    call_command("migrate", verbosity=0)
    seed_users()
    library = workdir / "library"
    for name in ("_shared", "usage_statement"):
        shutil.copytree(LIBRARY / name, library / name)
    seed_library(library)
    statements_demo._tariffs(PERIOD[0])
    User = get_user_model()
    author, reviewer = User.objects.get(username="author"), User.objects.get(username="reviewer")
    rules = services.rule_set_create(rules=recommendations.DEFAULT_RULES, by=author)
    from ccm import approvals

    approvals.approval_decide(
        approval=services.rule_set_submit(rule_set=rules, by=author),
        by=reviewer,
        decision="approve",
    )
    with connection.cursor() as cursor:
        cursor.execute(CUSTOMERS_SQL.replace("%(n)s", str(int(customers))))
        end = datetime(2026, 2, 1, tzinfo=UTC)
        loaded = time.perf_counter()
        rows = readings_generate(
            cursor, first=end - timedelta(days=days), last=end - timedelta(minutes=30)
        )
        print(f"generated {rows:,} readings in {time.perf_counter() - loaded:.0f} s")
        # 1 % with a day missing, 1 % with a spike: held for review.
        cursor.execute("ANALYZE")  # the two statements below go through the (meter, start) index
        cursor.execute(
            "DELETE FROM notifications_reading r USING notifications_meter m "
            "WHERE r.meter_id = m.id AND m.id % 100 = 7 "
            "AND r.start >= '2026-01-14T00:00Z' AND r.start < '2026-01-15T00:00Z'"
        )
        cursor.execute(
            "UPDATE notifications_reading r SET value = 40 FROM notifications_meter m "
            "WHERE r.meter_id = m.id AND m.id % 100 = 13 AND r.start = '2026-01-20T03:00Z'"
        )
        cursor.execute("ANALYZE")
    return User.objects.get(username="ops")


class RawClient:
    """One keep-alive connection posting a prepared body as is (CSV included), with the
    integrator's key: serve.Client speaks JSON only."""

    def __init__(self, port: int, key: str):
        self.port, self.key = port, key
        self.conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        for attempt in range(2):
            conn = self.conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
            self.conn = conn
            try:
                conn.request(
                    "POST",
                    path,
                    body=body,
                    headers={"Authorization": f"Api-Key {self.key}", "Content-Type": content_type},
                )
                response = conn.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, ConnectionError):
                conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def intake(
    client: RawClient, meters: list[str], total: int, *, before: datetime, shape: str, call: int
) -> float:
    """Post `total` half-hourly readings spread over `meters`, ending at `before`, `call` a
    request, as CSV, arrays or objects, over HTTP. The bodies are built first: the rate is the
    server's."""
    per_meter = max(1, total // len(meters))
    rows = []
    for serial in meters:
        start = before - timedelta(minutes=30 * per_meter)
        for n in range(per_meter):
            rows.append(
                [
                    serial,
                    (start + timedelta(minutes=30 * n)).isoformat(),
                    f"{0.1 + (n % 17) / 100:.3f}",
                ]
            )
    rows = rows[:total]
    bodies = []
    for i in range(0, len(rows), call):
        part = rows[i : i + call]
        if shape == "csv":
            text = "meter,start,value\n" + "".join(f"{m},{s},{v}\n" for m, s, v in part)
            bodies.append((text.encode(), "text/csv"))
        elif shape == "rows":
            payload = {"rows": [[m, s, v, None] for m, s, v in part]}
            bodies.append((json.dumps(payload).encode(), "application/json"))
        else:
            payload = {"readings": [{"meter": m, "start": s, "value": v} for m, s, v in part]}
            bodies.append((json.dumps(payload).encode(), "application/json"))
    started = time.perf_counter()
    for body, content_type in bodies:
        status, answer = client.post("/api/v1/readings", body, content_type)
        assert status == 200, answer[:500]
    return len(rows) / (time.perf_counter() - started)


def worker_cpu_s() -> float:
    """CPU seconds (user + system) the render worker of this process has used so far."""
    from documents.sandbox import worker_pids

    (pid,) = worker_pids()
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def render_rate(n: int) -> tuple[float, float]:
    """(documents a second, render worker CPU seconds a document) of `n` document_compose of
    the statement sample. The CPU seconds are the worker's own (composing the HTML, laying out
    and writing the PDF): unlike the rate, they hardly depend on what else the machine runs."""
    from documents import selectors
    from documents import services as documents

    version = selectors.version_for_sending(code="usage_statement")
    assert version is not None
    sample = version.content["samples"]["default"]
    documents.document_compose(version=version, data=sample, language="en")  # warm
    cpu = worker_cpu_s()
    started = time.perf_counter()
    for _ in range(n):
        documents.document_compose(version=version, data=sample, language="en")
    return n / (time.perf_counter() - started), (worker_cpu_s() - cpu) / n


def _render_child(barrier, n: int, done) -> None:
    from documents import selectors
    from documents import services as documents

    version = selectors.version_for_sending(code="usage_statement")
    sample = version.content["samples"]["default"]
    documents.document_compose(version=version, data=sample, language="en")  # warm
    barrier.wait()
    for _ in range(n):
        documents.document_compose(version=version, data=sample, language="en")
    done.put(time.perf_counter())


def render_rate_parallel(processes: int, n: int) -> float:
    """Documents a second of `processes` processes each composing the sample `n` times at
    once: what the render cluster's workers could do if they did nothing but render."""
    import multiprocessing

    from django.db import connections

    from documents.sandbox import shutdown_workers

    shutdown_workers()
    connections.close_all()
    context = multiprocessing.get_context("fork")
    barrier, done = context.Barrier(processes + 1), context.Queue()
    children = [
        context.Process(target=_render_child, args=(barrier, n, done)) for _ in range(processes)
    ]
    for child in children:
        child.start()
    barrier.wait(timeout=300)
    started = time.perf_counter()
    ends = [done.get(timeout=1800) for _ in children]
    for child in children:
        child.join()
    return processes * n / (max(ends) - started)


# Where a statement PDF's time goes: (label, file fragment, function) whose cumulative time
# is reported; the template's own work is print_html less the charts.
PROFILE_PARTS = [
    ("compose HTML: template + charts (print_html)", "documents/composition.py", "print_html"),
    ("  of which the two charts (pygal SVG)", "documents/composition.py", "chart"),
    ("lay out (WeasyPrint HTML.render)", "weasyprint/__init__.py", "render"),
    ("write the PDF (WeasyPrint write_pdf)", "weasyprint/document.py", "write_pdf"),
    ("append the terms insert (pypdf)", "pypdf/_writer.py", "append"),
    ("seal (pypdf write)", "documents/rendering.py", "_to_bytes"),
]


def profile_render(n: int) -> None:
    """Profile `n` renders of the statement sample in this process (the render worker's code
    without its process boundary) and say where the time goes."""
    import cProfile
    import pstats
    import re

    from documents import selectors
    from documents import services as documents
    from documents.bundle import locale_for
    from documents.composition import PRINT_DRAWING, composer_for
    from documents.rendering import engine_for

    version = selectors.version_for_sending(code="usage_statement")
    assert version is not None
    sample = version.content["samples"]["default"]
    sources, locale = documents.version_sources(version, "en"), locale_for("en")
    composer, engine = composer_for(sources, locale=locale), engine_for(sources, locale=locale)
    html = composer.print_html(sample, drawing=PRINT_DRAWING)
    engine.render(html)  # warm: fonts, the terms insert laid out for this letter length
    profiler = cProfile.Profile()
    started = time.perf_counter()
    for _ in range(n):
        profiler.runcall(lambda: engine.render(composer.print_html(sample, drawing=PRINT_DRAWING)))
    total = (time.perf_counter() - started) / n
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    svgs = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    print(
        f"profile of one statement PDF (mean of {n}, profiler on): {total * 1000:.0f} ms; "
        f"HTML {len(html) / 1024:.0f} KiB of which {len(svgs)} charts "
        f"{sum(map(len, svgs)) / 1024:.0f} KiB; {load()}"
    )
    for label, fragment, function in PROFILE_PARTS:
        spent = max(
            (
                ct
                for (path, _, name), (_, _, _, ct, _) in stats.items()
                if name == function and path.endswith(fragment)
            ),
            default=0.0,
        )
        print(f"  {label:<48} {spent / n * 1000:7.0f} ms  {spent / n / total:5.0%}")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


def composed_count() -> int:
    from notifications.models import Communication

    return Communication.objects.filter(source="statement_run", document__isnull=False).count()


def start_queue_cluster(served: dict, queue: str | None, workdir: Path) -> subprocess.Popen:
    queue_env = {**served, "Q_CLUSTER_NAME": queue} if queue else served
    return start_cluster(queue_env, workdir / f"qcluster-{queue or 'default'}.log")


def bill_run(
    client: Client, clusters: dict[str, subprocess.Popen], *, compose: bool, every: int
) -> tuple[float, int, int, list[tuple[int, float, float]]]:
    """Start a run for the period with `POST /api/v1/statement-runs` and wait for it: until
    it is completed and, with `compose`, every handed statement has its archived PDF. Every
    `every` statements, the resident set of the default cluster (which works the run's
    chunks) and of the render cluster (which composes the PDFs). Returns (statements a
    second, handed, held, [(statements done, default MB, render MB)])."""
    from django_q.models import Failure

    started = time.perf_counter()
    answer = client.request(
        "POST",
        "/api/v1/statement-runs",
        {"period_start": PERIOD[0].isoformat(), "period_end": PERIOD[1].isoformat()},
    )
    assert answer.status == 201, answer.body[:500]
    run = json.loads(answer.body)
    rss: list[tuple[int, float, float]] = []
    next_mark = 0
    while True:
        summary = json.loads(client.request("GET", f"/api/v1/statement-runs/{run['id']}").body)
        counts = summary["statements"]
        done = summary["done"]
        composed = composed_count() if compose else counts["handed"]
        progress = min(done, composed + counts["held"]) if compose else done
        if progress >= next_mark:
            default_mb = group_rss_mb(clusters["default"].pid)
            render_mb = group_rss_mb(clusters["render"].pid) if "render" in clusters else 0.0
            rss.append((progress, default_mb, render_mb))
            spent = time.perf_counter() - started
            print(
                f"  {progress} statements in {spent:.0f} s ({progress / spent:.2f}/s): "
                f"cluster RSS default {default_mb:.0f} MB, render {render_mb:.0f} MB; {load()}",
                flush=True,
            )
            next_mark = (progress // every + 1) * every
        if summary["state"] == "completed" and (not compose or composed >= counts["handed"]):
            elapsed = time.perf_counter() - started
            break
        if any(p.poll() is not None for p in clusters.values()):
            raise SystemExit("a cluster died; see its log")
        failed = Failure.objects.values_list("func", "result").first()
        if failed:
            raise SystemExit(f"a task failed: {failed}")
        time.sleep(1)
    rss.append((summary["done"], group_rss_mb(clusters["default"].pid), rss[-1][2]))
    return counts["handed"] / elapsed, counts["handed"], counts["held"], rss


def reprint_identical(ops, statements: list) -> bool:
    """Reprint each statement from its stored inputs: every PDF must come back byte for byte
    (statement_reprint raises on a bill that no longer matches; the check records the PDF)."""
    from notifications.statements import services

    for statement in statements:
        original = statement.communication.document
        copy = services.statement_reprint(statement=statement, by=ops)
        check = original.checks.order_by("-pk").first()
        if copy is None or check is None or not check.matched:
            print(f"  reprint of statement {statement.pk} differs")
            return False
    return True


def sample_and_reprint(served: dict, workdir: Path, ops, sample: int) -> tuple[float, bool]:
    """Start the render cluster on the run's queued PDFs and time the first `sample` of them
    (then stop it), then reprint one from its stored inputs: the PDF must come back byte for
    byte."""
    from notifications.statements.models import Statement

    started = time.perf_counter()
    render = start_queue_cluster(served, "render", workdir)
    try:
        while composed_count() < sample:
            if render.poll() is not None:
                raise SystemExit("the render cluster died; see its log")
            time.sleep(0.5)
        rate = composed_count() / (time.perf_counter() - started)
    finally:
        stop(render)
    statement = Statement.objects.filter(communication__document__isnull=False).first()
    assert statement is not None, "no statement was composed"
    return rate, reprint_identical(ops, [statement])


def rss_table(rss: list[tuple[int, float, float]]) -> str:
    return "\n".join(
        f"  {done:>7} {default_mb:>8.0f} {render_mb:>8.0f}" for done, default_mb, render_mb in rss
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--days", type=int, default=62, help="readings per meter, in days")
    parser.add_argument("--intake", type=int, default=300_000, help="readings posted")
    parser.add_argument("--render", type=int, default=20, help="documents for the baseline")
    parser.add_argument(
        "--issue-size",
        action="store_true",
        help="the issue's run: 10,000 customers with a year of half-hourly readings",
    )
    parser.add_argument(
        "--with-pdfs",
        action="store_true",
        help="with --issue-size: the render cluster composes every PDF during the run",
    )
    parser.add_argument(
        "--shape", choices=["csv", "rows", "objects"], default="csv", help="intake body"
    )
    parser.add_argument("--call", type=int, default=100_000, help="readings a call")
    parser.add_argument("--intake-only", action="store_true", help="stop after the intake")
    parser.add_argument(
        "--no-compose",
        action="store_true",
        help="no render cluster during the run: it computes, holds and hands every statement; "
        "then --sample PDFs are composed by the render cluster",
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=5,
        help="PDFs rendered with --no-compose; statements reprinted (at random) without it",
    )
    parser.add_argument(
        "--profile-render",
        type=int,
        default=0,
        metavar="N",
        help="profile N renders of the statement sample and say where the time goes; stop",
    )
    parser.add_argument("--every", type=int, default=100, help="statements between RSS lines")
    parser.add_argument("--render-workers", type=int, default=2, help="Q_RENDER_WORKERS")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn workers")
    args = parser.parse_args()
    if args.issue_size:
        args.customers, args.days, args.no_compose = 10_000, 366, not args.with_pdfs
    # Killed from outside: still stop what was started and drop the database (finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    name = f"ccm_bench_statements_{os.getpid()}"
    workdir = Path(tempfile.mkdtemp(prefix="bench-statements-"))
    web = stub = None
    clusters: dict[str, subprocess.Popen] = {}
    created = False
    try:
        stub, stub_url = start_stub(workdir, 24 * 3600)
        sql_admin(f'CREATE DATABASE "{name}"')
        created = True
        env = {
            **os.environ,
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{name}",
            "DJANGO_SETTINGS_MODULE": "ccm.settings",
            "SECRET_KEY": secrets.token_urlsafe(64),
            "CACHE_URL": cache_url("redis", name),
            "MEDIA_ROOT": str(workdir / "media"),
            "LOG_LEVEL": "WARNING",
            "Q_SYNC": "false",
            "CCM_TASK_QUEUES": ",".join(QUEUES),
            "Q_WORKERS": "1",
            "Q_RENDER_WORKERS": str(args.render_workers),
            # A chunk's compose (100 PDFs) on a loaded machine can take longer than 120 s.
            "Q_TIMEOUT": "3600",
            "Q_RETRY": "3660",
            "EMAIL_BACKEND": "anymail.backends.postmark.EmailBackend",
            "POSTMARK_SERVER_TOKEN": TOKEN,
            "POSTMARK_API_URL": stub_url,
            # The benchmark measures capacity, not an integrator's quota.
            "API_THROTTLE_USER": "10000000/min",
            "API_THROTTLE_API_KEY": "10000000/min",
        }
        if args.no_compose:
            # A compose task's PDFs are recorded together: tasks of --sample make the sample's
            # PDFs visible as soon as they are made, not after a chunk of 100.
            env["CCM_BULK_CHUNK"] = str(max(1, args.sample))
        os.environ.update(production_env(env))
        import django

        django.setup()
        from ccm.api.auth import api_key_create
        from notifications.statements.models import Meter

        print(machine_line())
        print(
            f"setup: {args.customers} customers x {args.days} days, gunicorn workers="
            f"{args.web_workers}, clusters: default (Q_WORKERS=1) + dispatch + render "
            f"(Q_RENDER_WORKERS={args.render_workers}"
            f"{', after the run' if args.no_compose else ''}), Postmark stub; {load()}",
            flush=True,
        )
        t0 = time.perf_counter()
        ops = prepare(customers=args.customers, days=args.days, workdir=workdir)
        print(f"prepared in {time.perf_counter() - t0:.0f} s; {load()}", flush=True)
        if args.profile_render:
            profile_render(args.profile_render)
            return
        render, render_cpu = render_rate(args.render) if args.render else (0.0, 0.0)
        print(
            f"render baseline: {render:.2f} documents/s, {render_cpu:.3f} CPU s each in the "
            f"render worker (document_compose of the usage_statement sample, in this process, "
            f"alone); {load()}",
            flush=True,
        )
        render_all = render_rate_parallel(args.render_workers, args.render) if args.render else 0.0
        print(
            f"render baseline, {args.render_workers} processes at once (the render cluster's "
            f"workers doing nothing else): {render_all:.2f} documents/s; {load()}",
            flush=True,
        )
        served = {**os.environ}
        web, port = start_gunicorn(served, workdir / "gunicorn.log", workers=args.web_workers)
        key = api_key_create(
            name="bench", scopes=["readings:write", "statements:read", "statements:write"]
        ).key
        rate = replay = 0.0
        if args.intake:
            raw = RawClient(port, key)
            meters = list(Meter.objects.order_by("pk").values_list("serial", flat=True))
            before = datetime(2026, 2, 1, tzinfo=UTC) - timedelta(days=args.days)
            sent = {"before": before, "shape": args.shape, "call": args.call}
            rate = intake(raw, meters, args.intake, **sent)
            replay = intake(raw, meters, args.intake, **sent)
            print(
                f"intake over HTTP: {args.intake} readings as {args.shape}, {args.call:,} a "
                f"call: {rate:,.0f}/s; again {replay:,.0f}/s; {load()}",
                flush=True,
            )
        if args.intake_only:
            return
        queues = (None, "dispatch") if args.no_compose else (None, *QUEUES)
        for queue in queues:
            clusters[queue or "default"] = start_queue_cluster(served, queue, workdir)
        for queue in queues:
            wait_for_clusters(list(clusters.values()), queue=queue)
        print(f"bill run: POST /api/v1/statement-runs for {PERIOD[0]}..{PERIOD[1]}", flush=True)
        client = Client(port, headers={"Authorization": f"Api-Key {key}"})
        run_rate, handed, held, rss = bill_run(
            client, clusters, compose=not args.no_compose, every=args.every
        )
        what = "computed and handed (PDFs queued)" if args.no_compose else "composed with PDF"
        print(f"bill run: {handed} statements {what}, {held} held: {run_rate:.2f}/s; {load()}")
        print("  RSS MB per statements done:\n  statements  default   render\n" + rss_table(rss))
        quarter = max(1, len(rss) // 4)
        first_q = max(mb for _, mb, _ in rss[:quarter])
        last_q = max(mb for _, mb, _ in rss[-quarter:])
        render_first = max(mb for _, _, mb in rss[:quarter])
        render_last = max(mb for _, _, mb in rss[-quarter:])
        extra = ""
        if args.no_compose:
            sampled, identical = sample_and_reprint(served, workdir, ops, args.sample)
            print(
                f"sample: {args.sample} PDFs by the render cluster at {sampled:.2f}/s (its "
                f"start included); reprint byte-identical: {identical}; {load()}"
            )
            extra = f" sample_render={sampled:.2f} reprint_identical={identical}"
        else:
            from notifications.statements.models import Statement

            chosen = list(
                Statement.objects.filter(communication__document__isnull=False).order_by("?")[
                    : args.sample
                ]
            )
            identical = reprint_identical(ops, chosen)
            print(f"reprint of {len(chosen)} statements at random byte-identical: {identical}")
            extra = f" reprinted={len(chosen)} reprint_identical={identical}"
        print(machine_line())
        print(load())
        print(
            f"statements: intake={rate:.0f} replay={replay:.0f} run={run_rate:.2f} "
            f"render={render:.2f} render_cpu_s={render_cpu:.3f} "
            f"run_vs_render={run_rate / (render or 1):.2f} render_all={render_all:.2f} "
            f"run_vs_render_all={run_rate / (render_all or 1):.2f} handed={handed} "
            f"held={held} default_rss_mb={first_q:.0f}→{last_q:.0f} "
            f"render_rss_mb={render_first:.0f}→{render_last:.0f}{extra}"
        )
    finally:
        stop(web)
        for process in clusters.values():
            stop(process)
        stop(stub)
        throwaway_database_drop(name, created=created)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
