"""Dispatch of a chunk of deliveries: `pending → sending → sent / pending (retry later) / failed`.

`dispatch_start` creates a composed communication's deliveries; `dispatch_chunk` claims them with
one guarded UPDATE, re-checks suppression and consent at send time, honours the shared provider
throttle, sends over one open connection (Postmark: its batch endpoint, with the payloads
Anymail builds), and records every outcome with set-based updates, history steps and webhook
events. A delivery whose outcome is unknown (the provider may have it) stays `sending` and
`deliveries_reconcile` asks the provider before anything is sent again; if the provider cannot
be asked, it ends in a state an operator sees after a bounded number of attempts."""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial

import requests
from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from ccm.backoff import backoff_seconds
from ccm.context import each_bound
from ccm.rows import chunks, insert_like, update_returning
from documents.models import Template, TemplateVersion
from notifications import signals
from notifications.channels import (
    EmailBackend,
    PermanentSendError,
    TransientSendError,
    backend_for,
)
from notifications.channels.postmark_batch import PostmarkPayloads, direct_payloads_allowed
from notifications.models import (
    CommState,
    Communication,
    CommunicationStep,
    Delivery,
    DeliveryState,
    Suppression,
)
from notifications.pipeline import history, selection, throttle
from notifications.pipeline.chunks import (
    chunk_size,
    dispatch_here,
    ids_enqueue,
    moves_announce,
    signal_send,
    targets_of,
)
from notifications.pipeline.facts import consents_for
from notifications.pipeline.message_ids import delivery_message_id
from notifications.pipeline.transitions import deliveries_move
from notifications.webhooks import services as webhooks

logger = logging.getLogger(__name__)


POSTMARK_BATCH_MAX = 500  # Postmark's limit for one /email/batch call


def dispatch_start(
    communications: Sequence[Communication],
    *,
    events: list[webhooks.Occurrence] | None = None,
    dispatching: Collection[int] = (),
) -> dict[str, int]:
    """Inside the caller's transaction: composed or released communications get one delivery
    per chosen channel and go to `dispatching` (dispatch enqueued in chunks after commit); one
    that nothing can reach becomes `undeliverable`. `dispatching`: ids the caller has already
    written in that state (composition does, with what it made)."""
    now = timezone.now()
    reachable = [c for c in communications if targets_of(c)]
    unreachable = [c for c in communications if not targets_of(c)]
    ready = (CommState.COMPOSED, CommState.APPROVED)
    Communication.objects.filter(
        pk__any=[c.pk for c in reachable if c.pk not in dispatching], state__in=ready
    ).update(state=CommState.DISPATCHING, updated_at=now)
    reason = "no channel can reach the customer"
    Communication.objects.filter(pk__any=[c.pk for c in unreachable], state__in=ready).update(
        state=CommState.UNDELIVERABLE, failure_reason=reason, updated_at=now
    )
    moves_announce([c.pk for c in reachable], CommState.DISPATCHING)
    moves_announce([c.pk for c in unreachable], CommState.UNDELIVERABLE)
    deliveries = [
        {
            "communication_id": c.pk,
            "channel": target["channel"],
            "address": target["address"],
            "message_id": delivery_message_id(c, i, target["channel"]),
        }
        for c in reachable
        for i, target in enumerate(targets_of(c))
    ]
    delivery_ids = insert_like(Delivery, Delivery(), deliveries)
    by_comm: dict[int, list[int]] = defaultdict(list)
    for d, pk in zip(deliveries, delivery_ids, strict=True):
        by_comm[d["communication_id"]].append(pk)
    history.steps_record(
        [
            history.Step(c.pk, "communication.dispatching", {"deliveries": by_comm[c.pk]})
            for c in reachable
        ]
        + [
            history.Step(c.pk, "communication.undeliverable", {"reason": reason})
            for c in unreachable
        ],
        at=now,
    )
    undeliverable = [
        webhooks.Occurrence(
            webhooks.WebhookEvent.UNDELIVERABLE, c, CommState.UNDELIVERABLE, reason=reason
        )
        for c in unreachable
    ]
    if events is None:
        webhooks.webhook_events_emit(undeliverable)
    else:
        events += undeliverable  # the caller writes them with its own
    for c in unreachable:
        transaction.on_commit(partial(signal_send, signals.communication_undeliverable, c.pk))
    here = dispatch_here.get()
    if here is not None:
        # Sent by the composing task once its transaction is over (if it fails, nothing is).
        here.extend(delivery_ids)
    else:
        for chunk in chunks(delivery_ids, chunk_size()):
            ids_enqueue("notifications.pipeline.dispatch.dispatch_chunk", chunk)
    # Urgent ones went out on their fast channels; their PDF and durable targets follow.
    later = [c.pk for c in reachable if selection.durable_pending(c.decision_trace)]
    for chunk in chunks(later, chunk_size(renders_pdf=True)):
        ids_enqueue("notifications.pipeline.fallback.durable_copies_send", chunk)
    return {
        "dispatching": len(reachable),
        "undeliverable": len(unreachable),
        "deliveries": len(delivery_ids),
    }


@dataclass
class _Outcome:
    sent: dict[int, str] = field(default_factory=dict)  # delivery id → provider id
    transient: dict[int, TransientSendError] = field(default_factory=dict)
    permanent: dict[int, str] = field(default_factory=dict)
    unknown: dict[int, str] = field(default_factory=dict)  # maybe sent, provider not answering
    throttled: list[int] = field(default_factory=list)  # not sent: the provider's rate is used up


class _ConnectedEmailBackend(EmailBackend):
    """CCM's email backend (same message, same error classification) on one open connection."""

    def __init__(self, connection) -> None:
        self.connection = connection

    def message(self, delivery: Delivery):
        message = super().message(delivery)
        message.connection = self.connection
        return message

    def send(self, delivery: Delivery) -> str:
        try:
            return super().send(delivery)
        except PermanentSendError as exc:
            # Anymail's "recipients refused" does not say why; the ESP's answer does.
            detail = _esp_detail(exc.__cause__)
            if detail and detail not in str(exc):
                raise PermanentSendError(f"{exc}: {detail}") from exc.__cause__
            raise


def _esp_detail(error: BaseException | None) -> str:
    response = getattr(error, "response", None)
    if response is None:
        return ""
    try:
        return str(response.json().get("Message", ""))[:500]
    except (ValueError, AttributeError):
        return str(getattr(response, "text", ""))[:500]


def _open_connection():
    connection = get_connection()
    connection.open()
    session = getattr(connection, "session", None)
    if isinstance(session, requests.Session) and session.trust_env:
        # requests re-reads proxy and CA settings from the environment on every call, which
        # costs more than building the message; read them once for the whole chunk instead.
        url = getattr(connection, "api_url", "")
        session.proxies.update(requests.utils.get_environ_proxies(url))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            session.verify = bundle
        session.trust_env = False
    return connection


def _postmark_batch_size() -> int:
    """Messages per Postmark batch call (CCM_POSTMARK_BATCH; 1 sends each through Anymail)."""
    return max(1, min(POSTMARK_BATCH_MAX, settings.CCM_POSTMARK_BATCH))


def _is_postmark(connection) -> bool:
    from anymail.backends.postmark import EmailBackend as PostmarkBackend

    return (
        isinstance(connection, PostmarkBackend)
        and not connection.use_bulk_api
        and _postmark_batch_size() > 1
    )


def _send_each(backend, deliveries: list[Delivery], outcome: _Outcome) -> None:
    ids = {"delivery_id": lambda d: d.pk, "communication_id": lambda d: d.communication_id}
    for delivery in each_bound(deliveries, **ids):
        try:
            outcome.sent[delivery.pk] = backend.send(delivery)
        except TransientSendError as exc:
            outcome.transient[delivery.pk] = exc
        except PermanentSendError as exc:
            outcome.permanent[delivery.pk] = str(exc)


def _send_postmark_batch(
    connection, email: _ConnectedEmailBackend, deliveries: list[Delivery], outcome: _Outcome
) -> None:
    """Postmark's batch endpoint: one request for up to 500 messages, each exactly as Anymail's
    Postmark backend would post it alone (built directly when nothing can change that, see
    postmark_batch.py), each answered on its own."""
    from anymail.message import AnymailRecipientStatus, AnymailStatus

    direct = PostmarkPayloads(connection) if direct_payloads_allowed(connection) else None
    for part in _chunks_of(deliveries, _postmark_batch_size()):
        payloads: list[dict] = []
        payload = None
        members: list[tuple[Delivery, EmailMessage | None]] = []
        for delivery in part:
            if direct is not None:
                payloads.append(direct.payload(delivery))
                members.append((delivery, None))
                continue
            message = email.message(delivery)
            message.anymail_status = AnymailStatus()  # type: ignore[attr-defined]
            if not connection.run_pre_send(message):
                outcome.permanent[delivery.pk] = "cancelled by an Anymail pre_send receiver"
                continue
            payload = connection.build_message_payload(message, connection.send_defaults)
            payloads.append(payload.data)
            members.append((delivery, message))
        if not payloads:
            continue
        try:
            response = connection.session.post(
                f"{connection.api_url}email/batch",
                data=payload.serialize_json(payloads) if payload else json.dumps(payloads),
                headers={
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                    "X-Postmark-Server-Token": connection.server_token,
                },
                timeout=connection.timeout,
            )
        except requests.RequestException as exc:
            for delivery, _ in members:
                outcome.transient[delivery.pk] = TransientSendError(
                    f"network error: {exc}", maybe_sent=True
                )
            continue
        status = response.status_code
        if status == 429 or status >= 500:
            for delivery, _ in members:
                outcome.transient[delivery.pk] = TransientSendError(
                    f"ESP error {status}: {response.text[:300]}"
                )
            continue
        try:
            answers = response.json()
            if not isinstance(answers, list) or len(answers) != len(members):
                raise ValueError("not one answer per message")
        except ValueError as exc:
            # Something answered, but not in a way that says what happened to each message.
            for delivery, _ in members:
                outcome.transient[delivery.pk] = TransientSendError(
                    f"ESP answered {status} without per-message results: {exc}", maybe_sent=True
                )
            continue
        for (delivery, message), answer in zip(members, answers, strict=True):
            code = answer.get("ErrorCode", 0)
            text = str(answer.get("Message", ""))
            if status < 300 and code == 0 and answer.get("MessageID"):
                provider_id = str(answer["MessageID"])
                outcome.sent[delivery.pk] = provider_id
                if message is not None:
                    message.anymail_status.set_recipient_status(  # type: ignore[attr-defined]
                        {delivery.address: AnymailRecipientStatus(provider_id, "sent")}
                    )
                    connection.run_post_send(message)
            elif code in (300, 406) and ("'To'" in text or "inactive" in text.lower()):
                outcome.permanent[delivery.pk] = f"the ESP refused the recipient: {text}"
            else:
                outcome.permanent[delivery.pk] = (
                    f"ESP rejected the message ({status}, ErrorCode {code}): {text}"
                )


def _chunks_of(items: list[Delivery], size: int) -> Iterable[list[Delivery]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _claim_deliveries(ids: Sequence[int]) -> list[int]:
    """pending → sending for the due deliveries of `ids` no other worker holds."""
    now = timezone.now()
    return deliveries_move(
        ids=ids,
        source=DeliveryState.PENDING,
        target=DeliveryState.SENDING,
        where=~Q(next_attempt_at__gt=now),
        skip_locked=True,
        values={"attempts": F("attempts") + 1},
    )


def send_time_refusals(deliveries: Sequence[Delivery]) -> dict[int, str]:
    """Why a claimed delivery must not go out now, checked just before sending: the address was
    suppressed (a bounce, a complaint) or the customer withdrew consent since it was chosen."""
    suppressed = dict(
        ((channel, address), reason)
        for channel, address, reason in Suppression.objects.filter(
            address__any={d.address for d in deliveries}, lifted_at__isnull=True
        ).values_list("channel", "address", "reason")
    )
    comms = [d.communication for d in deliveries]
    consents, preferences = consents_for(
        {c.customer_id for c in comms}, {c.category for c in comms}
    )
    refusals: dict[int, str] = {}
    for d in deliveries:
        c = d.communication
        reason = suppressed.get((d.channel, d.address))
        if reason is not None:
            refusals[d.pk] = f"the address is suppressed ({reason})"
            continue
        refusal = selection.consent_refusal(
            category=c.category,
            consent=consents.get((c.customer_id, c.category), {}).get(d.channel),
            preference=preferences.get((c.customer_id, c.category), {}).get(d.channel),
        )
        if refusal and d.channel != "print":
            refusals[d.pk] = f"refused at send time: {refusal}"
    return refusals


DISPATCH_FIELDS = (
    *("id", "communication_id", "channel", "address", "message_id", "attempts", "meta"),
    *("state", "last_error"),
    *(
        f"communication__{name}"
        for name in (
            *("id", "customer_id", "template_id", "template_version_id", "document_id"),
            *("category", "urgency", "rendered", "state", "client", "correlation_id"),
        )
    ),
    *(f"communication__customer__{name}" for name in ("id", "name", "external_ref", "language")),
)


def _load(ids: list[int], rendered: Mapping[int, dict] | None = None) -> list[Delivery]:
    """The deliveries with what a message needs, templates and versions fetched once; each
    communication's `rendered` from `rendered` where the caller holds it (it composed them)."""
    fields = [f for f in DISPATCH_FIELDS if not (rendered and f == "communication__rendered")]
    deliveries = list(
        Delivery.objects.filter(pk__any=ids)
        .select_related("communication__customer")
        # Only what sending and recording read: a dozen timestamps and the data per row cost
        # more to decode than the rest of the row (anything else still loads, on access).
        .only(*fields)
        .order_by("pk")
    )
    comms = [d.communication for d in deliveries]
    if rendered:
        for c in comms:
            if c.pk in rendered:
                c.rendered = rendered[c.pk]
    templates = {t.pk: t for t in Template.objects.filter(pk__in={c.template_id for c in comms})}
    versions = {
        v.pk: v
        for v in TemplateVersion.objects.filter(pk__in={c.template_version_id for c in comms})
    }
    for c in comms:
        c.template = templates[c.template_id]
        c.template_version = versions.get(c.template_version_id)  # type: ignore[arg-type]
    return deliveries


def dispatch_chunk(ids: Sequence[int]) -> dict[str, int]:
    """pending → sending → sent / pending (retry later) / failed for a chunk of deliveries.

    Safe to run twice: only deliveries this call moved out of `pending` are sent. A crash
    leaves them in `sending`, and `services.delivery_reconcile_run` asks the provider about
    each before anything is sent again. A chunk may carry the communications of many requests
    (a drain composed them): each one's steps name its own request."""
    with history.steps_named_by_request(
        CommunicationStep.objects.filter(communication__deliveries__id__any=list(ids))
    ):
        return dispatch_chunk_here(ids)


def dispatch_chunk_here(
    ids: Sequence[int], rendered: Mapping[int, dict] | None = None
) -> dict[str, int]:
    """`dispatch_chunk` in the caller's context; `rendered`: the communications' outputs, by
    id, when the caller has just composed them (else read with the deliveries)."""
    claimed = _claim_deliveries(list(ids))
    if not claimed:
        return {"claimed": 0}
    deliveries = _load(claimed, rendered)
    by_id = {d.pk: d for d in deliveries}
    outcome = _Outcome()
    outcome.permanent.update(send_time_refusals(deliveries))
    deliveries = [d for d in deliveries if d.pk not in outcome.permanent]
    connection = _open_connection() if any(d.channel == "email" for d in deliveries) else None
    deadline = time.monotonic() + settings.CCM_THROTTLE_MAX_WAIT_S
    try:
        email = _ConnectedEmailBackend(connection)
        outcome.throttled += _send(connection, email, deliveries, outcome, deadline)
        _retry_inline(connection, email, by_id, outcome, deadline)
    finally:
        if connection is not None:
            connection.close()
    return _record_dispatched(by_id, outcome)


def _send(
    connection, email: _ConnectedEmailBackend, deliveries: list[Delivery], outcome, deadline
) -> list[int]:
    """Send `deliveries` as fast as each provider's throttle allows (transactional and
    regulatory messages may use the reserve); return the ids the throttle did not let out
    before `deadline`."""
    groups: dict[tuple[str, bool], list[Delivery]] = defaultdict(list)
    for d in deliveries:
        c = d.communication
        groups[(d.channel, throttle.is_priority(category=c.category, urgency=c.urgency))].append(d)
    left: list[int] = []
    for (channel, priority), group in groups.items():
        provider = throttle.provider_of(channel)
        while group:
            granted = throttle.throttle_wait(
                provider=provider, want=len(group), priority=priority, deadline=deadline
            )
            if not granted:
                left += [d.pk for d in group]
                break
            part, group = group[:granted], group[granted:]
            if channel != "email":
                _send_each(backend_for(channel), part, outcome)
            elif _is_postmark(connection):
                _send_postmark_batch(connection, email, part, outcome)
            else:
                _send_each(email, part, outcome)
    return left


def _retry_inline(
    connection, email: _ConnectedEmailBackend, by_id, outcome: _Outcome, deadline: float
) -> None:
    """Transient failures get CCM_DISPATCH_INLINE_RETRIES more tries after the rest of the
    chunk went out; a send whose outcome is unknown is first looked up at the provider."""
    for attempt in range(1, settings.CCM_DISPATCH_INLINE_RETRIES + 1):
        if not outcome.transient:
            return
        time.sleep(backoff_seconds(attempt, base=0.1, cap=2.0))
        again: list[Delivery] = []
        for pk, exc in list(outcome.transient.items()):
            delivery = by_id[pk]
            if exc.maybe_sent:
                backend = email if delivery.channel == "email" else backend_for(delivery.channel)
                try:
                    found = backend.lookup(delivery)
                except TransientSendError as lookup_exc:
                    # Cannot tell: leave it in `sending` for reconciliation, never re-send blind.
                    del outcome.transient[pk]
                    outcome.unknown[pk] = str(lookup_exc)
                    continue
                if found:
                    del outcome.transient[pk]
                    outcome.sent[pk] = found
                    continue
            del outcome.transient[pk]
            again.append(delivery)
        outcome.throttled += _send(connection, email, again, outcome, deadline)
    # Unknown outcomes that are still unknown after the last try wait in `sending` too, for
    # reconciliation to ask the provider, never back to `pending` blind. A provider that cannot
    # be asked (push) gets the message again later: a possible duplicate is the lesser harm.
    for pk, exc in list(outcome.transient.items()):
        if exc.maybe_sent and provider_can_be_asked(by_id[pk].channel):
            del outcome.transient[pk]
            outcome.unknown[pk] = str(exc)


def provider_can_be_asked(channel: str) -> bool:
    """Whether the provider can say if it got a message: Postmark (outbound search by
    metadata) and Twilio (its message list); the others cannot."""
    if channel == "email":
        return settings.EMAIL_BACKEND.startswith("anymail.backends.postmark")
    if channel == "sms":
        return settings.CCM_SMS_BACKEND.endswith(".TwilioSmsBackend")
    return False


def _record_dispatched(by_id: dict[int, Delivery], outcome: _Outcome) -> dict[str, int]:
    """Every outcome of a chunk, each through the one transition service (history, webhook
    events, failure signal and fallback included)."""
    now = timezone.now()
    failed: dict[int, str] = dict(outcome.permanent)
    later: dict[int, TransientSendError] = {}
    for pk, exc in outcome.transient.items():
        attempts = by_id[pk].attempts  # loaded after the claim counted this attempt
        if attempts >= settings.CCM_DISPATCH_MAX_ATTEMPTS:
            failed[pk] = f"gave up after {attempts} attempts: {exc}"
        else:
            later[pk] = exc
    with transaction.atomic():
        sent_ids = deliveries_move(
            ids=list(outcome.sent),
            source=DeliveryState.SENDING,
            target=DeliveryState.SENT,
            values={"sent_at": now, "last_error": ""},
            per_row={
                pk: {
                    "provider": by_id[pk].channel,
                    "provider_message_id": provider_id or by_id[pk].message_id,
                }
                for pk, provider_id in outcome.sent.items()
            },
        )
        _communications_sent(sent_ids, by_id, now)
        deliveries_move(
            ids=list(later),
            source=DeliveryState.SENDING,
            target=DeliveryState.PENDING,
            action="delivery.retry_later",
            per_row={
                pk: {
                    "next_attempt_at": now
                    + timedelta(
                        seconds=max(backoff_seconds(by_id[pk].attempts, base=30, cap=3600), 1)
                    ),
                    "last_error": str(exc)[:2000],
                }
                for pk, exc in later.items()
            },
        )
        deliveries_move(
            ids=list(failed),
            source=DeliveryState.SENDING,
            target=DeliveryState.FAILED,
            per_row={pk: {"last_error": reason[:2000]} for pk, reason in failed.items()},
        )
        # Not sent for the provider's rate: back in line, this attempt not counted.
        throttled = deliveries_move(
            ids=outcome.throttled,
            source=DeliveryState.SENDING,
            target=DeliveryState.PENDING,
            action="delivery.throttled",
            values={"attempts": F("attempts") - 1, "next_attempt_at": None},
        )
        for chunk in chunks(throttled, chunk_size()):
            ids_enqueue("notifications.pipeline.dispatch.dispatch_chunk", chunk)
        # Maybe sent, the provider not answering: it waits in `sending` for reconciliation,
        # which asks the provider before anything is sent again.
        history.steps_record(
            history.Step(
                by_id[pk].communication_id,
                "delivery.outcome_unknown",
                {"error": reason[:300]},
                delivery_id=pk,
            )
            for pk, reason in outcome.unknown.items()
        )
    return {
        "claimed": len(by_id),
        "sent": len(sent_ids),
        "retry_later": len(later),
        "failed": len(failed),
        "unknown": len(outcome.unknown),
        "throttled": len(outcome.throttled),
    }


def _communications_sent(sent_ids: list[int], by_id: dict[int, Delivery], now) -> None:
    """dispatching → sent for the communications of the deliveries just sent."""
    if not sent_ids:
        return
    # Locked and moved in one statement, so that the webhook events name exactly the ones
    # this moved.
    moved = {
        pk
        for (pk,) in update_returning(
            Communication.objects.select_for_update().filter(
                pk__any={by_id[pk].communication_id for pk in sent_ids},
                state=CommState.DISPATCHING,
            ),
            {"state": CommState.SENT, "sent_at": now, "updated_at": now},
            ["pk"],
        )
    }
    moves_announce(sorted(moved), CommState.SENT)
    events = []
    steps = []
    for pk in sent_ids:
        communication = by_id[pk].communication
        if communication.pk in moved:
            moved.discard(communication.pk)
            steps.append(history.Step(communication.pk, "communication.sent", {}))
            events.append(
                webhooks.Occurrence(
                    webhooks.WebhookEvent.SENT,
                    communication,
                    CommState.SENT,
                    channel=by_id[pk].channel,
                )
            )
    history.steps_record(steps, at=now)
    webhooks.webhook_events_emit(events)


def deliveries_reconcile(ids: Sequence[int]) -> dict[str, int]:
    """Deliveries stuck in `sending` (a worker died, or the provider did not answer in time):
    ask the provider about each before anything is sent again. Found → sent; not found → back
    to pending and dispatched; the provider cannot tell → asked again later, and after
    CCM_RECONCILE_MAX_CHECKS checks the delivery fails with "outcome unknown" (an exception
    case for operations, no automatic fallback: the first message may still have arrived)."""
    stale = timezone.now() - timedelta(seconds=settings.CCM_SENDING_STALE_AFTER_S)
    candidates = list(
        Delivery.objects.filter(
            pk__any=list(ids), state=DeliveryState.SENDING, updated_at__lt=stale
        ).values_list("pk", flat=True)
    )
    if not candidates:
        return {"checked": 0}
    deliveries = _load(candidates)
    by_id = {d.pk: d for d in deliveries}
    outcome = _Outcome()
    missing: list[int] = []
    for d in deliveries:
        try:
            found = backend_for(d.channel).lookup(d)
        except TransientSendError as exc:
            outcome.unknown[d.pk] = str(exc)
            continue
        if found:
            outcome.sent[d.pk] = found
        else:
            missing.append(d.pk)
    now = timezone.now()
    with transaction.atomic():
        counts = _record_dispatched(by_id, _Outcome(sent=outcome.sent))
        reset = deliveries_move(
            ids=missing,
            source=DeliveryState.SENDING,
            target=DeliveryState.PENDING,
            action="delivery.not_at_provider",
            values={"next_attempt_at": None},
        )
        for chunk in chunks(reset, chunk_size()):
            ids_enqueue("notifications.pipeline.dispatch.dispatch_chunk", chunk)
        unknown = list(outcome.unknown)
        Delivery.objects.filter(pk__any=unknown, state=DeliveryState.SENDING).update(
            checks=F("checks") + 1, updated_at=now
        )
        limit = settings.CCM_RECONCILE_MAX_CHECKS
        given_up = list(
            Delivery.objects.filter(
                pk__any=unknown, state=DeliveryState.SENDING, checks__gte=limit
            ).values_list("pk", "checks")
        )
        deliveries_move(
            ids=[pk for pk, _ in given_up],
            source=DeliveryState.SENDING,
            target=DeliveryState.FAILED,
            per_row={
                pk: {
                    "last_error": f"outcome unknown after {checks} checks with the provider: "
                    f"{outcome.unknown[pk]}"[:2000]
                }
                for pk, checks in given_up
            },
            fall_back=False,
        )
        for delivery in Delivery.objects.filter(pk__any=[pk for pk, _ in given_up]).select_related(
            "communication"
        ):
            signals.delivery_outcome_unknown.send(
                sender=Delivery, delivery=delivery, reason=delivery.last_error
            )
        history.steps_record(
            history.Step(
                by_id[pk].communication_id,
                "delivery.outcome_unknown",
                {"error": outcome.unknown[pk][:300]},
                delivery_id=pk,
            )
            for pk in unknown
            if pk not in dict(given_up)
        )
    return {
        "checked": len(deliveries),
        "sent": counts.get("sent", 0),
        "resent": len(reset),
        "unknown": len(unknown) - len(given_up),
        "failed": len(given_up),
    }
