"""Web Push: encrypted (RFC 8291), signed with VAPID (RFC 8292), posted to a loopback push
service that answers as the real ones do."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import http_ece
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from notifications.channels import push
from notifications.customers.devices import device_register
from notifications.models import Device
from tests.notifications.conftest import b64url, browser_keys, send_alert

pytestmark = pytest.mark.usefixtures("push_settings")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def vapid_claims(token: str, public_key: ec.EllipticCurvePublicKey) -> dict:
    """The claims of a VAPID JWT (ES256, no iat), once its signature checks out."""
    signing_input, _, signature = token.rpartition(".")
    raw = unb64url(signature)
    der = encode_dss_signature(int.from_bytes(raw[:32]), int.from_bytes(raw[32:]))
    public_key.verify(der, signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    return json.loads(unb64url(signing_input.split(".")[1]))


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
        "title": "Balance for Mo Bile",  # the customer on record, not the data's name
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
