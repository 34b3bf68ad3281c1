"""Reads for the reprint and correspondence screens, the API and the email intake."""

from __future__ import annotations

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db.models import Q, QuerySet

from cases.requests.models import CorrespondenceRequest, ReprintRequest
from ccm.models import Approval
from documents.models import DocumentKind, TemplateVersion, VersionState
from notifications.models import (
    Channel,
    CommState,
    Communication,
    ContactKind,
    Customer,
)

# A document the customer was sent (or that was on its way and did not reach them): what can
# be reprinted. Held, rejected or cancelled communications never issued their document.
ISSUED_STATES = [
    CommState.DISPATCHING,
    CommState.SENT,
    CommState.DELIVERED,
    CommState.VIEWED,
    CommState.ACTIONED,
    CommState.UNDELIVERABLE,
]
CONTACT_KIND = {Channel.EMAIL: ContactKind.EMAIL, Channel.SMS: ContactKind.PHONE}


def customer_search(query: str, *, limit: int = 20) -> QuerySet[Customer]:
    """Customers whose reference starts with, or whose name contains, `query`."""
    query = query.strip()
    if not query:
        return Customer.objects.none()
    return Customer.objects.filter(
        Q(external_ref__iexact=query)
        | Q(external_ref__istartswith=query)
        | Q(name__icontains=query)
    ).order_by("name", "id")[:limit]


def issued_communications(customer: Customer) -> QuerySet[Communication]:
    """The customer's communications with an archived original document, newest first."""
    return (
        Communication.objects.filter(
            customer=customer,
            state__in=ISSUED_STATES,
            document__isnull=False,
            document__kind=DocumentKind.ORIGINAL,
        )
        .select_related("document__template_version__template", "template")
        .order_by("-created_at", "-id")
    )


def known_addresses(customer: Customer, channel: str) -> list[str]:
    """The customer's valid addresses on `channel`, primary first, as deliveries store them."""
    if channel == Channel.PRINT:
        lines = [str(line).strip() for line in customer.postal_address if str(line).strip()]
        return [" / ".join(lines)] if customer.postal_address_valid and lines else []
    kind = CONTACT_KIND.get(channel)  # type: ignore[call-overload]
    if kind is None:
        return []
    return list(
        customer.contacts.filter(kind=kind, valid=True)
        .order_by("-is_primary", "id")
        .values_list("value", flat=True)
    )


def reprint_channels() -> list[str]:
    enabled = set(settings.CCM_ENABLED_CHANNELS)
    return [c for c in settings.CASES_REPRINT_CHANNELS if c in enabled]


def correspondence_versions() -> QuerySet[TemplateVersion]:
    """Published versions an agent may write a letter from: they have a printed letter, and are
    not marketing (which needs a campaign and its consent checks, not an ad hoc form)."""
    return (
        TemplateVersion.objects.filter(state=VersionState.PUBLISHED)
        .exclude(template__category="marketing")
        .select_related("template")
        .order_by("template__name", "template__code")
    )


def writable(version: TemplateVersion) -> bool:
    """A letter an agent can write: it prints, and it carries no portal link (that link points
    at the communication the pipeline makes, so such letters are the pipeline's to compose)."""
    meta = version.meta
    return "print" in meta.get("channels", []) and meta.get("delivery") != "portal_link"


def correspondence_version(code: str) -> TemplateVersion | None:
    version = correspondence_versions().filter(template__code=code).first()
    return version if version is not None and writable(version) else None


def requests_of(user) -> dict[str, QuerySet]:
    """The agent's own reprint and correspondence requests, newest first."""
    return {
        "reprints": ReprintRequest.objects.filter(requested_by=user)
        .select_related("customer", "case", "document__template_version__template", "communication")
        .order_by("-created_at", "-id"),
        "correspondence": CorrespondenceRequest.objects.filter(requested_by=user)
        .select_related("customer", "case", "template", "communication")
        .order_by("-created_at", "-id"),
    }


def reprints_to_verify() -> QuerySet[ReprintRequest]:
    """Requests from the email intake that wait for an agent to confirm who asked."""
    return ReprintRequest.objects.filter(
        state="requested", requested_by__isnull=True
    ).select_related("customer", "case")


def last_approval(subject) -> Approval | None:
    """The latest sign-off asked for `subject` (pending or decided)."""
    return (
        Approval.objects.filter(
            subject_type=ContentType.objects.get_for_model(subject), subject_id=str(subject.pk)
        )
        .select_related("decided_by", "requested_by")
        .order_by("-requested_at", "-id")
        .first()
    )
