"""Start and stop the processes of a production-like CCM stack on one machine (loopback):
gunicorn web processes and django-q2 clusters, each in its own process group, with the
environment docs/deployment.md describes. Used by deploy/check_stack.py, bench/scale.py and the
many-clusters test; only the standard library, so it runs before Django is set up.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def production_env(**overrides: str) -> dict[str, str]:
    """DEBUG off with the least a production process insists on, on loopback (no TLS proxy in
    front, so no https redirect). `overrides` adds DATABASE_URL, storage, cache and so on."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "ccm.settings",
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "AUDIT_SIGNING_KEY": secrets.token_urlsafe(48),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "false",
        "ANYMAIL_WEBHOOK_SECRET": f"ccm:{secrets.token_urlsafe(16)}",
        "CCM_PUSH_BACKEND": "notifications.channels.push.ConsolePushBackend",
        "LOG_FORMAT": "json",
        "Q_SYNC": "false",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(overrides)
    return env


def start(cmd: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Run `cmd` from the repository root as the leader of its own process group (so a kill
    reaches the workers it forks), its output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(  # noqa: S603 - our own commands
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def manage(*args: str, env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(  # noqa: S603 - our own command
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def gunicorn(*, port: int, env: dict[str, str], log: Path, workers: int = 2) -> subprocess.Popen:
    return start(
        [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF)],
        env={**env, "BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": str(workers)},
        log=log,
    )


def qcluster(*, env: dict[str, str], log: Path, workers: int = 2) -> subprocess.Popen:
    return start(
        [sys.executable, "manage.py", "qcluster"], env={**env, "Q_WORKERS": str(workers)}, log=log
    )


def wait_http(url: str, *, process: subprocess.Popen | None = None, timeout: float = 60) -> int:
    """Until `url` answers (any HTTP status); returns the status."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{url}: the server exited with {process.returncode}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def stop(process: subprocess.Popen | None, *, timeout: float = 20) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left."""
    if process is None:
        return
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    kill(process)


def kill(process: subprocess.Popen) -> None:
    """SIGKILL the whole process group at once: a machine that lost power."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
