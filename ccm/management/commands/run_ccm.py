from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from ccm.demo import DEMO_PASSWORD, DEMO_USERS
from ccm.health import ClusterWatchdog


class Command(BaseCommand):
    help = (
        "Run the web server and the django-q2 clusters (one for the default queue, one for each "
        "queue of CCM_TASK_QUEUES) in the foreground (Ctrl-C stops all); restart a cluster "
        "when it stops taking work."
    )

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument(
            "--production",
            action="store_true",
            help="Serve with gunicorn (deploy/gunicorn.conf.py) instead of runserver.",
        )

    def handle(self, *args, port: int, host: str, production: bool = False, **options):
        manage = [sys.executable, "manage.py"]
        web = [*manage, "runserver", f"{host}:{port}", "--noreload"]
        if production:
            conf = settings.BASE_DIR / "deploy" / "gunicorn.conf.py"
            web = [sys.executable, "-m", "gunicorn", "-c", str(conf), "--bind", f"{host}:{port}"]
        # One cluster for the default queue (it also runs the schedules) and one for each
        # named queue of CCM_TASK_QUEUES, sized by Q_<QUEUE>_WORKERS.
        queues: dict[str, str | None] = {"task cluster": None}
        queues.update({f"{queue} cluster": queue for queue in settings.CCM_TASK_QUEUES})
        commands = {"web server": web, **{name: [*manage, "qcluster"] for name in queues}}
        environments = {
            name: {**os.environ, "Q_CLUSTER_NAME": queue} if queue else None
            for name, queue in queues.items()
        }

        def launch(name: str) -> subprocess.Popen:
            # Each child leads its own process group, so that stopping it reaches the processes
            # it forks (a cluster's workers and their render workers) and Ctrl-C is forwarded
            # once.
            return subprocess.Popen(  # noqa: S603
                commands[name], env=environments.get(name), start_new_session=True
            )

        children = {name: launch(name) for name in commands}
        watchdogs = {
            name: ClusterWatchdog(
                interval=settings.CCM_WATCHDOG_INTERVAL_S,
                stale_after=settings.CCM_WATCHDOG_STALE_AFTER_S,
                queue=queue,
            )
            for name, queue in queues.items()
        }
        base = f"http://{host}:{port}"
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "CCM is running (Ctrl-C stops the web server and the task clusters):",
                    f"  Work overview   {base}/",
                    f"  Sign-off queue  {base}/review/ (reviewer, reviewer2)",
                    f"  Back-office     {base}/admin/",
                    f"  API docs        {base}/api/docs/",
                    f"  Dashboard       {base}/ops/ (ops)",
                    f"  Health          {base}/healthz",
                    f"Demo logins (password {DEMO_PASSWORD}): "
                    + ", ".join(username for username, _, _ in DEMO_USERS),
                    "",
                ]
            )
        )
        stopping = False

        def stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        code = 0
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    self.stderr.write(f"The {name} exited with {child.returncode}; stopping.")
                    code = child.returncode or 1
                    stopping = True
            for name, watchdog in watchdogs.items():
                if stopping or not watchdog.wedged():
                    continue
                self.stderr.write(
                    f"The {name} has not run a heartbeat task in "
                    f"{watchdog.stale_after:.0f} s (wedged); restarting the {name}."
                )
                _stop(children[name], grace_s=10)
                children[name] = launch(name)
                watchdog.reset()
            time.sleep(0.3)
        # The leaders stop their own processes (django-q2's cluster winds its workers down);
        # signalling every process at once would cut the cluster's own shutdown short.
        for child in children.values():
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 20
        for name, child in children.items():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"The {name} did not stop in time; killing it.")
            # Whatever the leader left behind (a render worker, a stuck task) goes too.
            _signal_group(child, signal.SIGKILL)
        self.stdout.write("CCM stopped.")
        if code:
            sys.exit(code)


def _stop(child: subprocess.Popen, *, grace_s: float) -> None:
    """Ask a child's process group to stop, then kill what is left after `grace_s`: a wedged
    cluster's own shutdown waits on the workers that cannot move."""
    _signal_group(child, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=grace_s)
    _signal_group(child, signal.SIGKILL)
    child.wait()


def _signal_group(child: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signum)
