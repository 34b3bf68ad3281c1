"""The production entry point: gunicorn with deploy/gunicorn.conf.py and DEBUG off serves the
app, its static files (whitenoise, hashed names from collectstatic) and JSON access logs that
carry the request id; `run_ccm --production` runs gunicorn instead of runserver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest
from django.conf import settings
from django.db import connection

from deploy import stack

pytestmark = pytest.mark.django_db(transaction=True)


def database_url() -> str:
    db = settings.DATABASES["default"]
    if connection.vendor != "postgresql":
        pytest.skip("gunicorn's processes share the test database: needs PostgreSQL")
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def test_gunicorn_serves_health_static_files_and_json_access_logs(tmp_path):
    # given a production environment and collected static files
    env = stack.production_env(
        DATABASE_URL=database_url(),
        MEDIA_ROOT=str(tmp_path / "media"),
        STATIC_ROOT=str(tmp_path / "static"),
    )
    stack.manage("collectstatic", "--noinput", env=env)
    manifest = json.loads((tmp_path / "static" / "staticfiles.json").read_text())
    css = next(name for name in manifest["paths"] if name.endswith(".css"))
    port = stack.free_port()
    log = tmp_path / "gunicorn.log"
    web = stack.gunicorn(port=port, env=env, log=log, workers=2)
    try:
        base = f"http://127.0.0.1:{port}"
        # when
        assert stack.wait_http(f"{base}/healthz", process=web) == 200
        request = urllib.request.Request(  # noqa: S310 - loopback
            f"{base}/healthz", headers={"X-Request-ID": "req-42"}
        )
        with urllib.request.urlopen(request) as response:  # noqa: S310 - loopback
            health = json.load(response)
            echoed = response.headers["X-Request-ID"]
        hashed = manifest["paths"][css]
        with urllib.request.urlopen(f"{base}/static/{hashed}") as response:  # noqa: S310
            static_status = response.status
            cache_control = response.headers["Cache-Control"]
    finally:
        stack.stop(web)
    # then the app answered with every dependency up, behind gunicorn's workers
    assert health["status"] == "ok"
    assert echoed == "req-42"
    # static files come from whitenoise under their hashed names, cacheable for ever
    assert static_status == 200
    assert "immutable" in cache_control or "max-age=315360000" in cache_control
    # and the access log is JSON, one object a line, with the request id
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("logger") == "gunicorn.access"]
    tagged = [line for line in access if line["request_id"] == "req-42"]
    assert tagged
    assert (tagged[0]["method"], tagged[0]["path"], tagged[0]["status"]) == ("GET", "/healthz", 200)


def test_the_gunicorn_config_reads_its_values_from_the_environment():
    env = {
        **os.environ,
        "WEB_CONCURRENCY": "7",
        "GUNICORN_THREADS": "3",
        "GUNICORN_TIMEOUT": "45",
        "GUNICORN_GRACEFUL_TIMEOUT": "12",
        "BIND": "127.0.0.1:9999",
    }
    code = (
        "from gunicorn.config import Config; c = Config(); "
        f"c.set('config', {str(stack.GUNICORN_CONF)!r}); "
        "from gunicorn.app.base import Application\n"
        "import runpy; ns = runpy.run_path(c.config)\n"
        "print(ns['workers'], ns['threads'], ns['timeout'], ns['graceful_timeout'], ns['bind'], "
        "ns['logger_class'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == [
        "7",
        "3",
        "45",
        "12",
        "127.0.0.1:9999",
        "ccm.observability.GunicornJsonLogger",
    ]


def test_run_ccm_production_runs_gunicorn(monkeypatch):
    from ccm.management.commands import run_ccm

    started = []
    real_popen = subprocess.Popen

    class Stopped(Exception):
        pass

    def popen(cmd, **kwargs):
        started.append(cmd)
        if len(started) == 2:
            raise Stopped
        return real_popen([sys.executable, "-c", "pass"])

    monkeypatch.setattr(run_ccm.subprocess, "Popen", popen)
    with pytest.raises(Stopped):
        run_ccm.Command().handle(port=8123, host="127.0.0.1", production=True)
    web, cluster = started
    assert web[1:4] == ["-m", "gunicorn", "-c"]
    assert web[4].endswith("deploy/gunicorn.conf.py")
    assert web[-2:] == ["--bind", "127.0.0.1:8123"]
    assert cluster[-1] == "qcluster"


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [("", "inactive None"), ("http://key@127.0.0.1:9/42", "active http://key@127.0.0.1:9/42")],
)
def test_errors_go_to_sentry_only_when_a_dsn_is_set(dsn, expected):
    code = (
        "import django; django.setup(); import sentry_sdk; c = sentry_sdk.get_client(); "
        "from sentry_sdk.integrations.django import DjangoIntegration; "
        "print('active' if c.is_active() else 'inactive', c.dsn, "
        "c.get_integration(DjangoIntegration) is not None if c.is_active() else '')"
    )
    env = {**os.environ, "SENTRY_DSN": dsn, "DJANGO_SETTINGS_MODULE": "ccm.settings"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith(expected)
    if dsn:
        assert line.endswith("True")  # with the Django integration


def test_a_redis_cache_url_is_one_cache_shared_by_every_process():
    # given two processes (as two web servers) configured with the same Redis CACHE_URL
    url = "rediscache://127.0.0.1:6379/10"
    key = f"ccm-test-{os.getpid()}"
    env = {**os.environ, "CACHE_URL": url, "DJANGO_SETTINGS_MODULE": "ccm.settings"}

    def in_process(code: str) -> str:
        setup = "import django; django.setup(); from django.core.cache import cache; "
        done = subprocess.run(
            [sys.executable, "-c", setup + code], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    # when each counts one request (as a rate limit does)
    in_process(f"cache.set({key!r}, 0, 60); print(cache.incr({key!r}))")
    second = in_process(f"print(cache.incr({key!r}))")
    backend = in_process(
        "from django.core.cache import caches; print(type(caches['default']).__module__)"
    )
    in_process(f"cache.delete({key!r}); print('ok')")
    # then the second process saw the first one's count: one shared counter, in Redis
    assert second == "2"
    assert backend == "ccm.cache"  # Django's Redis cache, keeping its client
