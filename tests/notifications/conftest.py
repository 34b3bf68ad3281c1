from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.core import mail
from django_q.conf import Conf
from django_q.models import Task

from ccm import approvals
from documents import services as documents
from notifications.channels import push, sms
from notifications.customers import services as customer_services
from notifications.customers.devices import device_register
from notifications.pipeline import services
from tests.documents.factories import TemplateFactory, letter_bundle


@pytest.fixture
def sync_tasks(monkeypatch, django_capture_on_commit_callbacks):
    """Run enqueued tasks at once, in this process, as their transactions commit."""
    monkeypatch.setattr(Conf, "SYNC", True)

    def run(fn, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            result = fn(*args, **kwargs)
        # django-q records a failing task instead of raising: surface it here.
        failed = list(Task.objects.filter(success=False).values_list("func", "result"))
        assert failed == [], failed
        return result

    return run


def publish(bundle, *, author, reviewer):
    template = TemplateFactory(code=bundle.meta["code"], category=bundle.meta["category"])
    version = documents.template_version_create(template=template, bundle=bundle, by=author)
    approval = documents.template_version_submit(version=version, by=author)
    approvals.approval_decide(approval=approval, by=reviewer, decision="approve")
    version.refresh_from_db()
    return documents.template_version_publish(version=version, by=author)


@pytest.fixture
def letter(author, reviewer):
    return publish(letter_bundle(), author=author, reviewer=reviewer)


@pytest.fixture
def customer(db, admin_user):
    customer, _ = customer_services.customer_upsert(
        external_ref="C-1",
        name="Ada Lovelace",
        postal_address=["1 Analytical Row", "London N1 1AA"],
        emails=["ada@example.org"],
        phones=["07911 123456"],
        by=admin_user,
    )
    return customer


@pytest.fixture
def integrator(make_user):
    return make_user("core-banking", "integrator")


@pytest.fixture(autouse=True)
def _empty_outbox():
    mail.outbox = []
    sms.outbox.clear()


def ok(body: dict) -> tuple[dict, str]:
    """A Google API's 200 answer, for HttpMockSequence."""
    return {"status": "200", "content-type": "application/json; charset=UTF-8"}, json.dumps(body)


@pytest.fixture
def service_account_key(tmp_path) -> tuple[Path, bytes]:
    """A throwaway Google service account key file (project ccm-test) and its public key."""
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "ccm-gmail.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "ccm-test",
                "private_key_id": "0123456789abcdef",
                "private_key": pem.decode("ascii"),
                "client_email": "ccm-mailer@ccm-test.iam.gserviceaccount.com",
                "client_id": "109876543210987654321",
                "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    return path, public_pem


# --- push: a customer with a device, a template with a push rendition ------------------------

FCM_TOKEN = "fTq3-Example:APA91bH_registration_token_of_a_test_phone"
ALERT_DATA = {"customer": {"name": "Ada Lovelace"}, "balance": 12.5, "as_of": "2026-05-01"}


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def browser_keys() -> tuple[ec.EllipticCurvePrivateKey, bytes, dict[str, str]]:
    """What a browser makes when it subscribes: an ECDH key pair and an auth secret."""
    private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    auth = b"sixteen-byte-key"
    return private, auth, {"p256dh": b64url(public), "auth": b64url(auth)}


def alert_bundle(code: str = "alert", *, category: str = "service", channels=("email", "push")):
    """The small test template, with a push rendition and a portal link."""
    bundle = letter_bundle(code, category=category, channels=list(channels), delivery="portal_link")
    files = {
        **bundle.files,
        "push.title.txt": "Balance for {{ customer.name }}",
        "push.body.txt": "You owe {{ balance | money('GBP') }}. Tap to read the letter.",
    }
    return dataclasses.replace(bundle, files=files)


@pytest.fixture
def push_settings(settings):
    """Push enabled, sent through the locmem transport; retries left to the test."""
    settings.CCM_ENABLED_CHANNELS = ["email", "push", "print"]
    settings.CCM_PUSH_BACKEND = "notifications.channels.push.LocmemPushBackend"
    settings.CCM_FCM_CREDENTIALS_FILE = ""
    settings.CCM_FCM_PROJECT_ID = ""
    settings.CCM_DISPATCH_INLINE_RETRIES = 0
    push.outbox.clear()


@pytest.fixture
def app_user(db, admin_user):
    """A customer who is reachable by push only."""
    customer, _ = customer_services.customer_upsert(
        external_ref="M-1", name="Mo Bile", by=admin_user
    )
    return customer


@pytest.fixture
def phone(app_user, admin_user):
    device, _ = device_register(
        customer=app_user, platform="android", token=FCM_TOKEN, app="com.nw.app", by=admin_user
    )
    return device


@pytest.fixture
def alert(author, reviewer):
    return publish(alert_bundle(), author=author, reviewer=reviewer)


def send_alert(customer, by, code="alert", **kwargs):
    communication, _ = services.communication_request(
        template_code=code, customer=customer, data=ALERT_DATA, client="t", by=by, **kwargs
    )
    return communication
