"""API intake benchmark: `POST /api/v1/communications` against a bare Django view.

    .venv/bin/python bench/api.py                       # 3 rounds of 2,000 requests per side
    .venv/bin/python bench/api.py --requests 300 --rounds 1

Both are served by the same gunicorn (production settings: DEBUG off, generated SECRET_KEY,
ALLOWED_HOSTS=127.0.0.1; 4 gthread workers of 4 threads, as deploy/gunicorn.conf.py serves;
`--threads 1` for sync workers) on a throwaway PostgreSQL database. The bare view
(bench/urls_api.py, mounted only by bench/settings_api.py) parses a small JSON body, checks
its three fields and does one INSERT. The API call is an integrator's: Api-Key authentication,
scope check, throttles, the request serializer, intake (schema check, the communication row
and its history step, the compose drain's flag). No cluster runs: the tasks wait in the queue.

A third side, the floor (`POST /bench/floor`), does the bare view's work behind the project's
own API base view — DRF, Api-Key authentication, scope check, rate limits — called with the same
key: the least any authenticated CCM endpoint costs. Its ratio to the bare view bounds what the
API's can be.

Runs are interleaved (bare, floor, api, bare, …) at 8 and then 32 keep-alive connections, so a
slow moment of the shared machine hits every side. Figures per side: requests/s (requests over
the wall time of its runs), p50 and p99 latency.

Per side also the server's CPU per request (the gunicorn workers' and the database sessions'
CPU time over the run, /proc): a figure the shared machine's load hardly moves, unlike
requests/s and latency.

Last lines, one per connection count:
api c=<n>: api_rps=… bare_rps=… ratio=… api_p50_ms=… api_p99_ms=… bare_p50_ms=… bare_p99_ms=…
  api_cpu_ms=… bare_cpu_ms=… floor_rps=… floor_ratio=… floor_cpu_ms=…
"""

from __future__ import annotations

import argparse
import itertools
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serve import (  # noqa: E402
    THREADS,
    Client,
    cache_url,
    cpu_used,
    machine_line,
    percentile,
    process_cpu_seconds,
    production_env,
    run_pool,
    sql_admin,
    start_gunicorn,
    stop,
)

CUSTOMERS = 1000


def body(i: int) -> dict:
    return {
        "template": "document_ready",
        "customer": f"A-{i % CUSTOMERS:05d}",
        "data": {
            "customer": {"name": f"Customer {i}"},
            "reference": f"DOC-{i:07d}",
            "document_title": "Your annual energy summary",
            "document_date": "2026-04-12",
            "portal_url": f"https://my.northwind.example/documents/DOC-{i:07d}",
        },
    }


def prepare() -> str:
    from django.core.management import call_command
    from django.db import connection

    from bench.urls_api import CREATE_TABLE
    from ccm.api.auth import api_key_create
    from ccm.demo import seed_users
    from documents.demo import seed_library
    from notifications.models import ContactPoint, Customer

    call_command("migrate", verbosity=0)
    seed_users()
    seed_library()
    customers = Customer.objects.bulk_create(
        [Customer(external_ref=f"A-{i:05d}", name=f"Customer {i}") for i in range(CUSTOMERS)]
    )
    ContactPoint.objects.bulk_create(
        [
            ContactPoint(customer=c, kind="email", value=f"a{i}@example.org", is_primary=True)
            for i, c in enumerate(customers)
        ]
    )
    with connection.cursor() as cursor:
        cursor.execute(CREATE_TABLE)
    return api_key_create(name="bench", scopes=["communications:write"]).key


def one_run(client: Client, path: str, start: int, n: int, connections: int):
    started = time.perf_counter()
    calls = run_pool(
        lambda i: client.request("POST", path, body(i)),
        range(start, start + n),
        connections=connections,
    )
    wall = time.perf_counter() - started
    bad = [c for c in calls if c.status != 202]
    if bad:
        raise SystemExit(
            f"{path}: {len(bad)} answers not 202, e.g. {bad[0].status} {bad[0].body[:300]!r}"
        )
    return wall, [c.seconds for c in calls]


def profile(master_pid: int, api: Client, n: int, out: Path, *, gil: bool = False) -> None:
    import subprocess

    spy = subprocess.Popen(
        [
            shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(master_pid),
            "--subprocesses",
            "--format",
            "raw",
            "--rate",
            "200",
            "--output",
            str(out),
            "--nonblocking",
            # Only the thread holding the GIL: where the workers' CPU goes, not where a
            # thread waits for PostgreSQL or Redis.
            *(["--gil"] if gil else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(2)
    wall, _ = one_run(api, "/api/v1/communications", 10_000_000, n, 8)
    spy.send_signal(signal.SIGINT)
    spy.wait(timeout=60)
    print(f"profiled {n} API requests ({n / wall:.0f} req/s while sampled) into {out}")
    print_profile(out)


def print_profile(path: Path, top: int = 40) -> None:
    """Inclusive share of the samples taken inside a request, per function (project code and
    the libraries it calls)."""
    from collections import Counter

    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not any("get_response" in f for f in frames):
            continue  # the worker idling between requests
        total += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    print(f"{total} samples inside requests; inclusive share per function:")
    for frame, count in inclusive.most_common(top):
        print(f"  {100 * count / total:5.1f} %  {frame[:150]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests per run")
    parser.add_argument("--rounds", type=int, default=3, help="bare/api run pairs per level")
    parser.add_argument("--connections", default="8,32", help="comma-separated levels")
    parser.add_argument("--web-workers", type=int, default=4, help="gunicorn workers")
    parser.add_argument(
        "--threads",
        type=int,
        default=THREADS,
        help="threads per gunicorn worker (gthread, as deploy/gunicorn.conf.py; 1: sync workers)",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="instead of the comparison: sample the API's workers with py-spy (pip install "
        "py-spy) during one run of --requests at 8 connections; write the collapsed stacks "
        "to FILE and print where the time goes",
    )
    parser.add_argument(
        "--gil",
        action="store_true",
        help="with --profile: sample only the thread holding the GIL (CPU, not waits)",
    )
    parser.add_argument(
        "--cache",
        default="redis",
        help="CACHE_URL of the served project: redis (loopback, as deployed; default), db (the "
        "database cache, CCM's default without CACHE_URL), or a URL",
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.connections.split(",")]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="ccm-bench-api-"))
    db_name = f"ccm_bench_api_{os.getpid()}"
    web = None
    created = False
    try:
        sql_admin(f'CREATE DATABASE "{db_name}"')
        created = True
        env = {
            **os.environ,
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{db_name}",
            "DJANGO_SETTINGS_MODULE": "bench.settings_api",
            "MEDIA_ROOT": str(workdir / "media"),
            "LOG_LEVEL": "WARNING",
            "Q_SYNC": "false",
            "SECRET_KEY": secrets.token_urlsafe(64),
            "CACHE_URL": cache_url(args.cache, db_name),
            # Capacity, not an integrator's quota, is measured.
            "API_THROTTLE_USER": "10000000/min",
            "API_THROTTLE_API_KEY": "10000000/min",
        }
        os.environ.update(env)
        import django

        django.setup()
        print(machine_line())
        key = prepare()
        web, port = start_gunicorn(
            production_env(env),
            workdir / "gunicorn.log",
            workers=args.web_workers,
            threads=args.threads,
        )
        api = Client(port, headers={"Authorization": f"Api-Key {key}"})
        bare = Client(port)
        print(
            f"setup: {args.rounds} rounds x {args.requests} requests per side and level, "
            f"gunicorn workers={args.web_workers} threads={args.threads}, cache={args.cache}"
        )
        # Warm both paths in every worker (imports, compiled schema, connections).
        one_run(api, "/api/v1/communications", 0, 50, 8)
        one_run(bare, "/bench/bare", 0, 50, 8)
        one_run(api, "/bench/floor", 0, 50, 8)
        counter = itertools.count(100, args.requests)
        if args.profile:
            profile(web.pid, api, args.requests, Path(args.profile), gil=args.gil)
            return
        lines = []
        for connections in levels:
            sides = (
                ("bare", bare, "/bench/bare"),
                ("floor", api, "/bench/floor"),
                ("api", api, "/api/v1/communications"),
            )
            figures: dict[str, tuple[float, list[float]]] = {s: (0.0, []) for s, _, _ in sides}
            cpu = {side: 0.0 for side, _, _ in sides}
            for _ in range(args.rounds):
                for side, client, path in sides:
                    before = process_cpu_seconds(parents=[web.pid])
                    wall, latencies = one_run(
                        client, path, next(counter), args.requests, connections
                    )
                    after = process_cpu_seconds(parents=[web.pid])
                    parts = cpu_used(before, after)
                    used = sum(parts.values())
                    db = parts.get("db", 0.0)
                    cpu[side] += used
                    total, all_latencies = figures[side]
                    figures[side] = (total + wall, all_latencies + latencies)
                    print(
                        f"  c={connections} {side}: {args.requests / wall:.0f} req/s, "
                        f"p99 {percentile(latencies, 99) * 1000:.0f} ms, "
                        f"server CPU {1000 * used / args.requests:.2f} ms/request "
                        f"(PostgreSQL {1000 * db / args.requests:.2f})",
                        flush=True,
                    )
            out = {}
            for side, (wall, latencies) in figures.items():
                out[side] = (
                    len(latencies) / wall,
                    percentile(latencies, 50) * 1000,
                    percentile(latencies, 99) * 1000,
                )
            ratio = out["api"][0] / out["bare"][0]
            cpu_ms = {side: 1000 * cpu[side] / len(figures[side][1]) for side in cpu}
            floor_ratio = out["floor"][0] / out["bare"][0]
            lines.append(
                f"api c={connections}: api_rps={out['api'][0]:.0f} bare_rps={out['bare'][0]:.0f} "
                f"ratio={ratio:.2f} api_p50_ms={out['api'][1]:.1f} api_p99_ms={out['api'][2]:.1f} "
                f"bare_p50_ms={out['bare'][1]:.1f} bare_p99_ms={out['bare'][2]:.1f} "
                f"api_cpu_ms={cpu_ms['api']:.2f} bare_cpu_ms={cpu_ms['bare']:.2f} "
                f"floor_rps={out['floor'][0]:.0f} floor_ratio={floor_ratio:.2f} "
                f"floor_cpu_ms={cpu_ms['floor']:.2f}"
            )
        print("targets: ratio >= 0.6 and api_p99_ms < 50 at c=32")
        for line in lines:
            print(line)
    finally:
        stop(web)
        try:
            from django.db import connections as dbs

            dbs.close_all()
        except Exception:  # noqa: S110 - Django may not be set up when setup itself failed
            pass
        if created and os.environ.get("BENCH_KEEP_DB") != "1":
            sql_admin(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
