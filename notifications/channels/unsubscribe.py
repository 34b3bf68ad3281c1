"""One-click unsubscribe (RFC 8058) for marketing email.

Every marketing email carries `List-Unsubscribe: <https://…/u/<token>/>` and
`List-Unsubscribe-Post: List-Unsubscribe=One-Click`; transactional, service and regulatory mail
carry neither (they are not optional, so offering to unsubscribe from them would mislead).

The token is the delivery id signed with the secret key: it names one recipient of one message,
and cannot be guessed or changed. It does not expire — a customer must be able to opt out of an
old newsletter. The mailbox provider POSTs `List-Unsubscribe=One-Click` without cookies, so the
POST needs no session and no CSRF token; a GET only shows a confirmation button, because mail
scanners follow links and must not unsubscribe anyone. An opt-out is recorded once in the
consent ledger (marketing on email); repeating it changes nothing. The address is not put on the
suppression list: regulatory and service mail must still reach it.
"""

from __future__ import annotations

from django.conf import settings
from django.core import signing
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from notifications.customers import services as customer_services
from notifications.models import Channel, ConsentRecord, Delivery, LegalBasis

SALT = "ccm.unsubscribe"
MARKETING = "marketing"


def unsubscribe_url(delivery: Delivery) -> str:
    token = signing.Signer(salt=SALT).sign(str(delivery.pk))
    return settings.CCM_PUBLIC_BASE_URL.rstrip("/") + reverse("unsubscribe", args=[token])


def unsubscribe_headers(delivery: Delivery, category: str) -> dict[str, str]:
    """The RFC 8058 headers for a marketing email; none for anything else."""
    if category != MARKETING:
        return {}
    return {
        "List-Unsubscribe": f"<{unsubscribe_url(delivery)}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def _delivery_for(token: str) -> Delivery | None:
    try:
        pk = signing.Signer(salt=SALT).unsign(token)
    except signing.BadSignature:
        return None
    return (
        Delivery.objects.select_related("communication__customer")
        .filter(pk=int(pk), channel=Channel.EMAIL)
        .first()
    )


@transaction.atomic
def unsubscribe_apply(*, delivery: Delivery, evidence: dict) -> bool:
    """Record the opt-out unless the ledger already says so; True when it recorded one."""
    customer = delivery.communication.customer
    # One opt-out per customer at a time, even with two clicks in flight.
    type(customer).objects.select_for_update().get(pk=customer.pk)
    latest = (
        ConsentRecord.objects.filter(customer=customer, channel=Channel.EMAIL, category=MARKETING)
        .order_by("-recorded_at", "-id")
        .first()
    )
    if latest is not None and not latest.granted:
        return False
    customer_services.consent_record(
        customer=customer,
        channel=Channel.EMAIL,
        category=MARKETING,
        granted=False,
        legal_basis=LegalBasis.CONSENT,
        source="unsubscribe",
        evidence={"delivery": delivery.pk, "address": delivery.address, **evidence},
    )
    return True


def _page(request: HttpRequest, template: str, status: int = 200, **context) -> HttpResponse:
    response = render(
        request, template, {"company": settings.CCM_COMPANY_NAME, **context}, status=status
    )
    response["Referrer-Policy"] = "no-referrer"
    response["Cache-Control"] = "no-store"
    return response


@csrf_exempt
@require_http_methods(["GET", "POST"])
def unsubscribe_view(request: HttpRequest, token: str) -> HttpResponse:
    delivery = _delivery_for(token)
    if delivery is None:
        return _page(request, "unsubscribe/invalid.html", status=400)
    if request.method == "GET":
        return _page(request, "unsubscribe/confirm.html", token=token)
    unsubscribe_apply(
        delivery=delivery,
        evidence={
            "one_click": request.POST.get("List-Unsubscribe") == "One-Click",
            "ip": request.META.get("REMOTE_ADDR", ""),
            "user_agent": request.META.get("HTTP_USER_AGENT", "")[:300],
        },
    )
    return _page(request, "unsubscribe/done.html")
