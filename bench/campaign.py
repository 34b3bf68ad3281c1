"""Campaign benchmark through the public entry points: segment preview at scale, a regulatory
campaign end to end, throttle accuracy, and (optionally) a kill -9 of the cluster mid-send.

    .venv/bin/python bench/campaign.py                          # 200,000 customers, send 2,000
    .venv/bin/python bench/campaign.py --customers 1000000 --send 100000 --kill-after 30000
    .venv/bin/python bench/campaign.py --customers 20000 --send 500 --rate 600 --throttle-seconds 30
    .venv/bin/python bench/campaign.py --customers 122000 --send 10000 --rounds 3 --skip-throttle
        # campaign against batch endpoint: a warm-up, then 3 rounds in alternating order
    .venv/bin/python bench/campaign.py --customers 20000 --send 2000 --mix --kill-after 800 \
        --skip-batch --skip-throttle        # email, SMS and print; SIGKILL mid-send
    .venv/bin/python bench/campaign.py --customers 1000000 --preview-only --database ccm_1m --keep
        # previews only; run again with the same --database, the million customers are reused

The project is served by gunicorn with production settings on a throwaway PostgreSQL database,
with a real django-q2 cluster (`manage.py qcluster`, Q_WORKERS=2) sending through Anymail's
Postmark backend to the loopback Postmark stub (bench/postmark_stub.py), as bench/dispatch.py
does. People work as they would: the author, the second reviewer and operations sign in through
`/login/` and call the REST API with their sessions (CSRF token and all):

1. `--customers` synthetic customers made in SQL (attributes with a product and a postcode, an
   email for 70 %, a phone for 30 %, a postal address for 80 %), then
   `GET /api/v1/segments/{id}/preview` of a segment ("variable_mortgage" in N2: 1/40 of the
   customers) and of everyone, best of 3 each: count, sample and channel breakdown.
2. A warm-up, not counted (`--warm-up`, 200 messages): a small campaign and a small batch (as
   in 3 and 4), so that the cluster's render and compose workers have started and the caches
   and PostgreSQL's buffers are warm; on a cold cluster whichever side ran first was slower.
3. `--rounds` rounds (1) of a campaign and the batch endpoint, `--send` messages each, each on
   customers of its own (Layout), in alternating order (round 1 campaign first, round 2 batch
   first, …); the task queue drained before each side. The campaign: to customers with
   email: `POST /api/v1/segments`, `POST /api/v1/campaigns`, `…/submit` (author),
   `POST /api/v1/approvals/{id}/decide` (reviewer2), `…/schedule` (operations); timed from the
   schedule call until every delivery is `sent`, then checked at the stub: one message per
   customer, none lost, none duplicated.
   With `--kill-after N` the whole cluster is killed with SIGKILL once N recipients of the
   first round's campaign have been handed, and a new one started: the campaign must still end
   with exactly one message each.
   With `--mix` the campaigns' customers reach different channels (MIX_SQL): email; SMS (to
   the loopback Twilio stub) with a letter; a letter alone (the open print batch); nothing
   durable (unreachable, with the reason). It sends the benchmark's one-page regulatory letter
   (bench/library/rate_notice_light) and checks what was sent per channel against the channel
   plan the reviewer signed, and each provider for lost and duplicated messages.
4. The batch endpoint: the same number of messages through `POST /api/v1/communications/batch`
   (bench/dispatch.py's batch mode), timed from the first call until every delivery is sent:
   the pipeline's batch figure. Both sides are timed (wall clock) and costed in CPU (CpuMeter:
   gunicorn's master and workers, the qcluster's process tree and the benchmark database's
   PostgreSQL backends, each process sampled every 0.25 s from /proc, its last figure kept when
   it ends; not autovacuum, other databases or this script's own sessions), which a loaded
   machine hardly distorts. Each round prints both sides' messages/s and CPU ms per message
   (per group: web, cluster, postgres) and the ratios; then the medians over the rounds.
5. Throttle accuracy: a campaign with an email throttle of `--rate`/min lasting about
   `--throttle-seconds`; messages handed per minute (from the recipients' handed_at) vs the cap.

Last line (send_per_s, batch_per_s and the *_cpu_ms: medians over the rounds; ratio and
cpu_ratio: all rounds' messages over all their seconds, or CPU, on each side; ratio_*: of the
per-round ratios; lost and duplicated: every campaign's, the warm-up's too):
campaign: preview_s=<s> preview_all_s=<s> customers=<n> send_per_s=<n> batch_per_s=<n>
  ratio=<campaign/batch> cpu_ratio=<batch CPU/campaign CPU per message> rounds=<n>
  ratio_median=<r> ratio_min=<r> ratio_max=<r> cpu_ratio_median=<r>
  campaign_cpu_ms=<ms/msg> batch_cpu_ms=<ms/msg> lost=<n> duplicated=<n>
  killed=<yes|no> throttle_rate=<per min> throttle_error_pct=<%> [mix=<ok|WRONG>]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from dispatch import TOKEN, count_at_stub, run_mode, start_stub, wait_for_cluster  # noqa: E402
from serve import (  # noqa: E402
    ADMIN_URL,
    machine_line,
    production_env,
    sql_admin,
    start_cluster,
    start_gunicorn,
    stop,
    throwaway_database_drop,
)

from tests.notifications.twilio_stub import TwilioStub  # noqa: E402

# The same customer references bench/dispatch.py sends to ("B-000001"), so its batch mode can
# run on customers of this database.
CUSTOMERS_SQL = """
INSERT INTO notifications_customer
  (source_system, external_ref, name, salutation, language, time_zone, postal_address,
   postal_address_valid, attributes, created_at, updated_at)
SELECT 'default', 'B-' || CASE WHEN g < 1000000 THEN lpad(g::text, 6, '0') ELSE g::text END,
  'Customer ' || g, '', CASE WHEN g %% 5 = 0 THEN 'de' ELSE 'en' END, '',
  CASE WHEN g %% 5 < 4 THEN jsonb_build_array(g || ' Main Street', 'N' || (g %% 10) || ' 1AA')
       ELSE '[]'::jsonb END,
  g %% 5 < 4,
  jsonb_build_object(
    'product', (ARRAY['variable_mortgage','fixed_mortgage','savings','current'])[1 + g %% 4],
    'postcode', 'N' || (g %% 10) || ' 1AA',
    'reference', 'DOC-' || g, 'document_title', 'Rate change', 'document_date', '2026-04-12',
    'portal_url', 'https://my.northwind.example/documents/DOC-' || g),
  now(), now()
FROM generate_series(%(first)s, %(last)s) AS g
"""
# An email for 70 % (and for everyone in [all_email_from, all_email_to): the customers the
# batch-endpoint comparison sends to), a phone for the others.
CONTACTS_SQL = """
WITH c AS (
  SELECT id, substr(external_ref, 3)::int AS g FROM notifications_customer
), e AS (
  SELECT id, g %% 10 < 7 OR g >= %(all_email_from)s AND g < %(all_email_to)s AS email FROM c
)
INSERT INTO notifications_contactpoint (customer_id, kind, value, is_primary, valid,
  invalid_reason, created_at)
SELECT id, CASE WHEN email THEN 'email' ELSE 'phone' END,
  CASE WHEN email THEN 'c' || id || '@example.org'
       ELSE '+447700' || lpad((id %% 1000000)::text, 6, '0') END,
  true, true, '', now()
FROM e
"""
TWILIO_SID = "AC" + "0" * 32
TWILIO_TOKEN = "bench-twilio-token"  # noqa: S105 - the loopback stub's token
# --mix: the counted rounds' campaign customers (Layout) reach different channels. A
# regulatory notice goes by email where there is one (g mod 10 = 0-5), by SMS plus a letter
# (SMS is not a durable medium) to a phone and a postal address (6, 7), by letter alone to a
# postal address alone (8); a phone without a postal address (9) reaches no durable medium:
# unreachable, recorded with the reason.
MIX_SQL = """
WITH c AS (
  SELECT id, substr(external_ref, 3)::int AS g FROM notifications_customer
), d AS (
  DELETE FROM notifications_contactpoint p USING c
  WHERE p.customer_id = c.id AND c.g >= %(from)s AND c.g < %(upto)s AND c.g %% 10 = 8
)
UPDATE notifications_contactpoint p
SET kind = 'phone', value = '+447700' || lpad((c.id %% 1000000)::text, 6, '0')
FROM c WHERE p.customer_id = c.id AND c.g >= %(from)s AND c.g < %(upto)s AND c.g %% 10 = 6
"""
MIX_TEMPLATE = "rate_notice_light"  # bench/library: print, email, SMS; a one-page letter
MIX_CHANNELS = ("email", "sms", "print")


def email_span(n: int) -> int:
    """Customers holding n with an email among those a 70 % share gives one (g mod 10 < 7)."""
    return -(-n // 7) * 10


@dataclass(frozen=True)
class Layout:
    """Which customers each run sends to, each run on its own (B-000001 on): the warm-up's
    campaign, each round's campaign, the warm-up's and each round's batch (customers who all
    have an email, as bench/dispatch.py's batch mode needs), then the throttled campaign's."""

    send: int
    rounds: int
    warm_up: int
    mix: bool
    batch: bool
    throttled: int

    @property
    def campaign_span(self) -> int:
        # --mix sends to every customer of its range, whatever they can be reached by.
        return self.send if self.mix else email_span(self.send)

    @property
    def campaigns_from(self) -> int:
        return 1 + email_span(self.warm_up)

    def campaign_from(self, round_: int) -> int:
        return self.campaigns_from + round_ * self.campaign_span

    @property
    def batch_from(self) -> int:
        return self.campaign_from(self.rounds)

    def batch_round_from(self, round_: int) -> int:
        return self.batch_from + self.warm_up + round_ * self.send

    @property
    def throttle_from(self) -> int:
        return self.batch_round_from(self.rounds) if self.batch else self.batch_from

    @property
    def customers(self) -> int:
        """How many customers the runs need."""
        return self.throttle_from - 1 + self.throttled


# The benchmark's own connections to PostgreSQL (libpq's PGAPPNAME, set in this process only):
# its polling and the CPU meter's queries are not the work measured.
OWN_APPLICATION = "ccm-bench-client"
# The backends doing the measured work: client sessions of the benchmark's database and their
# parallel workers; not autovacuum, not other databases, not this script's own sessions.
BACKENDS_SQL = """
SELECT pid FROM pg_stat_activity
WHERE datname = %s AND backend_type IN ('client backend', 'parallel worker')
  AND coalesce(application_name, '') <> %s
"""
SAMPLE_S = 0.25
GROUPS = ("web", "cluster", "postgres")


def _descendants(root: int) -> list[int]:
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                todo += [int(child) for child in task.read_text().split()]
            except OSError:
                continue
    return found


def _process_cpu(pid: int) -> tuple[tuple[int, int], int] | None:
    """((pid, start time), clock ticks of CPU the process itself has used), None once it is
    gone. Its reaped children's ticks (cutime, cstime) are left out: each child is sampled on
    its own, and counting both would count a reaped child twice."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (pid, int(fields[19])), int(fields[11]) + int(fields[12])  # starttime; utime stime


class CpuMeter:
    """CPU seconds the served project used over an interval, per group: `web` (gunicorn's master
    and workers), `cluster` (the qcluster's process tree, render and compose workers included)
    and `postgres` (the backends of the benchmark's database).

    A thread samples every process of the groups every SAMPLE_S while an interval is open and
    keeps the last figure seen for each process, so one that ends in between (a worker killed
    or recycled, a closed connection's backend) still counts, all but its last SAMPLE_S at most;
    a single reading at each end would lose it, or, through its parent's cumulative children's
    time, count its whole life, from before the interval too. Processes are keyed by pid and
    start time, so a reused pid is a new process."""

    def __init__(self, roots: Callable[[], dict[str, subprocess.Popen | None]], db_name: str):
        self.roots = roots
        self.db_name = db_name
        self._lock = threading.Lock()
        self._open = threading.Event()
        self._done = threading.Event()
        self._first: dict[tuple[int, int], int] = {}
        self._last: dict[tuple[int, int], tuple[str, int]] = {}
        self._connection: Any = None  # psycopg's, opened by the first sample
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)
        self._thread.start()

    def _backends(self) -> list[int]:
        import psycopg

        if self._connection is None or self._connection.closed:
            self._connection = psycopg.connect(
                ADMIN_URL, autocommit=True, application_name=OWN_APPLICATION
            )
        rows = self._connection.execute(BACKENDS_SQL, [self.db_name, OWN_APPLICATION])
        return [pid for (pid,) in rows.fetchall()]

    def _sample(self, *, baseline: bool = False) -> None:
        group_of = {}
        for group, process in self.roots().items():
            if process is not None and process.poll() is None:
                group_of.update(dict.fromkeys(_descendants(process.pid), group))
        group_of.update(dict.fromkeys(self._backends(), "postgres"))
        for pid, group in group_of.items():
            read = _process_cpu(pid)
            if read is None:
                continue
            key, ticks = read
            # A process first seen after the interval opened started within it.
            self._first.setdefault(key, ticks if baseline else 0)
            self._last[key] = (group, ticks)

    def _run(self) -> None:
        while not self._done.wait(SAMPLE_S):
            if self._open.is_set():
                with self._lock:
                    self._sample()

    def begin(self) -> None:
        with self._lock:
            self._first, self._last = {}, {}
            self._sample(baseline=True)
        self._open.set()

    def end(self) -> dict[str, float]:
        """CPU seconds per group since `begin`."""
        self._open.clear()
        with self._lock:
            self._sample()
            used = dict.fromkeys(GROUPS, 0)
            for key, (group, ticks) in self._last.items():
                used[group] += ticks - self._first[key]
        return {group: t / os.sysconf("SC_CLK_TCK") for group, t in used.items()}

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        if self._connection is not None:
            self._connection.close()


def cpu_line(cpu: dict[str, float], n: int) -> str:
    """CPU ms per message in all and per group."""
    each = ", ".join(f"{group} {cpu[group] * 1000 / n:.2f}" for group in GROUPS)
    return f"CPU {sum(cpu.values()) * 1000 / n:.2f} ms/msg ({each})"


def ref(i: int) -> str:
    return f"B-{i:06d}"


def prepare(n: int, layout: Layout) -> float:
    """Migrate, the demo's users and published library (and, with --mix, the benchmark's
    letter), and n customers made in SQL."""
    from django.core.management import call_command
    from django.db import connection

    from ccm.demo import seed_users
    from documents.demo import seed_library

    call_command("migrate", verbosity=0)
    seed_users()
    seed_library()
    if layout.mix:
        seed_library(ROOT / "bench" / "library")
    started = time.perf_counter()
    with connection.cursor() as cursor:
        for first in range(1, n + 1, 250_000):
            cursor.execute(CUSTOMERS_SQL, {"first": first, "last": min(n, first + 249_999)})
        cursor.execute(
            CONTACTS_SQL,
            {"all_email_from": layout.batch_from, "all_email_to": layout.throttle_from},
        )
        if layout.mix:
            cursor.execute(MIX_SQL, {"from": layout.campaigns_from, "upto": layout.batch_from})
        cursor.execute("ANALYZE")
    return time.perf_counter() - started


def database_exists(name: str) -> bool:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
    return found is not None


def reuse(db_name: str, n: int) -> None:
    """A kept database: migrated to this code, and holding exactly the customers asked for."""
    from django.core.management import call_command

    from notifications.models import Customer

    call_command("migrate", verbosity=0)
    have = Customer.objects.count()
    if have != n:
        raise SystemExit(f"{db_name} holds {have} customers, not {n}: drop it or use another")
    print(f"  {n} customers of the kept database {db_name}")


class Session:
    """A person signed in through /login/, calling the REST API with their session cookie and
    CSRF token, as the back-office's own pages do."""

    def __init__(self, port: int, username: str) -> None:
        from ccm.demo import DEMO_PASSWORD

        self.port = port
        self.cookies: dict[str, str] = {}
        page = self._call("GET", "/login/")
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page[1])
        assert token, "no CSRF token on the login page"
        form = {"username": username, "password": DEMO_PASSWORD}
        form["csrfmiddlewaretoken"] = token.group(1).decode()
        status, _ = self._call(
            "POST",
            "/login/",
            urlencode(form).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        if status != 302 or "sessionid" not in self.cookies:
            raise SystemExit(f"{username} could not sign in (HTTP {status})")

    def _call(self, method: str, path: str, body: bytes | None = None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        sent = {
            "Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items()),
            "Referer": f"http://127.0.0.1:{self.port}/",
            **(headers or {}),
        }
        if "csrftoken" in self.cookies:
            sent["X-CSRFToken"] = self.cookies["csrftoken"]
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        for name, value in response.getheaders():
            if name.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                self.cookies[key.strip()] = rest.split(";", 1)[0]
        data = response.read()
        conn.close()
        return response.status, data

    def api(self, method: str, path: str, body: dict | None = None, *, expect=(200, 201)):
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        status, data = self._call(method, f"/api/v1/{path}", payload, headers)
        if status not in expect:
            raise SystemExit(f"{method} /api/v1/{path}: HTTP {status} {data[:400]!r}")
        return json.loads(data) if data else {}


def preview(author: Session, n: int) -> tuple[float, float]:
    """Best of 3 previews of a 1/40 segment and of everyone, through the API."""
    timings = {}
    for name, definition in (
        ("N2 variable mortgages", {"attributes": {"product": "variable_mortgage"}}),
        ("everyone", {}),
    ):
        if name != "everyone":
            definition["postcode_prefixes"] = ["N2"]
        segment = author.api("POST", "segments", {"name": name, "definition": definition})
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            result = author.api("GET", f"segments/{segment['id']}/preview?channels=email,sms,print")
            best = min(best, time.perf_counter() - started)
        timings[name] = best
        breakdown = result["breakdown"]
        how = f"estimated from {breakdown['sampled']}" if breakdown.get("estimated") else "exact"
        print(
            f"  preview of {name}: {result['count']} of {n} customers, best {best:.2f} s; "
            f"breakdown ({how}) {breakdown['combinations']}",
            flush=True,
        )
    return timings["N2 variable mortgages"], timings["everyone"]


def approved_campaign(
    people: dict[str, Session],
    name: str,
    refs: list[str],
    throttle=None,
    template: str = "document_ready",
):
    author, reviewer = people["author"], people["reviewer2"]
    segment = author.api("POST", "segments", {"name": name, "definition": {"references": refs}})
    body = {
        "name": name,
        "template": template,
        "segment": segment["id"],
        "category": "regulatory",
        "throttle": throttle or {},
    }
    campaign = author.api("POST", "campaigns", body)
    started = time.perf_counter()
    author.api("POST", f"campaigns/{campaign['id']}/submit", {})
    print(f"  {name}: {len(refs)} recipients frozen in {time.perf_counter() - started:.1f} s")
    pending = reviewer.api("GET", "approvals?state=pending&purpose=campaign&page_size=100")
    approval = next(
        a
        for a in pending["results"]
        if a["subject_type"] == "campaign" and str(a["subject_id"]) == str(campaign["id"])
    )
    reviewer.api("POST", f"approvals/{approval['id']}/decide", {"decision": "approve"})
    return campaign["id"]


def handed(campaign_id: int) -> int:
    from notifications.campaigns.models import CampaignRecipient

    return CampaignRecipient.objects.filter(campaign_id=campaign_id, state="handed").count()


def sent_count(campaign_id: int) -> int:
    from notifications.models import Delivery

    return Delivery.objects.filter(
        communication__correlation_id=f"campaign:{campaign_id}", state="sent"
    ).count()


def planned_deliveries(campaign_id: int) -> int:
    """Deliveries the approved channel plan expects: one per customer and channel."""
    from notifications.campaigns.models import Campaign

    plan = Campaign.objects.get(pk=campaign_id).channel_plan
    return sum((plan.get("channels") or {}).values())


@dataclass
class Served:
    """The running project a benchmark run sends through, and how its CPU is read."""

    people: dict[str, Session]
    port: int
    cluster_box: list
    env: dict
    workdir: Path
    timeout: float
    meter: CpuMeter


@dataclass
class Side:
    """One timed run of n messages: messages/s and CPU seconds per group."""

    n: int
    per_s: float
    cpu: dict[str, float]

    @property
    def cpu_ms(self) -> float:
        return sum(self.cpu.values()) * 1000 / self.n


def send(
    served: Served,
    n: int,
    first: int,
    *,
    kill_after: int = 0,
    mix: bool = False,
    name: str = "throughput",
):
    """A campaign to n customers with email from customer `first` on (with `mix`: the n
    customers from `first`, of every kind, see MIX_SQL), from the schedule call until every
    planned delivery is sent; (campaign id, Side, killed)."""
    if mix:
        refs = [ref(i) for i in range(first, first + n)]
        campaign_id = approved_campaign(served.people, name, refs, template=MIX_TEMPLATE)
    else:
        refs = [ref(i) for i in range(first, first + email_span(n)) if i % 10 < 7][:n]
        campaign_id = approved_campaign(served.people, name, refs)
    # Email only: one delivery per customer. Mixed: what the signed channel plan counts.
    expected = planned_deliveries(campaign_id) if mix else n
    served.meter.begin()
    started = time.perf_counter()
    served.people["ops"].api("POST", f"campaigns/{campaign_id}/schedule", {})
    killed = False
    last_print = 0.0
    while True:
        elapsed = time.perf_counter() - started
        done = sent_count(campaign_id)
        if done >= expected:
            break
        if kill_after and not killed and handed(campaign_id) >= kill_after:
            cluster = served.cluster_box[0]
            os.killpg(cluster.pid, signal.SIGKILL)
            cluster.wait()
            print(
                f"  {elapsed:6.1f} s: cluster killed (SIGKILL) after {handed(campaign_id)} handed"
            )
            served.cluster_box[0] = start_cluster(served.env, served.workdir / "qcluster2.log")
            killed = True
        if elapsed - last_print >= 10:
            print(
                f"  {elapsed:6.1f} s: {handed(campaign_id)} handed, {done} of {expected} "
                "deliveries sent",
                flush=True,
            )
            last_print = elapsed
        if elapsed > served.timeout:
            print(f"  timed out with {done} of {expected} sent")
            break
        # As often as bench/dispatch.py's batch mode looks: neither side is seen done later.
        time.sleep(0.25)
    elapsed = time.perf_counter() - started
    cpu = served.meter.end()
    done = sent_count(campaign_id)
    side = Side(n, (n if done >= expected else 0) / elapsed, cpu)
    print(
        f"  {done} of {expected} deliveries sent to {n} customers in {elapsed:.1f} s: "
        f"{side.per_s:.0f} customers/s; {cpu_line(cpu, n)}",
        flush=True,
    )
    return campaign_id, side, killed


def batch(served: Served, n: int, first: int) -> Side:
    """n messages through the batch endpoint (bench/dispatch.py's batch mode) to the customers
    from `first` on, timed from the first call until every delivery is sent."""
    served.meter.begin()
    per_s, _, _ = run_mode("batch", first, n, served.port, served.cluster_box[0], served.timeout)
    side = Side(n, per_s, served.meter.end())
    print(f"  {cpu_line(side.cpu, n)}", flush=True)
    return side


def settle(timeout: float = 120) -> None:
    """Until the task queue is empty (what one side left queued, e.g. a campaign's closing
    tasks, runs before the other side is measured), then a second for the last to finish."""
    from django_q.models import OrmQ

    deadline = time.monotonic() + timeout
    while OrmQ.objects.exists() and time.monotonic() < deadline:
        time.sleep(0.25)
    time.sleep(1)


def channel_mix(campaign_id: int, twilio, stub_url: str) -> tuple[bool, int, int]:
    """The mixed campaign's outcome per channel against its signed channel plan, and each
    channel's provider checked for lost and duplicated messages: the Postmark stub (email), the
    Twilio stub (SMS), the open print batch's items (letters). (mix matches, lost, duplicated)"""
    from collections import Counter

    from django.db.models import Count

    from notifications.campaigns.models import Campaign, CampaignRecipient
    from notifications.models import Delivery, PrintItem

    campaign = Campaign.objects.get(pk=campaign_id)
    sent = Delivery.objects.filter(communication__correlation_id=campaign.reference, state="sent")
    per_channel = Counter(dict(sent.values_list("channel").annotate(n=Count("pk"))))
    recipients = CampaignRecipient.objects.filter(campaign=campaign)
    skipped = recipients.filter(state="skipped").count()
    unreached = recipients.filter(communication__state="undeliverable").count()
    plan = campaign.channel_plan
    print(
        f"  channel plan signed: {plan['channels']} (+{plan['unreachable']} unreachable); "
        f"sent: {dict(sorted(per_channel.items()))}; recipients skipped: {skipped}, "
        f"undeliverable with the reason recorded: {unreached}"
    )
    matches = (
        skipped == 0
        and unreached == plan["unreachable"]
        and all(
            per_channel.get(channel, 0) == plan["channels"].get(channel, 0)
            for channel in {*per_channel, *plan["channels"]}
        )
    )
    lost = duplicated = 0
    emails = set(sent.filter(channel="email").values_list("message_id", flat=True))
    email_lost, email_duplicated = count_at_stub(stub_url, emails)
    phones = Counter(sent.filter(channel="sms").values_list("address", flat=True))
    at_twilio = Counter(m["to"] for m in twilio.messages)
    sms_lost = sum(1 for phone in phones if at_twilio[phone] == 0)
    sms_duplicated = sum(count - 1 for count in at_twilio.values() if count > 1)
    letters = sent.filter(channel="print")
    print_lost = letters.filter(print_item__isnull=True).count()
    # Letters per customer in the print batch (a delivery holds at most one item).
    items = Counter(
        PrintItem.objects.filter(
            delivery__communication__correlation_id=campaign.reference
        ).values_list("delivery__communication__customer_id", flat=True)
    )
    print_duplicated = sum(count - 1 for count in items.values() if count > 1)
    lost = email_lost + sms_lost + print_lost
    duplicated = email_duplicated + sms_duplicated + print_duplicated
    print(
        f"  at the providers: email lost={email_lost} duplicated={email_duplicated}; "
        f"SMS lost={sms_lost} duplicated={sms_duplicated}; letters in the print batch "
        f"lost={print_lost} duplicated={print_duplicated}"
    )
    return matches, lost, duplicated


def exactly_once(stub_url: str, campaign_id: int, n: int, *, mix: bool = False):
    """One communication per customer, and (email only) each email once at the stub; --mix
    checks every provider in `channel_mix`. (lost, duplicated)"""
    from notifications.models import Communication, Delivery

    made = Communication.objects.filter(correlation_id=f"campaign:{campaign_id}")
    per_customer = made.values("customer_id").distinct().count()
    lost = duplicated = 0
    if not mix:
        expected = set(
            Delivery.objects.filter(communication__in=made, state="sent").values_list(
                "message_id", flat=True
            )
        )
        lost, duplicated = count_at_stub(stub_url, expected)
    print(
        f"  communications {made.count()} for {per_customer} customers (of {n})"
        + ("" if mix else f"; at the stub: lost={lost} duplicated={duplicated}")
    )
    if made.count() != per_customer:
        duplicated += made.count() - per_customer
    return lost + (n - per_customer), duplicated


def throttle(people, rate: int, seconds: int, first: int, timeout: float) -> tuple[float, float]:
    from notifications.campaigns.models import Campaign, CampaignRecipient

    want = int(rate * seconds / 60) + max(1, rate // 6)
    refs = [ref(i) for i in range(first, first + 2 * want) if i % 10 < 7][:want]
    campaign_id = approved_campaign(people, "throttle", refs, throttle={"email": rate})
    people["ops"].api("POST", f"campaigns/{campaign_id}/schedule", {})
    deadline = time.monotonic() + max(timeout, seconds * 3)
    while Campaign.objects.get(pk=campaign_id).state != "completed":
        if time.monotonic() > deadline:
            print("  the throttled campaign did not complete in time")
            break
        time.sleep(1)
    stamps = sorted(
        CampaignRecipient.objects.filter(
            campaign_id=campaign_id, handed_at__isnull=False
        ).values_list("handed_at", flat=True)
    )
    span = (stamps[-1] - stamps[0]).total_seconds() if stamps else 0
    # Messages per minute from the first hand-off to the start of the last chunk.
    last_chunk = sum(1 for s in stamps if s == stamps[-1])
    measured = (len(stamps) - last_chunk) / span * 60 if span else 0.0
    error = abs(measured - rate) / rate * 100
    print(
        f"  {len(stamps)} handed in {span:.1f} s at a cap of {rate}/min: {measured:.0f}/min "
        f"({error:.1f} % off)"
    )
    return measured, error


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def pooled_per_s(sides: list[Side]) -> float:
    return sum(side.n for side in sides) / sum(side.n / side.per_s for side in sides)


def pooled_cpu_ms(sides: list[Side]) -> float:
    return sum(sum(side.cpu.values()) for side in sides) * 1000 / sum(side.n for side in sides)


def round_figures(sides: list[tuple[Side, Side | None]]) -> dict[str, float]:
    """The rounds' figures: pooled (all rounds' messages over all their time or CPU) and the
    median, min and max of the per-round ratios. The batch's CPU per message over the
    campaign's: above 1, a campaign message costs less."""
    campaigns = [c for c, _ in sides]
    batches = [b for _, b in sides if b is not None]
    figures = {
        "send_per_s": median([c.per_s for c in campaigns]),
        "batch_per_s": median([b.per_s for b in batches]),
        "campaign_cpu_ms": median([c.cpu_ms for c in campaigns]),
        "batch_cpu_ms": median([b.cpu_ms for b in batches]),
        "ratio": 0.0,
        "cpu_ratio": 0.0,
        "ratio_median": 0.0,
        "ratio_min": 0.0,
        "ratio_max": 0.0,
        "cpu_ratio_median": 0.0,
    }
    pairs = [(c, b) for c, b in sides if b is not None and b.per_s and c.per_s and c.cpu_ms]
    if pairs:
        # Pooled: every round's messages over every round's seconds (or CPU) on each side.
        campaigns, batches = [c for c, _ in pairs], [b for _, b in pairs]
        figures["ratio"] = pooled_per_s(campaigns) / pooled_per_s(batches)
        figures["cpu_ratio"] = pooled_cpu_ms(batches) / pooled_cpu_ms(campaigns)
        ratios = [c.per_s / b.per_s for c, b in pairs]
        figures["ratio_median"] = median(ratios)
        figures["ratio_min"], figures["ratio_max"] = min(ratios), max(ratios)
        figures["cpu_ratio_median"] = median([b.cpu_ms / c.cpu_ms for c, b in pairs])
    return figures


def group_medians(sides: list[Side]) -> str:
    """The median CPU ms per message of each group over the rounds."""
    return ", ".join(
        f"{group} {median([side.cpu[group] * 1000 / side.n for side in sides]):.2f}"
        for group in GROUPS
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--send", type=int, default=2000)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="rounds of {campaign, batch endpoint} of --send each, in alternating order",
    )
    parser.add_argument(
        "--warm-up",
        type=int,
        default=200,
        help="messages of the uncounted campaign and batch before the rounds (0: none)",
    )
    parser.add_argument(
        "--kill-after", type=int, default=0, help="SIGKILL the cluster then (first round)"
    )
    parser.add_argument(
        "--mix",
        action="store_true",
        help="the campaign's customers reach email, SMS (Twilio stub) and print, or nothing; "
        "checked against the signed channel plan and at every provider",
    )
    parser.add_argument("--rate", type=int, default=600)
    parser.add_argument("--throttle-seconds", type=int, default=60)
    parser.add_argument("--skip-throttle", action="store_true")
    parser.add_argument("--skip-batch", action="store_true", help="no batch-endpoint comparison")
    parser.add_argument("--preview-only", action="store_true", help="skip sending")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument(
        "--database",
        default=f"ccm_bench_campaign_{os.getpid()}",
        help="database name; one kept by --keep from an earlier --preview-only run of as many "
        "customers is used again instead of making them anew",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    if not args.database.replace("_", "").isalnum():
        parser.error("--database: letters, digits and underscores only")
    if args.rounds < 1 or args.warm_up < 0:
        parser.error("--rounds: at least 1; --warm-up: 0 or more")
    throttled = 2 * (int(args.rate * args.throttle_seconds / 60) + args.rate // 6 + 1)
    layout = Layout(
        send=args.send,
        rounds=args.rounds,
        warm_up=args.warm_up,
        mix=args.mix,
        batch=not args.skip_batch,
        throttled=0 if args.skip_throttle else throttled,
    )
    if not args.preview_only and layout.customers > args.customers:
        raise SystemExit(
            f"--customers must be at least {layout.customers} for these runs (a warm-up of "
            f"{args.warm_up}, then {args.rounds} round(s) of a campaign and a batch of "
            f"{args.send}"
            + ("" if args.skip_throttle else ", then the throttled campaign")
            + ": each on its own customers)"
        )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    workdir = Path(tempfile.mkdtemp(prefix="ccm-bench-campaign-"))
    db_name = args.database
    stub = web = None
    cluster_box: list = [None]
    created = False
    twilio = TwilioStub(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN)
    try:
        stub, stub_url = start_stub(workdir, args.timeout * 4)
        twilio.__enter__()
        reused = args.preview_only and database_exists(db_name)
        if not reused:
            sql_admin(f'CREATE DATABASE "{db_name}"')
        created = not args.keep
        env = {
            **os.environ,
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{db_name}",
            "DJANGO_SETTINGS_MODULE": "ccm.settings",
            "EMAIL_BACKEND": "anymail.backends.postmark.EmailBackend",
            "POSTMARK_SERVER_TOKEN": TOKEN,
            "POSTMARK_API_URL": stub_url,
            "MEDIA_ROOT": str(workdir / "media"),
            "LOG_LEVEL": "WARNING",
            "Q_WORKERS": "2",
            "Q_SYNC": "false",
            "SECRET_KEY": secrets.token_urlsafe(64),
            # A killed cluster's campaign is picked up by the sweep after this long, and the
            # deliveries it was sending are reconciled with the provider after this long.
            "CCM_CAMPAIGN_STALL_SECONDS": "15",
            "CCM_SENDING_STALE_AFTER_S": "60",
            "API_THROTTLE_USER": "10000000/min",
            "API_THROTTLE_API_KEY": "10000000/min",
            # SMS to the loopback Twilio stub in this process (--mix sends some).
            "CCM_SMS_BACKEND": "notifications.channels.sms.TwilioSmsBackend",
            "TWILIO_ACCOUNT_SID": TWILIO_SID,
            "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            "TWILIO_FROM_NUMBER": "+447700900000",
            "TWILIO_API_BASE_URL": twilio.url,
        }
        env.pop("PGAPPNAME", None)
        os.environ.update(env)
        # This process's own sessions, told apart from the measured ones (CpuMeter).
        os.environ["PGAPPNAME"] = OWN_APPLICATION
        import django

        django.setup()
        print(machine_line())
        if reused:
            reuse(db_name, args.customers)
        else:
            made_s = prepare(args.customers, layout)
            print(f"  {args.customers} customers made in SQL in {made_s:.1f} s")
        served = production_env(env)
        # Production settings serve hashed static files: the login page needs their manifest
        # (made once; `make run` and deployments make it too).
        if not (ROOT / "var" / "static" / "staticfiles.json").exists():
            subprocess.run(
                [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
                cwd=ROOT,
                env=served,
                check=True,
            )
        web, port = start_gunicorn(served, workdir / "gunicorn.log", workers=args.web_workers)
        people = {name: Session(port, name) for name in ("author", "reviewer2", "ops")}
        preview_s, preview_all_s = preview(people["author"], args.customers)
        measured = error = 0.0
        lost = duplicated = 0
        killed = mix_ok = False
        sides: list[tuple[Side, Side | None]] = []
        if not args.preview_only:
            cluster_box[0] = start_cluster(served, workdir / "qcluster.log")
            wait_for_cluster(cluster_box[0])
            meter = CpuMeter(lambda: {"web": web, "cluster": cluster_box[0]}, db_name)
            bench = Served(people, port, cluster_box, served, workdir, args.timeout, meter)
            if args.warm_up:
                # A cold cluster (render and compose workers not started, caches and
                # PostgreSQL's buffers empty) would slow whichever side ran first.
                print(f"warm-up, not counted: a campaign and a batch of {args.warm_up}")
                warm_id, _, _ = send(bench, args.warm_up, 1, name="warm-up")
                lost, duplicated = exactly_once(stub_url, warm_id, args.warm_up)
                if not args.skip_batch:
                    batch(bench, args.warm_up, layout.batch_from)
            mix_ok = True
            for round_ in range(args.rounds):
                # Alternating which side goes first: neither always meets what the other
                # left behind (autovacuum, a fuller table, a busier moment of the machine).
                campaign_first = round_ % 2 == 0 or args.skip_batch
                order = "campaign, then batch" if campaign_first else "batch, then campaign"
                print(f"round {round_ + 1} of {args.rounds} ({order}), {args.send} each")
                batch_side = None
                if not campaign_first:
                    settle()
                    print(f"batch endpoint: {args.send} messages (bench/dispatch.py's batch mode)")
                    batch_side = batch(bench, args.send, layout.batch_round_from(round_))
                settle()
                print(
                    f"campaign: {args.send} recipients, API → qcluster → "
                    + ("Postmark, Twilio stubs and the print batch" if args.mix else "stub")
                )
                campaign_id, campaign_side, round_killed = send(
                    bench,
                    args.send,
                    layout.campaign_from(round_),
                    kill_after=args.kill_after if round_ == 0 else 0,
                    mix=args.mix,
                    name=f"throughput {round_ + 1}",
                )
                killed = killed or round_killed
                round_lost, round_duplicated = exactly_once(
                    stub_url, campaign_id, args.send, mix=args.mix
                )
                lost, duplicated = lost + round_lost, duplicated + round_duplicated
                if args.mix:
                    round_ok, mix_lost, mix_duplicated = channel_mix(campaign_id, twilio, stub_url)
                    mix_ok = mix_ok and round_ok
                    lost, duplicated = lost + mix_lost, duplicated + mix_duplicated
                if campaign_first and not args.skip_batch:
                    settle()
                    print(f"batch endpoint: {args.send} messages (bench/dispatch.py's batch mode)")
                    batch_side = batch(bench, args.send, layout.batch_round_from(round_))
                sides.append((campaign_side, batch_side))
                if batch_side is not None and batch_side.per_s and campaign_side.cpu_ms:
                    print(
                        f"round {round_ + 1}: campaign {campaign_side.per_s:.0f}/s, batch "
                        f"{batch_side.per_s:.0f}/s, ratio "
                        f"{campaign_side.per_s / batch_side.per_s:.2f}; CPU ms/msg campaign "
                        f"{campaign_side.cpu_ms:.2f}, batch {batch_side.cpu_ms:.2f}, cpu_ratio "
                        f"{batch_side.cpu_ms / campaign_side.cpu_ms:.2f}",
                        flush=True,
                    )
            meter.close()
            if not args.skip_throttle:
                settle()
                print(f"throttle: {args.rate}/min for about {args.throttle_seconds} s")
                measured, error = throttle(
                    people, args.rate, args.throttle_seconds, layout.throttle_from, args.timeout
                )
        figures = round_figures(sides)
        if sides:
            batches = [b for _, b in sides if b is not None]
            print(
                f"{len(sides)} round(s), medians: campaign {figures['send_per_s']:.0f}/s, batch "
                f"{figures['batch_per_s']:.0f}/s, ratio {figures['ratio_median']:.2f} "
                f"({figures['ratio_min']:.2f} to {figures['ratio_max']:.2f}), cpu_ratio "
                f"{figures['cpu_ratio_median']:.2f}; CPU ms/msg campaign "
                f"{figures['campaign_cpu_ms']:.2f} ({group_medians([c for c, _ in sides])}), "
                f"batch {figures['batch_cpu_ms']:.2f}"
                + (f" ({group_medians(batches)})" if batches else "")
            )
        print(
            "targets: preview < 2 s at 1M; campaign within 10 % of the batch endpoint; "
            "throttle within 5 %; lost = duplicated = 0"
        )
        print(
            f"campaign: preview_s={preview_s:.2f} preview_all_s={preview_all_s:.2f} "
            f"customers={args.customers} send_per_s={figures['send_per_s']:.0f} "
            f"batch_per_s={figures['batch_per_s']:.0f} ratio={figures['ratio']:.2f} "
            f"cpu_ratio={figures['cpu_ratio']:.2f} rounds={len(sides)} "
            f"ratio_median={figures['ratio_median']:.2f} ratio_min={figures['ratio_min']:.2f} "
            f"ratio_max={figures['ratio_max']:.2f} "
            f"cpu_ratio_median={figures['cpu_ratio_median']:.2f} "
            f"campaign_cpu_ms={figures['campaign_cpu_ms']:.2f} "
            f"batch_cpu_ms={figures['batch_cpu_ms']:.2f} lost={lost} duplicated={duplicated} "
            f"killed={'yes' if killed else 'no'} throttle_rate={measured:.0f} "
            f"throttle_error_pct={error:.1f}"
            + (f" mix={'ok' if mix_ok else 'WRONG'}" if args.mix else "")
        )
    finally:
        stop(web)
        stop(cluster_box[0])
        stop(stub)
        twilio.__exit__(None, None, None)
        throwaway_database_drop(db_name, created=created)


if __name__ == "__main__":
    main()
