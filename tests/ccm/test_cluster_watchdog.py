"""The task cluster survives its workers being killed while idle.

django-q2's workers wait for work in `multiprocessing.Queue.get()`, holding the queue's read lock;
a worker SIGKILLed there never releases it, the reincarnated workers wait on that lock forever,
and the cluster takes no more work. `run_ccm` probes the cluster with a heartbeat task and
restarts it when a probe does not run in time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone
from django_q.models import OrmQ
from django_q.tasks import async_task

from ccm.models import ClusterHeartbeat

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, condition, *, within_s: float, process: subprocess.Popen):
    deadline = time.monotonic() + within_s
    while True:
        result = condition()
        if result:
            return result
        assert process.poll() is None, f"run_ccm exited while waiting for {what}"
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


def heartbeat() -> ClusterHeartbeat | None:
    return ClusterHeartbeat.objects.filter(host=socket.gethostname()).first()


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="needs PostgreSQL: a real cluster process shares the test database",
)
@pytest.mark.django_db(transaction=True)
def test_run_ccm_restarts_a_cluster_wedged_by_killing_idle_workers(tmp_path):
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "MEDIA_ROOT": str(tmp_path / "media"),
        "Q_WORKERS": "2",
        "Q_SYNC": "false",
        "Q_TIMEOUT": "10",
        "Q_RETRY": "20",
        "CCM_WATCHDOG_INTERVAL_S": "1",
        "CCM_WATCHDOG_STALE_AFTER_S": "8",
        "LOG_LEVEL": "WARNING",
    }
    log = tmp_path / "run_ccm.log"
    with log.open("wb") as out:
        run = subprocess.Popen(
            [sys.executable, "manage.py", "run_ccm", "--port", str(free_port())],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # given a cluster that runs tasks, and the process ids of both its workers
        workers: set[int] = set()

        def both_workers_seen() -> bool:
            async_task("ccm.tasks.cluster_heartbeat")
            time.sleep(0.3)
            beat = heartbeat()
            if beat is not None and beat.pid:
                workers.add(beat.pid)
            return len(workers) == 2

        wait_for("both workers to run a task", both_workers_seen, within_s=60, process=run)
        wait_for("the queue to drain", lambda: not OrmQ.objects.exists(), within_s=20, process=run)
        time.sleep(1)  # both idle, one of them waiting inside Queue.get() with its lock

        # when both idle workers are SIGKILLed (the guard reincarnates them) and work arrives
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        killed_at = timezone.now()
        time.sleep(2)
        async_task("ccm.tasks.cluster_heartbeat")

        # then run_ccm notices the cluster is wedged, restarts it, and the work gets done
        def done_after_kill() -> bool:
            beat = heartbeat()
            return (
                beat is not None
                and beat.beat_at > killed_at
                and beat.pid not in workers
                and not OrmQ.objects.filter(lock__lte=timezone.now()).exists()
            )

        wait_for("work done after the kill", done_after_kill, within_s=120, process=run)
        assert "restarting the task cluster" in log.read_text()
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGINT)
            try:
                run.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait(timeout=10)
