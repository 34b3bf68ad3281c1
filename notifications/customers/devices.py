"""Every write about customers' push devices: register, deactivate.

A registration names an app installation (an FCM registration token) or a browser (a Web Push
subscription). The same token registered again is the same device: it is refreshed, or
reactivated, never duplicated; registered to another customer (a shared phone, a new login) it
moves, and the old registration is deactivated so that nobody else's push reaches it.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import IntegrityError, transaction
from django.utils import timezone

from ccm import audit
from notifications.customers import services as customer_services
from notifications.models import Customer, Device, LegalBasis

CONSENT_SOURCE = "api"


@transaction.atomic
def device_register(
    *,
    customer: Customer,
    platform: str,
    token: str,
    app: str,
    p256dh: str = "",
    auth: str = "",
    by=None,
    opt_in: bool | None = None,
    categories: Iterable[str] = (),
    consent_source: str = CONSENT_SOURCE,
) -> tuple[Device, bool]:
    """Register (or refresh) the device with this token for `customer`; True when a new
    registration was made.

    `opt_in`, when given, is the customer's answer to the app's push prompt: it is appended to
    the consent ledger for each of `categories` on the push channel, in the same transaction.
    """
    device, created = _register(
        customer=customer, platform=platform, token=token, app=app, p256dh=p256dh, auth=auth
    )
    audit.record(
        actor=by,
        action="device.registered" if created else "device.refreshed",
        subject=device,
        after={
            "customer": customer.external_ref,
            "platform": platform,
            "app": app,
            "address": device.address,
        },
    )
    if opt_in is not None:
        for category in dict.fromkeys(categories):
            customer_services.consent_record(
                customer=customer,
                channel="push",
                category=category,
                granted=opt_in,
                legal_basis=LegalBasis.CONSENT,
                source=consent_source,
                by=by,
                evidence={"device": device.pk, "app": app, "platform": platform},
            )
    return device, created


def _register(
    *, customer: Customer, platform: str, token: str, app: str, p256dh: str, auth: str
) -> tuple[Device, bool]:
    now = timezone.now()
    fields = {"platform": platform, "p256dh": p256dh, "auth": auth, "last_seen_at": now}
    for _ in range(2):
        current = Device.objects.select_for_update().filter(app=app, token=token, active=True)
        for device in current:
            if device.customer_id == customer.pk:
                Device.objects.filter(pk=device.pk).update(**fields)
                device.refresh_from_db()
                return device, False
            _deactivate(device, reason=f"registered again for customer {customer.external_ref}")
        # A registration this customer revoked earlier comes back as the same device, so its
        # history (deliveries name it) stays in one place.
        revoked = (
            Device.objects.select_for_update()
            .filter(customer=customer, app=app, token=token, active=False)
            .order_by("-deactivated_at", "-id")
            .first()
        )
        try:
            with transaction.atomic():
                if revoked is not None:
                    Device.objects.filter(pk=revoked.pk).update(
                        active=True, deactivated_at=None, deactivated_reason="", **fields
                    )
                    revoked.refresh_from_db()
                    return revoked, False
                device = Device.objects.create(customer=customer, token=token, app=app, **fields)
                return device, True
        except IntegrityError:
            # Registered by a concurrent request between our look and our write: look again.
            continue
    raise IntegrityError(f"could not register the device token for app {app!r}")


def device_deactivate(*, device: Device, reason: str, by=None) -> bool:
    """Stop sending to the device (revoked, or gone at the provider); False if it already was."""
    with transaction.atomic():
        return _deactivate(device, reason=reason, by=by)


def _deactivate(device: Device, *, reason: str, by=None) -> bool:
    now = timezone.now()
    updated = Device.objects.filter(pk=device.pk, active=True).update(
        active=False, deactivated_at=now, deactivated_reason=reason[:300]
    )
    if not updated:
        return False
    device.active, device.deactivated_at, device.deactivated_reason = False, now, reason[:300]
    audit.record(
        actor=by,
        action="device.deactivated",
        subject=device,
        before={"active": True},
        after={"active": False, "reason": reason[:300]},
    )
    return True
