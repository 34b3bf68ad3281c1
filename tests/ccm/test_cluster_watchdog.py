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


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, CPU ticks used) of a process, or None once it is dead (gone or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    state, utime, stime = fields[0], int(fields[11]), int(fields[12])
    return None if state in {"Z", "X"} else (state, utime + stime)


def alive(pid: int) -> bool:
    return _stat(pid) is not None


def both_workers_idle(run: subprocess.Popen) -> set[int]:
    """The pids of the cluster's two live workers, once both are idle: nothing queued, and
    both blocked (one inside Queue.get() holding its read lock, the other waiting for that
    lock; the watchdog's probe wakes one at most). Waits on these conditions, not on a fixed
    time, so a loaded machine only makes it slower; a worker replaced meanwhile (a task timed
    out, the watchdog restarted a slow cluster) is dropped and the new one learnt."""
    workers: set[int] = set()

    def seen() -> bool:
        workers.intersection_update([pid for pid in workers if alive(pid)])
        if not OrmQ.objects.exists():
            async_task("ccm.tasks.cluster_heartbeat")
        time.sleep(0.3)
        beat = heartbeat()
        if beat is not None and beat.pid and alive(beat.pid):
            workers.add(beat.pid)
        return len(workers) == 2

    def idle() -> bool:
        for _ in range(3):
            states = [_stat(pid) for pid in workers]
            if OrmQ.objects.exists() or any(s is None or s[0] != "S" for s in states):
                return False
            time.sleep(0.2)
        return True

    deadline = time.monotonic() + 300
    while True:
        wait_for("both workers to run a task", seen, within_s=180, process=run)
        wait_for("the queue to drain", lambda: not OrmQ.objects.exists(), within_s=60, process=run)
        # Both have gone back to waiting for work (Queue.get()) since their last task.
        if all(alive(pid) for pid in workers) and wait_idle(idle, within_s=30):
            return set(workers)
        assert time.monotonic() < deadline, f"workers {workers} were never both idle"


def wait_idle(idle, *, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if idle():
            return True
        time.sleep(0.1)
    return False


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
        # given a cluster that runs tasks, and the process ids of both its workers, both idle
        workers = both_workers_idle(run)

        # when both idle workers are SIGKILLed (the guard reincarnates them) and work arrives
        log_before_kill = len(log.read_bytes())
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        killed_at = timezone.now()
        wait_for(
            "the guard to reap the killed workers",
            lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers),
            within_s=60,
            process=run,
        )
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

        wait_for("work done after the kill", done_after_kill, within_s=240, process=run)
        # (a restart under load before the kill would not count: only what came after it)
        assert "restarting the task cluster" in log.read_bytes()[log_before_kill:].decode()
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGINT)
            try:
                run.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait(timeout=10)
