"""The customer document portal: a signed link opens one communication's document, no login.

The token is the only key. It names no id, so a token opens exactly the communication it was
made for; a link that no longer works (tampered, unknown, expired, revoked, or its communication
withdrawn) gets one generic page that says nothing about the document or the customer, and a
button that sends a fresh link to the contact details we already hold — never to an address
the visitor gives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.core import signing
from django.core.cache import cache
from django.db import transaction
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac
from django.utils.text import slugify
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST, require_safe
from django_fsm import can_proceed

from ccm import audit, links
from ccm.links import LinkInvalid
from ccm.models import SignedLink
from ccm.ratelimit import client_ip, rate_limit_hit, rate_limit_key
from documents.bundle import house_colours
from documents.composition import CompositionError
from documents.rendering import RenderError, first_page_png
from notifications.channels.pipeline_calls import pipeline_calls
from notifications.errors import IntakeError
from notifications.models import CommState, Communication

logger = logging.getLogger(__name__)

PURPOSE = "portal"
SYSTEM_USERNAME = "system:portal"
RENEWAL_CLIENT = "portal"

# Only a communication that has gone out can be opened: before that the link exists (it is made
# while composing) but nobody outside should hold it, and a rejected or cancelled one never left.
OPENABLE_STATES = {
    CommState.DISPATCHING,
    CommState.SENT,
    CommState.DELIVERED,
    CommState.VIEWED,
    CommState.ACTIONED,
}
RENEWABLE_REASONS = {"expired", "revoked"}

REQUESTS_PER_MINUTE = 30  # per client address, every portal endpoint
REQUESTS_PER_LINK_PER_MINUTE = 30  # per token, whichever address it comes from
RENEWALS_PER_DAY = 3  # per original communication
RENEWALS_PER_IP_PER_HOUR = 10

_PAGE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; frame-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# Chrome's PDF viewer draws the PDF in a synthetic page that needs inline styles and its own
# resources, so `default-src` or `sandbox` on the PDF response leaves it blank; the PDF gets only
# what decides who may frame it (nosniff comes from SecurityMiddleware).
_PDF_CSP = "frame-ancestors 'self'"


# --- services -------------------------------------------------------------------------------


def portal_url(communication: Communication) -> str:
    """A new portal link to `communication`, absolute, valid for CCM_PORTAL_LINK_TTL_DAYS."""
    token = links.link_create(
        subject=communication,
        purpose=PURPOSE,
        ttl=timedelta(days=settings.CCM_PORTAL_LINK_TTL_DAYS),
    )
    return settings.CCM_PUBLIC_BASE_URL.rstrip("/") + reverse("portal-document", args=[token])


def portal_system_user():
    """The user the portal acts as (audit actor, creator of renewals); it cannot sign in."""
    User = get_user_model()
    user, created = User.objects.get_or_create(username=SYSTEM_USERNAME)
    if created or user.has_usable_password():
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user


def _communication_of(link: SignedLink, *, lock: bool = False) -> Communication:
    if link.subject_type_id != ContentType.objects.get_for_model(Communication).pk:
        raise LinkInvalid("not a communication")
    qs = Communication.objects.filter(pk=link.subject_id, state__in=OPENABLE_STATES)
    if lock:
        # of=self: PostgreSQL cannot lock the nullable side of the outer joins below.
        qs = qs.select_for_update(of=("self",))
    communication = qs.select_related(
        "customer", "template", "template_version", "document__template_version__template"
    ).first()
    if communication is None:
        raise LinkInvalid("communication not openable")
    return communication


def portal_communication(token: str) -> Communication:
    """The communication a live portal token opens; LinkInvalid otherwise."""
    return _communication_of(links.link_peek(token, purpose=PURPOSE))


def portal_title(communication: Communication) -> str:
    """What the customer is looking at: the name of the template the document was made from."""
    document = communication.document
    if document is not None and document.template_version is not None:
        return document.template_version.template.name
    return communication.template.name


def requested_action(communication: Communication) -> dict[str, str] | None:
    """The template's `requires_action` ({"kind", "label"}), or None."""
    version = communication.template_version
    wanted = version.meta.get("requires_action") if version is not None else None
    if not isinstance(wanted, dict):
        return None
    return {
        "kind": str(wanted.get("kind") or "confirm"),
        "label": str(wanted.get("label") or "Confirm"),
    }


def _evidence(ip: str, user_agent: str) -> dict[str, str]:
    return {"ip": ip, "user_agent": user_agent}


@transaction.atomic
def portal_view_record(*, communication: Communication, ip: str, user_agent: str) -> Communication:
    """Record that the page was opened (every time, in the audit log) and move the
    communication to viewed the first time."""
    locked = Communication.objects.select_for_update().get(pk=communication.pk)
    first = can_proceed(locked.mark_viewed)
    if first:
        locked.mark_viewed(when=timezone.now())
        locked.save()
    audit.record(
        actor=portal_system_user(),
        action="communication.viewed",
        subject=locked,
        after={**_evidence(ip, user_agent), "first": first},
    )
    return locked


@transaction.atomic
def portal_action_record(*, communication: Communication, ip: str, user_agent: str) -> bool:
    """Record the customer's answer to the template's required action, once. Returns whether
    this call recorded it (False: already done, or nothing to do)."""
    locked = (
        Communication.objects.select_for_update(of=("self",))
        .select_related("customer", "template_version")
        .get(pk=communication.pk)
    )
    action = requested_action(locked)
    if action is None or locked.actioned_at is not None or not can_proceed(locked.mark_actioned):
        return False
    now = timezone.now()
    locked.mark_actioned(when=now)
    locked.save()
    customer = locked.customer
    audit.record(
        actor=portal_system_user(),
        action="communication.actioned",
        subject=locked,
        after={
            **action,
            **_evidence(ip, user_agent),
            "at": now.isoformat(),
            "customer_id": customer.pk,
            "customer_ref": customer.external_ref,
            "customer_source": customer.source_system,
        },
    )
    return True


def _renewal_data(original: Communication, *, fresh_url: str) -> dict[str, Any]:
    """The document_ready data for `original`."""
    reference = original.data.get("reference") if isinstance(original.data, dict) else None
    dated = original.document.created_at if original.document is not None else original.created_at
    until = timezone.localdate() + timedelta(days=settings.CCM_PORTAL_LINK_TTL_DAYS)
    return {
        "reference": reference if isinstance(reference, str) and reference else f"C{original.pk}",
        "document_title": portal_title(original)[:60],
        "document_date": timezone.localtime(dated).date().isoformat(),
        "portal_url": fresh_url,
        "available_until": until.isoformat(),
    }


def portal_link_renew(*, token: str, ip: str, user_agent: str) -> Communication | None:
    """Send the customer a fresh link for an expired or revoked one: a new communication (from
    CCM_PORTAL_RENEWAL_TEMPLATE, child of the original) carrying a new link to the original.

    Returns the new communication, or None when nothing was sent — the token is tampered,
    unknown or still live, the communication is not openable, or its renewals for the day are
    used up. The caller must answer the same either way.
    """
    try:
        links.link_peek(token, purpose=PURPOSE)
    except LinkInvalid as exc:
        reason = exc.reason
    else:
        return None  # the link still works
    if reason not in RENEWABLE_REASONS:
        return None
    # The reason proves the signature is good; read the nonce to find the original.
    # (links has no public "inspect a dead link"; its salt is the one place that knows.)
    nonce = signing.loads(token, salt=links._salt(PURPOSE))["n"]
    link = SignedLink.objects.get(nonce=nonce, purpose=PURPOSE)
    template_code = getattr(settings, "CCM_PORTAL_RENEWAL_TEMPLATE", "document_ready")
    by = portal_system_user()
    with transaction.atomic():
        try:
            original = _communication_of(link, lock=True)  # serialises renewals of one original
        except LinkInvalid:
            return None
        since = timezone.now() - timedelta(days=1)
        done = Communication.objects.filter(
            parent=original, client=RENEWAL_CLIENT, created_at__gte=since
        ).count()
        if done >= RENEWALS_PER_DAY:
            logger.info("portal renewal refused for communication %s: daily limit", original.pk)
            return None
        try:
            with transaction.atomic():
                # The fresh link opens the original (its document, its required action); the
                # new communication is only the message that carries it.
                data = _renewal_data(original, fresh_url=portal_url(original))
                renewal, _ = pipeline_calls().communication_request(
                    template_code=template_code,
                    customer=original.customer,
                    data=data,
                    client=RENEWAL_CLIENT,
                    by=by,
                    source="api",
                    parent=original,
                    document=original.document,
                )
        except (IntakeError, CompositionError):
            logger.exception("portal renewal for communication %s not accepted", original.pk)
            return None
        audit.record(
            actor=by,
            action="communication.link_renewed",
            subject=original,
            after={**_evidence(ip, user_agent), "renewal": renewal.pk, "reason": reason},
        )
    return renewal


# --- views ----------------------------------------------------------------------------------


def _user_agent(request: HttpRequest) -> str:
    return request.headers.get("User-Agent", "")[:500]


def portal_form_key(token: str) -> str:
    """The hidden field the portal's forms carry: a MAC of the link's token.

    The portal's POSTs are exempt from Django's CSRF check. That check refuses them in Chromium:
    the portal sends `Referrer-Policy: no-referrer` (the token is in the URL and must not leak),
    so Chromium sends `Origin: null`, which Django cannot match to our origin. CSRF protection
    is not what guards the portal anyway: there is no session or cookie to ride on, and the
    secret that authorises an action is the token itself, which a forging site does not know.
    What the key adds is that a POST came from the page CCM rendered for this very link (not a
    bare request built from a URL), and `_foreign_origin` refuses a POST that a browser says
    came from another site."""
    return salted_hmac("ccm.portal.form", token).hexdigest()


def _form_ok(request: HttpRequest, token: str) -> bool:
    return constant_time_compare(request.POST.get("form_key", ""), portal_form_key(token))


def _foreign_origin(request: HttpRequest) -> bool:
    """True when the browser names an origin other than ours ("null" is what no-referrer
    gives, and no header is what non-browser clients send: both pass to the form key)."""
    origin = request.headers.get("Origin")
    if not origin or origin == "null":
        return False
    return origin != f"{request.scheme}://{request.get_host()}"


def _portal_view(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Rate limits and the privacy headers on every portal response.

    Two limits, both in the shared cache: per client address (as the trusted proxies saw it)
    and per link, so that one address cannot try many links and many addresses cannot hammer
    one link."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        token = str(kwargs.get("token", ""))
        retry_after = rate_limit_hit(
            rate_limit_key("portal-ip", client_ip(request)), limit=REQUESTS_PER_MINUTE, window=60
        ) or rate_limit_hit(
            rate_limit_key("portal-link", token), limit=REQUESTS_PER_LINK_PER_MINUTE, window=60
        )
        response: HttpResponseBase
        if retry_after:
            response = render(
                request, "portal/rate_limited.html", {"company": _company()}, status=429
            )
            response["Retry-After"] = str(retry_after)
        else:
            response = view(request, *args, **kwargs)
        response["Referrer-Policy"] = "no-referrer"
        response["Cache-Control"] = "no-store, private"
        response["X-Robots-Tag"] = "noindex, nofollow"
        response.headers.setdefault("Content-Security-Policy", _PAGE_CSP)
        return response

    return csrf_exempt(wrapper)


def _portal_form(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A portal POST must carry its page's form key and must not come from another site."""

    @wraps(view)
    def wrapper(request: HttpRequest, token: str) -> HttpResponse:
        if _foreign_origin(request) or not _form_ok(request, token):
            context = {"company": _company(), "token": token}
            return render(request, "portal/form_refused.html", context, status=403)
        return view(request, token)

    return wrapper


def _unavailable(request: HttpRequest, token: str) -> HttpResponse:
    # One status and one text for every reason: the status is part of the answer, and a
    # different one for expired links would tell a guesser which tokens were ever real.
    return render(
        request,
        "portal/unavailable.html",
        {"company": _company(), "token": token, "form_key": portal_form_key(token)},
        status=404,
    )


def _company() -> str:
    return getattr(settings, "CCM_COMPANY_NAME", "CCM")


@_portal_view
@require_safe
def portal_document(request: HttpRequest, token: str) -> HttpResponse:
    try:
        communication = portal_communication(token)
    except LinkInvalid:
        return _unavailable(request, token)
    communication = portal_view_record(
        communication=communication, ip=client_ip(request), user_agent=_user_agent(request)
    )
    context = {
        "company": _company(),
        "brand_css": True,
        "title": portal_title(communication),
        "customer_name": communication.customer.name,
        "document": communication.document,
        "action": requested_action(communication),
        "actioned_at": communication.actioned_at,
        "token": token,
        "form_key": portal_form_key(token),
    }
    return render(request, "portal/document.html", context)


@_portal_view
@require_safe
@xframe_options_sameorigin
def portal_pdf(request: HttpRequest, token: str) -> HttpResponseBase:
    try:
        communication = portal_communication(token)
    except LinkInvalid:
        return _unavailable(request, token)
    document = communication.document
    if document is None:
        return _unavailable(request, token)
    download = request.GET.get("download") == "1"
    response = FileResponse(
        document.file.open("rb"),
        content_type="application/pdf",
        as_attachment=download,
        filename=f"{slugify(portal_title(communication)) or 'document'}.pdf",
    )
    response["Content-Security-Policy"] = _PDF_CSP
    return response


# A phone's picture of the first page: wide enough to read on a 3x screen of 360 CSS pixels.
PAGE_IMAGE_WIDTH_PX = 1000
PAGE_IMAGE_CACHE_S = 3600


@_portal_view
@require_safe
def portal_page_image(request: HttpRequest, token: str) -> HttpResponseBase:
    """The document's first page as a picture: most phone browsers do not draw a PDF inline,
    so the portal shows this above the action instead."""
    try:
        communication = portal_communication(token)
    except LinkInvalid:
        return _unavailable(request, token)
    document = communication.document
    if document is None:
        return _unavailable(request, token)
    key = f"ccm:portal-page:{document.sha256}:{PAGE_IMAGE_WIDTH_PX}"
    png = cache.get(key)
    if png is None:
        with document.file.open("rb") as fh:
            pdf = fh.read()
        try:
            png = first_page_png(pdf, width_px=PAGE_IMAGE_WIDTH_PX)
        except RenderError:
            logger.exception("portal: the first page of document %s cannot be drawn", document.pk)
            return HttpResponse(status=404)
        cache.set(key, png, PAGE_IMAGE_CACHE_S)
    return HttpResponse(png, content_type="image/png")


@_portal_view
@require_safe
def portal_brand_css(request: HttpRequest, token: str) -> HttpResponseBase:
    """The brand's colours from the document's house style, as the portal's custom properties
    (a stylesheet, as the portal's CSP allows no inline style)."""
    try:
        communication = portal_communication(token)
    except LinkInvalid:
        return HttpResponse("", content_type="text/css")
    version = communication.template_version
    colours = house_colours(version.content) if version is not None else {}
    rules = "".join(f"--{name}:{value};" for name, value in sorted(colours.items()))
    return HttpResponse(f":root{{{rules}}}" if rules else "", content_type="text/css")


@_portal_view
@require_POST
@_portal_form
def portal_action(request: HttpRequest, token: str) -> HttpResponse:
    try:
        communication = portal_communication(token)
    except LinkInvalid:
        return _unavailable(request, token)
    portal_action_record(
        communication=communication, ip=client_ip(request), user_agent=_user_agent(request)
    )
    return redirect("portal-document", token)


@_portal_view
@require_POST
@_portal_form
def portal_renew(request: HttpRequest, token: str) -> HttpResponse:
    ip = client_ip(request)
    if not rate_limit_hit(
        rate_limit_key("portal-renew", ip), limit=RENEWALS_PER_IP_PER_HOUR, window=3600
    ):
        portal_link_renew(token=token, ip=ip, user_agent=_user_agent(request))
    return render(request, "portal/renew_requested.html", {"company": _company()})
