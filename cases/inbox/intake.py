"""The Gmail intake of the shared mailbox (a periodic task, cases.inbox.tasks.gmail_intake).

Each unprocessed inbox message is, in this order:
- a delivery status notification (a bounce): only one the mail system's own mailer-daemon
  sent (authenticated by the receiving server) naming a Message-ID CCM sealed is matched to its
  delivery, stored as a DeliveryEvent of provider "gmail" and applied by
  notifications.channels.tracking like any ESP's bounce; any other report changes nothing and is
  recorded as `bounce_refused` with the reason, for review;
- a reply to an approval mail (it carries a `[ccm:…]` token): cases.requests.approval_mail decides
  or refuses it; only a From that the receiving server authenticated
  (notifications.channels.mailauth) can decide;
- a reprint request ("Reprint request NW-2048-7731 monthly statement March 2026"): the customer
  reference and the document type (template name or code) are parsed from the subject and body,
  with a month when one is named, and the request is filed to the customer's known address;
- anything else, or a reprint request that cannot be matched: a case for an agent (a reprint
  case when the customer is known, else correspondence) quoting the mail. Nothing is dropped.

Once: a `ProcessedInboxMessage` row (unique Gmail id) is written in the transaction that does
the work, then the message is labelled ccm-processed. A crash between the two leaves the row,
and the next run only labels the message.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from datetime import date

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.utils import timezone

from cases import services
from cases.models import Case, CaseType, Team
from cases.requests import approval_mail, reprints
from cases.requests.models import IdentityCheck, InboxOutcome, ProcessedInboxMessage, RequestSource
from cases.requests.selectors import issued_communications, known_addresses, reprint_channels
from cases.services import CaseError
from ccm import audit
from ccm.tasks import enqueue
from documents.models import Document, Template
from notifications.channels import mailauth
from notifications.channels.gmail import GmailError, GmailGateway, InboxMessage
from notifications.channels.tracking import PROCESS_TASK
from notifications.models import (
    Channel,
    Customer,
    Delivery,
    DeliveryEvent,
    EventType,
)
from notifications.pipeline.message_ids import message_id_issued

logger = logging.getLogger(__name__)

PROVIDER = "gmail"
# A customer reference: letters then digit groups joined by hyphens (NW-2048-7731, C-1).
REFERENCE_RE = re.compile(
    r"\b[A-Z][A-Z0-9]*-[A-Z0-9][A-Z0-9-]*[A-Z0-9]\b|\b[A-Z]+-[0-9]\b", re.IGNORECASE
)
# Who writes the receiving mailbox its bounces (at CCM_INBOUND_MAIL_SYSTEM_DOMAINS).
MAIL_SYSTEM_LOCAL_PARTS = frozenset({"mailer-daemon", "postmaster"})
MONTHS = {
    name: number
    for number, name in enumerate(
        [
            "january",
            "february",
            "march",
            "april",
            "may",
            "june",
            "july",
            "august",
            "september",
            "october",
            "november",
            "december",
        ],
        start=1,
    )
}
MONTH_RE = re.compile(r"\b(" + "|".join(MONTHS) + r")\s+(\d{4})\b", re.IGNORECASE)
ISO_MONTH_RE = re.compile(r"\b(\d{4})-(\d{2})\b")


def inbox_poll(*, gateway: GmailGateway | None = None) -> dict[str, int]:
    """Process up to CASES_GMAIL_INTAKE_BATCH unprocessed inbox messages."""
    if gateway is None:
        try:
            gateway = GmailGateway()
        except ImproperlyConfigured as exc:
            logger.info("gmail intake off: %s", exc)
            return {}
    counts: Counter[str] = Counter()
    for gmail_id in gateway.list_inbox(max_results=settings.CASES_GMAIL_INTAKE_BATCH):
        try:
            counts[message_process(gateway=gateway, gmail_id=gmail_id)] += 1
        except GmailError:
            # Left unlabelled: the next run tries it again; the others go on now.
            logger.exception("gmail intake: message %s failed", gmail_id)
            counts["error"] += 1
    return dict(counts)


def message_process(*, gateway: GmailGateway, gmail_id: str) -> str:
    """Handle one inbox message once; returns its outcome."""
    done = ProcessedInboxMessage.objects.filter(gmail_id=gmail_id).first()
    if done is None:
        message = gateway.read(gmail_id)
        try:
            with transaction.atomic():
                record = ProcessedInboxMessage.objects.create(
                    gmail_id=gmail_id,
                    message_id=(message.message_id_header or "")[:300],
                    from_address=message.from_address[:254],
                    subject=message.subject[:500],
                    outcome=InboxOutcome.IGNORED,
                )
                outcome, detail, case = _handle(message)
                record.outcome, record.detail, record.case = outcome, detail, case
                record.save(update_fields=["outcome", "detail", "case"])
        except IntegrityError:
            # Another worker processed it between our check and our insert.
            done = ProcessedInboxMessage.objects.get(gmail_id=gmail_id)
        else:
            done = record
    gateway.mark_processed(gmail_id)
    return done.outcome


def _handle(message: InboxMessage) -> tuple[str, str, Case | None]:
    if message.dsn is not None:
        return _bounce(message)
    auto = message.headers.get("auto-submitted", "no").strip().lower()
    if auto != "no":
        # Out-of-office and other robots: a case for them would loop, and a robot quoting an
        # approval mail never decides it.
        audit.record(
            actor=None,
            action="inbox.ignored",
            after={"from": message.from_address, "subject": message.subject, "why": auto},
        )
        return InboxOutcome.IGNORED, f"auto-submitted: {auto}", None
    token = approval_mail.find_token(subject=message.subject, text=message.text)
    if token is not None:
        sender = _sender(message)
        result = approval_mail.approval_reply_apply(
            token=token,
            sender=sender.address or message.from_address,
            text=message.text,
            message_id=message.message_id_header or message.id,
            unauthenticated=sender.reason,
        )
        outcome = InboxOutcome.APPROVAL_DECIDED if result.decided else InboxOutcome.APPROVAL_REFUSED
        return outcome, result.detail, None
    return _request(message)


# --- bounces -----------------------------------------------------------------------------------


def _sender(message: InboxMessage) -> mailauth.Sender:
    return mailauth.authenticated_sender(
        from_values=message.from_values, authentication_results=message.authentication_results
    )


def _bounce_refusal(message: InboxMessage) -> str:
    """Why this report may not bounce anything ("" when it may): it must come from the mail
    system itself, authenticated, and name a Message-ID that CCM sealed. Anyone can write a
    multipart/report, and a guessed Message-ID must not bounce a customer's delivery."""
    assert message.dsn is not None
    sender = _sender(message)
    if sender.address is None:
        return f"not from the mail system: {sender.reason}"
    local = sender.address.rpartition("@")[0]
    if local not in MAIL_SYSTEM_LOCAL_PARTS or sender.domain not in {
        d.lower() for d in settings.CCM_INBOUND_MAIL_SYSTEM_DOMAINS
    }:
        return f"not from the mail system: sent by {sender.address}"
    original = message.dsn["original_message_id"]
    if not original:
        return "the report names no Message-ID"
    if not message_id_issued(original):
        return f"the report names {original[:200]}, a Message-ID CCM did not issue"
    return ""


def _delivery_for(message_id: str) -> Delivery | None:
    bare = message_id.strip().strip("<>")
    return Delivery.objects.filter(message_id=f"<{bare}>").first()


def _bounce(message: InboxMessage) -> tuple[str, str, Case | None]:
    dsn = message.dsn
    assert dsn is not None
    refusal = _bounce_refusal(message)
    if refusal:
        audit.record(
            actor=None,
            action="inbox.bounce_refused",
            after={"gmail_id": message.id, "from": message.from_address, "reason": refusal},
        )
        logger.warning("gmail intake: bounce %s refused: %s", message.id, refusal)
        return InboxOutcome.BOUNCE_REFUSED, refusal, None
    status = dsn["status"] or ""
    action = (dsn["action"] or "").lower()
    if action == "failed" or status.startswith("5"):
        event_type, hard = EventType.BOUNCED, status.startswith("5") or not status
    elif action == "delivered" or status.startswith("2"):
        event_type, hard = EventType.DELIVERED, False
    else:
        event_type, hard = EventType.DEFERRED, False
    delivery = _delivery_for(dsn["original_message_id"] or "")
    if delivery is None:
        detail = (
            f"no delivery matches {dsn['original_message_id'] or '(no Message-ID)'} "
            f"to {dsn['original_recipient'] or '(no recipient)'}"
        )
        audit.record(
            actor=None,
            action="inbox.bounce_unmatched",
            after={"gmail_id": message.id, "status": status, "detail": detail},
        )
        return InboxOutcome.BOUNCE, detail, None
    event, created = DeliveryEvent.objects.get_or_create(
        provider=PROVIDER,
        event_id=message.id,
        defaults={
            "delivery": delivery,
            "event_type": event_type,
            "hard": hard,
            "message_id": delivery.message_id,
            "recipient": (dsn["original_recipient"] or delivery.address)[:254],
            "description": " ".join(
                part for part in (status, dsn["diagnostic_code"] or "") if part
            ),
            "occurred_at": message.date or timezone.now(),
            "raw": {"dsn": dict(dsn), "subject": message.subject, "from": message.from_address},
        },
    )
    if created:
        enqueue(PROCESS_TASK, event.pk)
    return InboxOutcome.BOUNCE, f"{event_type} for delivery {delivery.pk}", None


# --- reprint requests and everything else ------------------------------------------------------


@dataclass(frozen=True)
class Parsed:
    customer: Customer | None
    template: Template | None
    month: date | None


def _customer(text: str) -> Customer | None:
    for reference in REFERENCE_RE.findall(text)[:20]:
        customer = Customer.objects.filter(external_ref__iexact=reference).first()
        if customer is not None:
            return customer
    return None


def _template(text: str) -> Template | None:
    lowered = " ".join(text.lower().split())
    best: tuple[int, Template] | None = None
    for template in Template.objects.all():
        for phrase in {template.name.lower(), template.code.replace("_", " ").lower()}:
            if phrase and phrase in lowered and (best is None or len(phrase) > best[0]):
                best = (len(phrase), template)
    return best[1] if best else None


def _month(text: str) -> date | None:
    match = MONTH_RE.search(text)
    if match:
        return date(int(match.group(2)), MONTHS[match.group(1).lower()], 1)
    iso = ISO_MONTH_RE.search(text)
    if iso and 1 <= int(iso.group(2)) <= 12:
        return date(int(iso.group(1)), int(iso.group(2)), 1)
    return None


def parse(subject: str, text: str) -> Parsed:
    whole = f"{subject}\n{text}"
    return Parsed(customer=_customer(whole), template=_template(whole), month=_month(whole))


def _mentions(value: object, month: str) -> bool:
    if isinstance(value, str):
        return value.startswith(month)
    if isinstance(value, dict):
        return any(_mentions(v, month) for v in value.values())
    if isinstance(value, list):
        return any(_mentions(v, month) for v in value)
    return False


def find_document(parsed: Parsed) -> Document | None:
    """The customer's latest issued document of that type; of that month when one is named (a
    date in its data in that month, e.g. the statement period, or sent in that month)."""
    if parsed.customer is None or parsed.template is None:
        return None
    communications = issued_communications(parsed.customer).filter(template=parsed.template)
    for communication in communications:
        document = communication.document
        assert document is not None
        if parsed.month is None:
            return document
        month = f"{parsed.month:%Y-%m}"
        if _mentions(document.data, month) or f"{communication.created_at:%Y-%m}" == month:
            return document
    return None


def _quoted(message: InboxMessage) -> str:
    return "\n".join(
        [
            f"From: {message.from_address}",
            f"Subject: {message.subject}",
            f"Date: {message.date.isoformat() if message.date else 'unknown'}",
            f"Gmail id: {message.id}",
            "",
            message.text,
        ]
    )[:20000]


def _request(message: InboxMessage) -> tuple[str, str, Case | None]:
    parsed = parse(message.subject, message.text)
    is_reprint = "reprint" in f"{message.subject}\n{message.text}".lower()
    document = find_document(parsed) if is_reprint else None
    if document is not None and parsed.customer is not None:
        try:
            with transaction.atomic():
                request = _reprint_from_mail(message, parsed.customer, document)
        except CaseError as exc:
            why = f"reprint not filed: {exc}"
        else:
            return (
                InboxOutcome.REPRINT_REQUEST,
                f"reprint {request.pk} ({request.state})",
                request.case,
            )
    else:
        missing = [
            what
            for what, value in (
                ("a known customer reference", parsed.customer),
                ("a document type", parsed.template),
                ("a matching document", document),
            )
            if value is None
        ]
        why = (
            "not a reprint request" if not is_reprint else f"could not find {' or '.join(missing)}"
        )
    case_type = CaseType.REPRINT if is_reprint and parsed.customer else CaseType.CORRESPONDENCE
    case = services.case_open(
        case_type=case_type,
        customer=parsed.customer,
        subject=f"Email: {message.subject or '(no subject)'}"[:200],
        description=f"Received in the shared mailbox; {why}.\n\n{_quoted(message)}",
        team=Team.CUSTOMER_RELATIONS,
        by=None,
    )
    return InboxOutcome.CASE, why, case


def _reprint_from_mail(message: InboxMessage, customer: Customer, document: Document):
    sender = message.from_address.strip().lower()
    held = {e.lower(): e for e in known_addresses(customer, Channel.EMAIL)}
    channel = Channel.EMAIL if Channel.EMAIL in reprint_channels() and held else Channel.PRINT
    # The copy goes to an address we already hold: the sender's, when it is one of them.
    address = held.get(sender, "") if channel == Channel.EMAIL else ""
    emails = list(held)
    return reprints.reprint_request_create(
        customer=customer,
        document=document,
        reason=f"Requested by email from {message.from_address}: {message.subject}"[:2000],
        channel=channel,
        address=address,
        identity_verification=(
            IdentityCheck.KNOWN_EMAIL if sender in emails else IdentityCheck.NOT_VERIFIED
        ),
        identity_note=f"From: {message.from_address}",
        by=None,
        source=RequestSource.EMAIL,
    )
