"""What the HTTP benchmarks share: a throwaway PostgreSQL database, the project served by
gunicorn with production settings on loopback, and a keep-alive client driven by a thread pool.

Only the standard library and the project's own dependencies."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"


def sql_admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(statement)


def throwaway_database_drop(name: str, *, created: bool) -> None:
    """The end of a benchmark's throwaway database: this process's Django connections closed
    (Django may not be set up when setup itself failed), then the database dropped if the run
    created it, unless BENCH_KEEP_DB=1 keeps it for a look afterwards."""
    try:
        from django.db import connections

        connections.close_all()
    except Exception:  # noqa: S110 - nothing to close
        pass
    if created and os.environ.get("BENCH_KEEP_DB") != "1":
        sql_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    """A free loopback port: from BENCH_PORTS ("8200-8299") when set — engineers sharing a
    machine each keep to their own range — or any the system gives."""
    first, _, last = os.environ.get("BENCH_PORTS", "").partition("-")
    candidates = range(int(first), int(last or first) + 1) if first else [0]
    for candidate in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return s.getsockname()[1]
    raise SystemExit(f"no free port in BENCH_PORTS={os.environ['BENCH_PORTS']}")


def production_env(env: dict[str, str]) -> dict[str, str]:
    """The settings a deployment runs with (DEBUG off, a generated SECRET_KEY, one allowed
    host), except TLS: the benchmark speaks plain HTTP on loopback. Give the benchmark's own
    process the same SECRET_KEY (`env`'s, if set): django-q2 signs the tasks it queues."""
    return {
        **env,
        "DEBUG": "false",
        "SECRET_KEY": env.get("SECRET_KEY") or secrets.token_urlsafe(64),
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "false",
        "ANYMAIL_WEBHOOK_SECRET": f"bench:{secrets.token_urlsafe(16)}",
        # Production refuses to start without the audit chain's checkpoint key.
        "AUDIT_SIGNING_KEY": env.get("AUDIT_SIGNING_KEY") or secrets.token_urlsafe(48),
    }


def cache_url(choice: str, name: str) -> str:
    """CACHE_URL for a benchmark: `redis` (what the deployment docs recommend for a served
    CCM: rate limits and the pipeline's drain flag without a database round trip) on loopback,
    keyed by the run's own prefix so runs sharing the server never see each other's keys; `db`
    the database cache (the default when CACHE_URL is not set); anything else as given."""
    if choice == "redis":
        db = os.environ.get("BENCH_REDIS_DB", "1")  # the Redis database kept for benchmarks
        return f"rediscache://127.0.0.1:6379/{db}?key_prefix={name}"
    if choice == "db":
        return "dbcache://ccm_cache"
    return choice


def stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


# deploy/gunicorn.conf.py's worker class and default threads per worker.
THREADS = 4


def start_gunicorn(
    env: dict, log: Path, *, workers: int, threads: int = THREADS
) -> tuple[subprocess.Popen, int]:
    """gunicorn serving ccm.wsgi on a free loopback port, ready to answer: gthread workers of
    `threads` threads as deployed (deploy/gunicorn.conf.py), or sync workers with threads=1.

    Threads matter: a request spends most of its time waiting for PostgreSQL and Redis, and a
    sync worker holds its one connection while it waits, so at 32 connections and 4 workers a
    request queues behind 7 others (p99 = 8 service times, for the bare view as much as the
    API). A sync worker also closes every connection after one response (no keep-alive)."""
    port = free_port()
    worker_args = ["--worker-class", "gthread", "--threads", str(threads)] if threads > 1 else []
    with log.open("ab") as out:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "ccm.wsgi:application",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(workers),
                *worker_args,
                "--keep-alive",
                "30",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 180  # four workers booting on a loaded machine
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            # An API path: no template, so no collected static files needed (a 401 is ready).
            conn.request("GET", "/api/v1/communications")
            if conn.getresponse().status < 500:
                conn.close()
                return server, port
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            stop(server)
            raise SystemExit(f"gunicorn did not start; see {log}")
        time.sleep(0.2)


def process_cpu_seconds(*, parents: Iterable[int] = (), groups: Iterable[int] = ()) -> dict:
    """CPU time (user + system, seconds) so far per process: the children of `parents` and every
    process of the process `groups` (what `start_new_session` started: a gunicorn, a cluster
    with its workers and render sandboxes), and the PostgreSQL sessions on the current
    database (this process's own left out). Keyed by ("db" or the group's id, pid), so the
    difference of two calls splits the CPU a run cost by server part. A process that ended
    between the two calls counts through its parent's children's time once reaped, with all of
    its life (a worker recycled mid-run is counted from its start)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        sessions = {pid for (pid,) in cursor.fetchall()}
    parents, groups = set(parents), set(groups)
    seconds: dict = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        pid, parent, group = int(proc.name), int(fields[1]), int(fields[2])
        # utime, stime, and the reaped children's cutime, cstime (a recycled worker's).
        used = sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        if pid in sessions:
            seconds[("db", pid)] = used
        elif group in groups:
            seconds[(group, pid)] = used
        elif parent in parents:
            seconds[(parent, pid)] = used
    return seconds


def cpu_used(before: dict, after: dict) -> dict:
    """CPU seconds per part ("db" or a group's or parent's id) between two
    `process_cpu_seconds`."""
    used: dict = {}
    for (part, pid), t in after.items():
        used[part] = used.get(part, 0.0) + t - before.get((part, pid), 0.0)
    return used


def start_cluster(env: dict, log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@dataclass
class Call:
    status: int
    body: bytes
    seconds: float


@dataclass
class Client:
    """One keep-alive HTTP/1.1 connection per thread to the served project."""

    port: int
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 120.0
    _local: threading.local = field(default_factory=threading.local)

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=self.timeout
            )
        return conn

    def request(self, method: str, path: str, body: Any = None, headers=None) -> Call:
        payload = json.dumps(body).encode() if body is not None else None
        sent = {**self.headers, **(headers or {})}
        if payload is not None:
            sent["Content-Type"] = "application/json"
        for attempt in range(2):
            conn = self._conn()
            started = time.perf_counter()
            try:
                conn.request(method, path, body=payload, headers=sent)
                response = conn.getresponse()
                data = response.read()
            except (http.client.HTTPException, ConnectionError):
                # The server closed a kept-alive connection (a worker recycled): reconnect once.
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
                continue
            return Call(response.status, data, time.perf_counter() - started)
        raise AssertionError("unreachable")


def run_pool(fn: Callable[[Any], Call], work: Iterable[Any], *, connections: int) -> list[Call]:
    with ThreadPoolExecutor(max_workers=connections) as pool:
        return list(pool.map(fn, work))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def machine_line() -> str:
    import platform
    from importlib.metadata import version

    return (
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"Django {version('Django')}, DRF {version('djangorestframework')}, "
        f"gunicorn {version('gunicorn')}, django-q2 {version('django-q2')}, "
        f"psycopg {version('psycopg')}"
    )
