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
        "Run the web server and a django-q2 cluster together in the foreground (Ctrl-C stops "
        "both); restart the cluster when it stops taking work."
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
        commands = {"web server": web, "task cluster": [*manage, "qcluster"]}
        # Each child leads its own process group, so that stopping it reaches the processes it
        # forks (the cluster's workers and their render workers) and Ctrl-C is forwarded once.
        children = {
            name: subprocess.Popen(cmd, start_new_session=True)  # noqa: S603
            for name, cmd in commands.items()
        }
        watchdog = ClusterWatchdog(
            interval=settings.CCM_WATCHDOG_INTERVAL_S,
            stale_after=settings.CCM_WATCHDOG_STALE_AFTER_S,
        )
        base = f"http://{host}:{port}"
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "CCM is running (Ctrl-C stops the web server and the task cluster):",
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
            if not stopping and watchdog.wedged():
                self.stderr.write(
                    "The task cluster has not run a heartbeat task in "
                    f"{watchdog.stale_after:.0f} s (wedged); restarting the task cluster."
                )
                cluster = children["task cluster"]
                _stop(cluster, grace_s=10)
                children["task cluster"] = subprocess.Popen(  # noqa: S603
                    commands["task cluster"], start_new_session=True
                )
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
