"""SMS feedback from the provider: delivery status callbacks and the customers' replies.

Both hooks are public (no login, no CSRF token) and trust nothing but Twilio's signature:
`X-Twilio-Signature` is checked with the account's auth token against the URL Twilio called as
the world sees it (`CCM_PUBLIC_BASE_URL` + path and query); a missing or wrong one is a 403 and
nothing is stored.

Status callbacks (`POST /hooks/sms/twilio/status`) are stored as `DeliveryEvent`s (provider
"twilio", event id = MessageSid:MessageStatus, so a re-post is one row; the form kept as raw)
and applied by `notifications.channels.tracking.delivery_event_process`, the one status machine. An
"undelivered" or "failed" report whose ErrorCode says the number itself is wrong (it does not
exist, is a landline, is not a mobile) is a hard bounce: the phone contact point is invalidated
and the number suppressed for SMS. Other codes (handset off or out of coverage, carrier
filtering, unknown) fail the delivery and leave the number alone.

Replies (`POST /hooks/sms/twilio/inbound`), and what a mature product does with them:

- The carrier keywords STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT (the whole message,
  trimmed, any case) end everything optional on that number at once. Every customer who has the
  number gets an opt-out in the consent ledger (channel sms, source "sms_stop") for each category
  but regulatory, and the number is suppressed for SMS (reason unsubscribe), so nothing more is
  sent there by SMS — Twilio would refuse it anyway (error 21610). Regulatory notices are not
  lost: selection sends them to a durable medium (email with the PDF, or print), which a STOP
  does not touch. A STOP from a number no customer has still suppresses it (a recycled number's
  new owner).
- START and UNSTOP undo exactly what STOP did: opt-ins (source "sms_start") for the categories a
  STOP withdrew, and the unsubscribe suppression lifted. A START is not a marketing opt-in:
  marketing comes back only if the customer had opted in before the STOP. A suppression for a
  hard bounce stays. YES, which Twilio also takes as an opt-in, is not one here: a customer
  answering a question must not re-subscribe by accident.
- Both are idempotent: a repeated keyword, or Twilio posting the same message again, appends
  nothing new.
- Twilio's own opt-out handling (on by default; "Advanced Opt-Out" on messaging services) sends
  the confirmation carriers require and answers HELP, so we reply with empty TwiML rather than a
  second text; its `OptOutType` field, when present, is taken over our own keyword list (it
  covers keywords configured at Twilio).
- Every inbound message is kept in the audit log (from, to, sid, body, what it changed), on each
  customer who has the number; free text (a reply to a reminder) is also sent as
  `signals.sms_received`, so that a higher layer can open a case.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseForbidden
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from ccm import audit
from ccm.models import AuditEvent
from ccm.tasks import enqueue
from documents.models import Category
from notifications import signals
from notifications.channels.tracking import PROCESS_TASK
from notifications.channels.tracking import _json_safe as json_safe
from notifications.customers.services import consent_record, normalise_phone, suppression_add
from notifications.models import (
    Channel,
    ConsentRecord,
    ContactKind,
    ContactPoint,
    Customer,
    Delivery,
    DeliveryEvent,
    EventType,
    LegalBasis,
    Suppression,
    SuppressionReason,
)

logger = logging.getLogger(__name__)

PROVIDER = "twilio"

# Twilio's MessageStatus → our event type. "undelivered" and "failed" end the delivery; the
# ErrorCode decides whether the number is to blame (TWILIO_HARD_ERRORS).
TWILIO_STATUSES: dict[str, EventType] = {
    "accepted": EventType.QUEUED,
    "scheduled": EventType.QUEUED,
    "queued": EventType.QUEUED,
    "sending": EventType.QUEUED,
    "sent": EventType.SENT,
    "delivered": EventType.DELIVERED,
    # Some segments arrived, some did not: kept, changes nothing (the text may be cut).
    "partially_delivered": EventType.DEFERRED,
    "read": EventType.OPENED,
    "undelivered": EventType.FAILED,
    "failed": EventType.FAILED,
    "canceled": EventType.FAILED,
}
# The number is wrong for good: hard bounce (contact point invalid, number suppressed).
TWILIO_HARD_ERRORS = {
    "21211": "invalid 'To' phone number",
    "21614": "the number is not a mobile number",
    "30005": "unknown destination handset: the number does not exist",
    "30006": "landline or unreachable carrier",
}
# The message failed, the number may still be right: the delivery fails, nothing else.
TWILIO_SOFT_ERRORS = {
    "21610": "the recipient has opted out (STOP)",
    "30001": "queue overflow",
    "30002": "account suspended",
    "30003": "unreachable destination handset (off or out of coverage)",
    "30004": "message blocked by the recipient or the carrier",
    "30007": "filtered by the carrier",
    "30008": "unknown error",
    "30034": "sender not registered for A2P 10DLC",
}

STOP, START, HELP = "stop", "start", "help"
KEYWORDS = {
    **dict.fromkeys(("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"), STOP),
    **dict.fromkeys(("START", "UNSTOP"), START),
    **dict.fromkeys(("HELP", "INFO"), HELP),
}
# Twilio's OptOutType (Advanced Opt-Out) → ours.
OPT_OUT_TYPES = {"STOP": STOP, "START": START, "HELP": HELP}
SOURCE_STOP, SOURCE_START = "sms_stop", "sms_start"
# What a STOP withdraws: everything but what the law makes us send.
OPTIONAL_CATEGORIES = [c for c in Category.values if c != Category.REGULATORY]
INBOUND_ACTION = "sms.inbound_received"


# --- status callbacks ------------------------------------------------------------------------


def _failure_description(status: str, error_code: str) -> str:
    if not error_code:
        return f"Twilio: {status}"
    text = TWILIO_HARD_ERRORS.get(error_code) or TWILIO_SOFT_ERRORS.get(error_code, "")
    return f"Twilio {status} {error_code}: {text}".rstrip(": ")


def _delivery_for(sid: str, delivery_ref: str) -> Delivery | None:
    """By the sid we recorded when sending, else by the delivery id on the callback URL (the
    report may arrive before the dispatcher has recorded the sid)."""
    sms = Delivery.objects.filter(channel=Channel.SMS)
    delivery = sms.filter(provider_message_id=sid).first()
    if delivery is None and delivery_ref.isdigit():
        delivery = sms.filter(pk=int(delivery_ref)).first()
    return delivery


@transaction.atomic
def sms_status_record(
    *,
    sid: str,
    status: str,
    raw: dict[str, Any],
    error_code: str = "",
    recipient: str = "",
    delivery_ref: str = "",
) -> DeliveryEvent | None:
    """Store one Twilio status report as a DeliveryEvent (once) and enqueue its processing.
    Statuses we do not know are logged and not stored (Twilio is still answered 204, so that it
    does not post them again and again)."""
    status = status.strip().lower()
    event_type = TWILIO_STATUSES.get(status)
    if event_type is None:
        logger.warning("Twilio status %r for %s not stored", status, sid)
        return None
    hard = event_type == EventType.FAILED and error_code in TWILIO_HARD_ERRORS
    failed = event_type == EventType.FAILED
    event, created = DeliveryEvent.objects.get_or_create(
        provider=PROVIDER,
        event_id=f"{sid}:{status}"[:200],
        defaults={
            "delivery": _delivery_for(sid, delivery_ref),
            "event_type": EventType.BOUNCED if hard else event_type,
            "hard": hard,
            "message_id": sid[:200],
            "recipient": recipient[:254],
            "description": _failure_description(status, error_code) if failed else "",
            "occurred_at": timezone.now(),  # Twilio's callbacks carry no time
            "raw": raw,
        },
    )
    if created:
        enqueue(PROCESS_TASK, event.pk)
    return event


# --- replies: STOP, START and the rest -------------------------------------------------------


def sms_keyword(body: str, *, opt_out_type: str = "") -> str | None:
    """STOP, START or HELP when the whole message is one of their keywords, else None."""
    if opt_out_type.strip().upper() in OPT_OUT_TYPES:
        return OPT_OUT_TYPES[opt_out_type.strip().upper()]
    return KEYWORDS.get(body.strip().rstrip(".!").strip().upper())


@transaction.atomic
def sms_number_suppress(*, phone: str, detail: str) -> Suppression:
    """Suppress a number for SMS because its owner asked (idempotent; audited once)."""
    active = Suppression.objects.filter(
        channel=Channel.SMS, address=phone, lifted_at__isnull=True
    ).first()
    if active is not None:
        return active
    suppression = suppression_add(
        channel=Channel.SMS, address=phone, reason=SuppressionReason.UNSUBSCRIBE, detail=detail
    )
    audit.record(
        actor=None,
        action="suppression.created",
        subject=suppression,
        after={"channel": Channel.SMS, "reason": suppression.reason, "detail": detail},
    )
    return suppression


@transaction.atomic
def sms_number_unsuppress(*, phone: str, detail: str) -> int:
    """Lift the SMS suppressions its owner asked for (not hard bounces); returns how many."""
    lifted = 0
    for suppression in Suppression.objects.select_for_update().filter(
        channel=Channel.SMS,
        address=phone,
        reason=SuppressionReason.UNSUBSCRIBE,
        lifted_at__isnull=True,
    ):
        suppression.lifted_at = timezone.now()
        suppression.save(update_fields=["lifted_at"])
        audit.record(
            actor=None,
            action="suppression.lifted",
            subject=suppression,
            after={"detail": detail},
        )
        lifted += 1
    return lifted


def _latest_sms_consents(customer: Customer) -> dict[str, ConsentRecord]:
    latest: dict[str, ConsentRecord] = {}
    for record in ConsentRecord.objects.filter(customer=customer, channel=Channel.SMS).order_by(
        "recorded_at", "id"
    ):
        latest[record.category] = record
    return latest


def _opt_out(customer: Customer, evidence: dict[str, Any]) -> list[str]:
    latest = _latest_sms_consents(customer)
    changed = []
    for category in OPTIONAL_CATEGORIES:
        record = latest.get(category)
        if record is not None and not record.granted:
            continue  # already out: nothing to add
        consent_record(
            customer=customer,
            channel=Channel.SMS,
            category=category,
            granted=False,
            legal_basis=LegalBasis.CONSENT,
            source=SOURCE_STOP,
            # What applied before, so that a START can restore exactly that.
            evidence={**evidence, "previous": record.granted if record is not None else None},
        )
        changed.append(category)
    return changed


def _opt_in(customer: Customer, evidence: dict[str, Any]) -> list[str]:
    changed = []
    for category, record in _latest_sms_consents(customer).items():
        if record.granted or record.source != SOURCE_STOP:
            continue  # only what a STOP withdrew comes back
        if category == Category.MARKETING and record.evidence.get("previous") is not True:
            continue  # a START is not a marketing opt-in
        consent_record(
            customer=customer,
            channel=Channel.SMS,
            category=category,
            granted=True,
            legal_basis=LegalBasis.CONSENT,
            source=SOURCE_START,
            evidence=evidence,
        )
        changed.append(category)
    return changed


def _already_recorded(message_sid: str, customers: list[Customer]) -> bool:
    subject_type, subject_id = audit.subject_label(customers[0] if customers else None)
    return AuditEvent.objects.filter(
        subject_type=subject_type,
        subject_id=subject_id,
        action=INBOUND_ACTION,
        after__message_sid=message_sid,
    ).exists()


@dataclass(frozen=True)
class InboundOutcome:
    keyword: str | None
    customers: list[int]
    changed: dict[int, list[str]] = field(default_factory=dict)  # customer → categories
    duplicate: bool = False


def _e164(raw: str) -> str:
    try:
        return normalise_phone(raw)
    except ValidationError:
        return raw.strip()  # a short code or a sender name: kept as Twilio wrote it


@transaction.atomic
def sms_inbound_record(
    *, phone: str, body: str, message_sid: str, to: str = "", opt_out_type: str = ""
) -> InboundOutcome:
    """Apply an inbound SMS: STOP opts out and suppresses, START undoes that, anything else is
    recorded and signalled (see the module docstring)."""
    phone = _e164(phone)
    keyword = sms_keyword(body, opt_out_type=opt_out_type)
    # Locked, so that two deliveries of the same reply (or a STOP and a START racing) apply one
    # after the other and the second sees what the first appended.
    holders = ContactPoint.objects.filter(kind=ContactKind.PHONE, value=phone)
    customers = list(
        Customer.objects.select_for_update()
        .filter(pk__in=holders.values("customer_id"))
        .order_by("pk")
    )
    ids = [c.pk for c in customers]
    if message_sid and _already_recorded(message_sid, customers):
        return InboundOutcome(keyword, ids, duplicate=True)
    evidence = {"message_sid": message_sid, "from": phone, "text": body.strip()[:40]}
    changed: dict[int, list[str]] = {}
    if keyword == STOP:
        sms_number_suppress(phone=phone, detail=f"STOP by SMS {message_sid}".strip())
        changed = {c.pk: _opt_out(c, evidence) for c in customers}
    elif keyword == START:
        sms_number_unsuppress(phone=phone, detail=f"START by SMS {message_sid}".strip())
        changed = {c.pk: _opt_in(c, evidence) for c in customers}
    subjects: list[Customer | None] = [*customers] or [None]
    for subject in subjects:
        audit.record(
            actor=None,
            action=INBOUND_ACTION,
            subject=subject,
            after={
                "from": phone,
                "to": to,
                "message_sid": message_sid,
                "body": body[:1600],
                "keyword": keyword,
                "changed": changed.get(subject.pk, []) if subject is not None else [],
            },
        )
    if keyword is None:
        signals.sms_received.send(
            sender=Customer, phone=phone, body=body, customers=customers, message_sid=message_sid
        )
    return InboundOutcome(keyword, ids, changed)


# --- the hooks -------------------------------------------------------------------------------


def _signed_by_twilio(request: HttpRequest) -> bool:
    token = settings.TWILIO_AUTH_TOKEN
    if not token:
        logger.error("TWILIO_AUTH_TOKEN is not set: a Twilio webhook was refused")
        return False
    signature = request.headers.get("X-Twilio-Signature", "")
    url = settings.CCM_PUBLIC_BASE_URL.rstrip("/") + request.get_full_path()
    if signature and RequestValidator(token).validate(url, request.POST, signature):
        return True
    logger.warning("Twilio webhook %s refused: %s signature", url, "bad" if signature else "no")
    return False


def _forbidden() -> HttpResponse:
    return HttpResponseForbidden(
        "X-Twilio-Signature is missing or does not match", content_type="text/plain"
    )


@csrf_exempt
@require_POST
def twilio_status(request: HttpRequest) -> HttpResponse:
    if not _signed_by_twilio(request):
        return _forbidden()
    form = request.POST
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    status = form.get("MessageStatus") or form.get("SmsStatus") or ""
    if not sid or not status:
        return HttpResponseBadRequest(
            "MessageSid and MessageStatus are required", content_type="text/plain"
        )
    sms_status_record(
        sid=sid,
        status=status,
        raw=json_safe(form),
        error_code=form.get("ErrorCode", ""),
        recipient=form.get("To", ""),
        delivery_ref=request.GET.get("delivery", ""),
    )
    return HttpResponse(status=204)


@csrf_exempt
@require_POST
def twilio_inbound(request: HttpRequest) -> HttpResponse:
    if not _signed_by_twilio(request):
        return _forbidden()
    form = request.POST
    if not form.get("From"):
        return HttpResponseBadRequest("From is required", content_type="text/plain")
    sms_inbound_record(
        phone=form["From"],
        body=form.get("Body", ""),
        message_sid=form.get("MessageSid") or form.get("SmsSid") or "",
        to=form.get("To", ""),
        opt_out_type=form.get("OptOutType", ""),
    )
    # Empty TwiML: Twilio's opt-out handling already confirms STOP/START and answers HELP.
    return HttpResponse(str(MessagingResponse()), content_type="text/xml")
