"""Production settings: refuse to start unsafe, and pass `check --deploy`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOOD_KEY = "k" * 20 + "-random-production-secret-" + "z" * 20
AUDIT_KEY = "a" * 16 + "-random-audit-signing-key-" + "b" * 16


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "SECRET_KEY",
            "ALLOWED_HOSTS",
            "DEBUG",
            "ANYMAIL_WEBHOOK_SECRET",
            "EMAIL_BACKEND",
            "CCM_TRACKING_ESPS",
            "SENDGRID_TRACKING_WEBHOOK_VERIFICATION_KEY",
            "AUDIT_SIGNING_KEY",
        }
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, "DJANGO_SETTINGS_MODULE": "ccm.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_production_refuses_to_start_without_secret_key():
    result = _manage("check", DEBUG="false", ALLOWED_HOSTS="ccm.example.org")
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_production_refuses_the_development_key():
    result = _manage(
        "check",
        DEBUG="false",
        ALLOWED_HOSTS="ccm.example.org",
        SECRET_KEY="dev-insecure-key-for-local-use-only-never-in-production",
    )
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_production_refuses_to_start_without_allowed_hosts():
    result = _manage("check", DEBUG="false", SECRET_KEY=GOOD_KEY)
    assert result.returncode != 0
    assert "ALLOWED_HOSTS must name" in result.stderr


def test_check_deploy_passes_in_production_settings():
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DEBUG="false",
        SECRET_KEY=GOOD_KEY,
        ALLOWED_HOSTS="ccm.example.org",
        ANYMAIL_WEBHOOK_SECRET="esp:long-random-webhook-secret",
        AUDIT_SIGNING_KEY=AUDIT_KEY,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout


def test_seed_demo_refuses_production():
    result = _manage(
        "seed_demo",
        DEBUG="false",
        SECRET_KEY=GOOD_KEY,
        ALLOWED_HOSTS="ccm.example.org",
        ANYMAIL_WEBHOOK_SECRET="esp:long-random-webhook-secret",
        AUDIT_SIGNING_KEY=AUDIT_KEY,
    )
    assert result.returncode != 0
    assert "never runs with DEBUG off" in result.stderr


def test_production_refuses_open_tracking_webhooks():
    result = _manage("check", DEBUG="false", SECRET_KEY=GOOD_KEY, ALLOWED_HOSTS="ccm.example.org")
    assert result.returncode != 0
    assert "ANYMAIL_WEBHOOK_SECRET" in result.stderr


PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": GOOD_KEY,
    "ALLOWED_HOSTS": "ccm.example.org",
    "ANYMAIL_WEBHOOK_SECRET": "esp:long-random-webhook-secret",
    "AUDIT_SIGNING_KEY": AUDIT_KEY,
}


def test_production_refuses_an_esp_that_signs_webhooks_without_its_key():
    result = _manage("check", EMAIL_BACKEND="anymail.backends.sendgrid.EmailBackend", **PRODUCTION)
    assert result.returncode != 0
    assert "SENDGRID_TRACKING_WEBHOOK_VERIFICATION_KEY must be set" in result.stderr
    # the same when it is only listed for tracking (e.g. during a move between ESPs)
    listed = _manage("check", CCM_TRACKING_ESPS="postmark,sendgrid", **PRODUCTION)
    assert "SENDGRID_TRACKING_WEBHOOK_VERIFICATION_KEY must be set" in listed.stderr


def test_production_starts_with_the_signing_key_or_an_esp_that_does_not_sign():
    signed = _manage(
        "check",
        EMAIL_BACKEND="anymail.backends.sendgrid.EmailBackend",
        SENDGRID_TRACKING_WEBHOOK_VERIFICATION_KEY="MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE",
        **PRODUCTION,
    )
    assert signed.returncode == 0, signed.stderr
    postmark = _manage(
        "check", EMAIL_BACKEND="anymail.backends.postmark.EmailBackend", **PRODUCTION
    )
    assert postmark.returncode == 0, postmark.stderr


@pytest.mark.parametrize(
    "key", [None, "too-short", "dev-audit-signing-key-for-local-use-only-never-in-production"]
)
def test_production_refuses_to_start_without_an_audit_signing_key(key):
    env = {"AUDIT_SIGNING_KEY": key} if key else {}
    result = _manage(
        "check",
        DEBUG="false",
        SECRET_KEY=GOOD_KEY,
        ALLOWED_HOSTS="ccm.example.org",
        ANYMAIL_WEBHOOK_SECRET="esp:long-random-webhook-secret",
        **env,
    )
    assert result.returncode != 0
    assert "AUDIT_SIGNING_KEY must be set to a random value" in result.stderr


def _setting(name: str, **env: str) -> str:
    result = _manage(
        "shell", "-c", f"from django.conf import settings; print(settings.{name})", **env
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_sender_profile_is_read_from_the_environment():
    assert _setting(
        "CCM_SENDER_PROFILE", CCM_SENDER_PROFILE="internal_alert=esp,approval=gmail"
    ) == str({"internal_alert": "esp", "approval": "gmail"})


def test_without_gmail_internal_mail_goes_through_the_email_backend():
    # The demo (`make run`) has no Gmail gateway: its alerts go to the console backend.
    assert _setting("CCM_SENDER_PROFILE", GMAIL_SERVICE_ACCOUNT_FILE="") == str(
        {"internal_alert": "esp", "approval": "esp", "report": "esp"}
    )
    assert _setting("CCM_SENDER_PROFILE", GMAIL_SERVICE_ACCOUNT_FILE="/etc/ccm/gmail.json") == str(
        {"internal_alert": "gmail", "approval": "gmail", "report": "gmail"}
    )
