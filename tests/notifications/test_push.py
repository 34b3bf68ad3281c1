"""The push channel: FCM HTTP v1 (through the library's HTTP mocks), Web Push (to a loopback
push service), and push in the pipeline."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import http_ece
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from django.core import mail
from google.auth import jwt
from googleapiclient.http import HttpMockSequence

from ccm.models import AuditEvent
from documents.bundle import read_folder
from documents.demo import LIBRARY
from notifications import services, signals
from notifications.channels import push
from notifications.devices import device_register
from notifications.models import Delivery, Device
from tests.notifications.conftest import (
    FCM_TOKEN,
    alert_bundle,
    b64url,
    browser_keys,
    publish,
    send_alert,
)

pytestmark = pytest.mark.usefixtures("push_settings")

FCM_SEND = "https://fcm.googleapis.com/v1/projects/ccm-test/messages:send"


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def vapid_claims(token: str, public_key: ec.EllipticCurvePublicKey) -> dict:
    """The claims of a VAPID JWT (ES256, no iat), once its signature checks out."""
    signing_input, _, signature = token.rpartition(".")
    raw = unb64url(signature)
    der = encode_dss_signature(int.from_bytes(raw[:32]), int.from_bytes(raw[32:]))
    public_key.verify(der, signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    return json.loads(unb64url(signing_input.split(".")[1]))


# --- FCM HTTP v1 ----------------------------------------------------------------------------


def ok(body: dict) -> tuple[dict, str]:
    return {"status": "200", "content-type": "application/json; charset=UTF-8"}, json.dumps(body)


def fcm_failure(status: int, code: str, message: str, *, fcm_code="", field="") -> tuple:
    """An error as FCM HTTP v1 answers it: google.rpc.Status with FcmError/BadRequest details."""
    details: list[dict] = []
    if fcm_code:
        details.append(
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": fcm_code}
        )
    if field:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": field, "description": message}],
            }
        )
    body = {"error": {"code": status, "message": message, "status": code, "details": details}}
    return {"status": str(status), "content-type": "application/json; charset=UTF-8"}, json.dumps(
        body
    )


UNREGISTERED = fcm_failure(
    404, "NOT_FOUND", "Requested entity was not found.", fcm_code="UNREGISTERED"
)


@pytest.fixture
def fcm(settings, monkeypatch):
    """Point the FCM transport at an HttpMockSequence answering with the given responses."""
    settings.CCM_PUSH_BACKEND = "notifications.channels.push.FcmWebPushBackend"

    def answer(*responses, credentials_file=None, project_id="ccm-test"):
        http = HttpMockSequence(list(responses))
        monkeypatch.setattr(
            push,
            "fcm_client",
            lambda: push.FcmClient(
                http=http, credentials_file=credentials_file, project_id=project_id
            ),
        )
        return http

    return answer


@pytest.fixture
def failures():
    seen: list[tuple[int, str]] = []

    def receiver(sender, delivery, reason, **kwargs):
        seen.append((delivery.pk, reason))

    signals.delivery_failed.connect(receiver, weak=False, dispatch_uid="test_push")
    yield seen
    signals.delivery_failed.disconnect(dispatch_uid="test_push")


def test_fcm_send_as_the_service_account_with_the_deep_link(
    fcm, service_account_key, app_user, phone, alert, integrator, sync_tasks
):
    # given: the key names project ccm-test; the mock serves the token, then FCM
    path, public_pem = service_account_key
    http = fcm(
        ok({"access_token": "ya29.fcm-token", "expires_in": 3599, "token_type": "Bearer"}),
        ok({"name": "projects/ccm-test/messages/0:1716-4242"}),
        credentials_file=str(path),
        project_id=None,
    )
    # when
    communication = sync_tasks(send_alert, app_user, integrator)
    # then: the token was asked for the FCM scope, the message posted to the key's project
    communication.refresh_from_db()
    delivery = communication.deliveries.get()
    token_uri, _, token_body, _ = http.request_sequence[0]
    assertion = parse_qs(token_body.decode("ascii"))["assertion"][0]
    claims = jwt.decode(assertion, certs=public_pem, audience=token_uri)
    assert claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
    uri, method, body, headers = http.request_sequence[1]
    assert (method, uri.split("?")[0]) == ("POST", FCM_SEND)
    assert headers["authorization"] == "Bearer ya29.fcm-token"
    assert json.loads(body) == {
        "message": {
            "token": FCM_TOKEN,
            "notification": {
                "title": "Balance for Ada Lovelace",
                "body": "You owe £12.50. Tap to read the letter.",
            },
            "data": {
                "link": communication.data["portal_url"],
                "communication_id": str(communication.pk),
                "delivery_id": str(delivery.pk),
            },
        }
    }
    assert communication.data["portal_url"].startswith("http://127.0.0.1:8000/p/")
    assert (delivery.channel, delivery.address) == ("push", f"device:{phone.pk}")
    assert (delivery.state, delivery.provider_message_id) == (
        "sent",
        "projects/ccm-test/messages/0:1716-4242",
    )
    assert delivery.meta["device"] == phone.pk
    assert communication.state == "sent"


def test_unregistered_token_deactivates_the_device_and_fails_the_delivery(
    fcm, app_user, phone, alert, integrator, sync_tasks, failures
):
    # given
    fcm(UNREGISTERED)
    # when
    communication = sync_tasks(send_alert, app_user, integrator)
    # then: the delivery failed with FCM's reason, for the fallback to move on
    delivery = communication.deliveries.get()
    assert delivery.state == "failed"
    assert delivery.last_error == "FCM 404 UNREGISTERED: Requested entity was not found."
    assert failures == [(delivery.pk, delivery.last_error)]
    # and the device is deactivated, audited, and no longer chosen
    phone.refresh_from_db()
    assert not phone.active
    assert phone.deactivated_reason == delivery.last_error
    event = AuditEvent.objects.get(action="device.deactivated")
    assert event.after["reason"] == delivery.last_error
    later = sync_tasks(send_alert, app_user, integrator)
    later.refresh_from_db()
    assert later.state == "undeliverable"
    assert {"channel": "push", "eligible": False, "reason": "no active device"} in (
        later.decision_trace
    )


@pytest.mark.parametrize(
    ("response", "state", "device_active"),
    [
        (
            fcm_failure(429, "RESOURCE_EXHAUSTED", "Quota", fcm_code="QUOTA_EXCEEDED"),
            "pending",
            True,
        ),
        (fcm_failure(500, "INTERNAL", "Internal error", fcm_code="INTERNAL"), "pending", True),
        (fcm_failure(503, "UNAVAILABLE", "The service is currently unavailable."), "pending", True),
        (fcm_failure(401, "UNAUTHENTICATED", "Request had invalid credentials."), "failed", True),
        (
            fcm_failure(403, "PERMISSION_DENIED", "Mismatch", fcm_code="SENDER_ID_MISMATCH"),
            "failed",
            True,
        ),
        (
            fcm_failure(
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
                fcm_code="INVALID_ARGUMENT",
                field="message.token",
            ),
            "failed",
            False,
        ),
        (
            fcm_failure(
                400,
                "INVALID_ARGUMENT",
                "Invalid value at 'message.data[0].value'",
                fcm_code="INVALID_ARGUMENT",
                field="message.data[0].value",
            ),
            "failed",
            True,
        ),
    ],
)
def test_fcm_errors_retry_fail_or_deactivate(
    fcm, app_user, phone, alert, integrator, sync_tasks, response, state, device_active
):
    fcm(response)
    communication = sync_tasks(send_alert, app_user, integrator)
    delivery = communication.deliveries.get()
    phone.refresh_from_db()
    assert (delivery.state, phone.active) == (state, device_active)
    assert f"FCM {response[0]['status']}" in delivery.last_error
    if state == "pending":
        assert delivery.next_attempt_at is not None


# --- Web Push -------------------------------------------------------------------------------


class PushService:
    """A loopback push service: records each POST and answers with the next scripted status
    (201 with a Location, as push services do, once the script runs out)."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                service.received.append(
                    (self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                status = service.statuses.pop(0) if service.statuses else 201
                self.send_response(status)
                if status == 201:
                    self.send_header("Location", f"{service.url}/m/{len(service.received)}")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> PushService:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def push_service():
    with PushService() as service:
        yield service


@pytest.fixture
def vapid(settings):
    """A throwaway VAPID key in the settings; returns its public key as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    settings.CCM_PUSH_BACKEND = "notifications.channels.push.FcmWebPushBackend"
    settings.CCM_VAPID_PRIVATE_KEY = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    settings.CCM_VAPID_SUBJECT = "mailto:push@ccm.example"
    return key.public_key()


@pytest.fixture
def browser(app_user, admin_user, push_service):
    """A subscribed browser: its device row, and the keys only the browser holds."""
    private, auth, keys = browser_keys()
    device, _ = device_register(
        customer=app_user,
        platform="web",
        token=f"{push_service.url}/wpush/sub-1",
        app="https://portal.northwind.example",
        by=admin_user,
        **keys,
    )
    return device, private, auth


def test_web_push_is_signed_encrypted_and_sent(
    vapid, push_service, browser, alert, app_user, integrator, sync_tasks
):
    device, browser_private, auth = browser
    # when
    communication = sync_tasks(send_alert, app_user, integrator)
    # then: posted to the subscription's endpoint, signed with our VAPID key
    path, headers, body = push_service.received[0]
    assert path == "/wpush/sub-1"
    assert headers["content-encoding"] == "aes128gcm"
    assert headers["ttl"] == str(push.WEBPUSH_TTL_S)
    scheme, _, params = headers["authorization"].partition(" ")
    fields = dict(part.strip().split("=", 1) for part in params.split(","))
    assert scheme == "vapid"
    public_raw = vapid.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert fields["k"] == b64url(public_raw)
    claims = vapid_claims(fields["t"], vapid)
    assert (claims["aud"], claims["sub"]) == (push_service.url, "mailto:push@ccm.example")
    # and only the browser can read it: title, body and the deep link
    communication.refresh_from_db()
    delivery = communication.deliveries.get()
    payload = json.loads(
        http_ece.decrypt(body, private_key=browser_private, auth_secret=auth, version="aes128gcm")
    )
    assert payload == {
        "title": "Balance for Ada Lovelace",
        "body": "You owe £12.50. Tap to read the letter.",
        "data": {
            "link": communication.data["portal_url"],
            "communication_id": str(communication.pk),
            "delivery_id": str(delivery.pk),
        },
    }
    assert delivery.address == device.address
    assert (delivery.state, delivery.provider_message_id) == ("sent", f"{push_service.url}/m/1")
    assert communication.state == "sent"


@pytest.mark.parametrize(
    ("status", "state", "device_active"),
    [
        (410, "failed", False),
        (404, "failed", False),
        (429, "pending", True),
        (503, "pending", True),
    ],
)
def test_web_push_gone_deactivates_and_busy_retries(
    vapid,
    push_service,
    browser,
    alert,
    app_user,
    integrator,
    sync_tasks,
    status,
    state,
    device_active,
):
    push_service.statuses = [status]
    communication = sync_tasks(send_alert, app_user, integrator)
    delivery = communication.deliveries.get()
    device = Device.objects.get(pk=browser[0].pk)
    assert (delivery.state, device.active) == (state, device_active)
    assert delivery.last_error.startswith(f"Web Push {status}")
    if not device_active:
        assert device.deactivated_reason.startswith(f"Web Push {status}")


def test_web_push_without_a_vapid_key_fails_saying_so(
    settings, push_service, browser, alert, app_user, integrator, sync_tasks
):
    settings.CCM_PUSH_BACKEND = "notifications.channels.push.FcmWebPushBackend"
    settings.CCM_VAPID_PRIVATE_KEY = ""
    settings.CCM_VAPID_SUBJECT = "mailto:push@ccm.example"
    communication = sync_tasks(send_alert, app_user, integrator)
    delivery = communication.deliveries.get()
    assert (delivery.state, delivery.last_error) == (
        "failed",
        "push is not configured: CCM_VAPID_PRIVATE_KEY is not set",
    )
    assert push_service.received == []
    assert Device.objects.get(pk=browser[0].pk).active


# --- push in the pipeline -------------------------------------------------------------------


def test_regulatory_notice_to_a_customer_with_a_device_also_goes_by_email(
    author, reviewer, customer, admin_user, integrator, sync_tasks
):
    # given: a regulatory template with a push rendition; the customer has a device and email
    publish(alert_bundle("notice", category="regulatory"), author=author, reviewer=reviewer)
    device, _ = device_register(
        customer=customer, platform="ios", token=FCM_TOKEN, app="com.nw.app", by=admin_user
    )
    # when: urgent, so push comes first
    communication = sync_tasks(send_alert, customer, integrator, code="notice", urgency="high")
    # then
    communication.refresh_from_db()
    assert sorted(communication.deliveries.values_list("channel", "address", "state")) == [
        ("email", "ada@example.org", "sent"),
        ("push", device.address, "sent"),
    ]
    assert {
        "channel": "email",
        "decision": "added",
        "reason": "a regulatory notice must reach a durable medium",
    } in communication.decision_trace
    assert [m.to for m in mail.outbox] == [["Ada Lovelace <ada@example.org>"]]
    assert [m.device for m in push.outbox] == [device]


def test_regulatory_notice_never_goes_by_push_alone(
    author, reviewer, app_user, phone, integrator, sync_tasks
):
    publish(alert_bundle("notice", category="regulatory"), author=author, reviewer=reviewer)
    communication = sync_tasks(send_alert, app_user, integrator, code="notice", urgency="high")
    communication.refresh_from_db()
    assert communication.state == "undeliverable"
    assert push.outbox == []


def test_outage_notice_reaches_sent_by_push_with_its_portal_link(
    author, reviewer, app_user, phone, integrator, sync_tasks, client
):
    # given: the library's outage notice; the customer has a phone with the app, no email
    version = publish(read_folder(LIBRARY / "outage_notice"), author=author, reviewer=reviewer)
    data = dict(version.content["samples"]["default"])
    data.pop("portal_url", None)
    # when
    communication, _ = sync_tasks(
        services.communication_request,
        template_code="outage_notice",
        customer=app_user,
        data=data,
        client="t",
        by=integrator,
    )
    # then
    communication.refresh_from_db()
    assert communication.state == "sent"
    [message] = push.outbox
    assert message.device == phone
    assert message.title == "Planned electricity interruption"
    assert message.body == communication.rendered["push"]["body"]
    assert message.body.startswith("Your electricity will be off on")
    assert message.data == {
        "link": communication.data["portal_url"],
        "communication_id": str(communication.pk),
        "delivery_id": str(communication.deliveries.get().pk),
    }
    # and the link opens the notice
    page = client.get(urlsplit(message.data["link"]).path)
    assert page.status_code == 200
    communication.refresh_from_db()
    assert communication.state == "viewed"


def test_a_document_without_a_link_in_its_data_gets_one_link_for_every_attempt(
    author, reviewer, app_user, phone, integrator, sync_tasks, settings, monkeypatch
):
    # given: a statement (the PDF attached to email, no portal link in its data) whose first
    # push attempt fails for a moment
    version = publish(read_folder(LIBRARY / "monthly_statement"), author=author, reviewer=reviewer)
    data = dict(version.content["samples"]["default"])
    attempts: list[push.PushMessage] = []

    def flaky(self, message):
        attempts.append(message)
        if len(attempts) == 1:
            raise push.TransientSendError("FCM 503 UNAVAILABLE")
        return "locmem-1"

    monkeypatch.setattr(push.LocmemPushBackend, "send", flaky)
    communication, _ = sync_tasks(
        services.communication_request,
        template_code="monthly_statement",
        customer=app_user,
        data=data,
        client="t",
        by=integrator,
    )
    delivery = communication.deliveries.get()
    assert delivery.state == "pending"
    # when: the retry
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=None)
    services.delivery_dispatch_run(delivery.pk)
    # then: both attempts carried the same fresh portal link, kept on the delivery
    delivery.refresh_from_db()
    assert delivery.state == "sent"
    links = {m.data["link"] for m in attempts}
    assert links == {delivery.meta["link"]}
    assert delivery.meta["link"].startswith("http://127.0.0.1:8000/p/")
    assert "portal_url" not in communication.data


def test_make_run_prints_pushes_to_the_console(
    settings, app_user, phone, alert, integrator, sync_tasks, capsys
):
    settings.CCM_PUSH_BACKEND = "notifications.channels.push.ConsolePushBackend"
    communication = sync_tasks(send_alert, app_user, integrator)
    communication.refresh_from_db()
    assert communication.state == "sent"
    out = capsys.readouterr().out
    assert f"push to android device {phone.pk} (com.nw.app): 'Balance for Ada Lovelace'" in out
