"""Composition of a chunk: `received → composing → composed`, then the release gate.

`compose_chunk` claims the chunk with one guarded UPDATE, reads the selection facts for all of
it (`facts.facts_for_chunk`), renders each communication in the bounded render worker (a PDF
archived where the template needs one, portal links made and kept in the data), chooses the
channels, and in one transaction records the outcome and hands the chunk to the gate. Full
chunks get a task of their own; what is left of a request is composed by the compose drain
(at most one waiting per queue). A crashed chunk leaves `received` or `composing` rows, which
the sweeps in `tasks` hand to a new task."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from ccm import context
from ccm.context import each_bound
from ccm.rows import chunks, update_returning, update_rows
from ccm.tasks import Queue, enqueue
from documents import selectors as document_selectors
from documents import services as documents
from documents.composition import (
    CompositionError,
    DataInvalid,
    data_errors,
)
from documents.models import Template, TemplateVersion, VersionState
from notifications import signals
from notifications.channels.portal import portal_url
from notifications.models import (
    CommState,
    Communication,
    CommunicationStep,
)
from notifications.pipeline import history, selection
from notifications.pipeline.chunks import (
    chunk_size,
    compose_pieces,
    dispatch_here,
    moves_announce,
    needs_pdf,
    signal_send,
    targets_of,
)
from notifications.pipeline.content import (
    addressee_mismatches,
    composition_context,
    intake_validator,
    portal_linked,
)
from notifications.pipeline.dispatch import dispatch_chunk_here
from notifications.pipeline.facts import enabled_channels, facts_for_chunk
from notifications.pipeline.gate import gate, hold_reason
from notifications.webhooks import services as webhooks

logger = logging.getLogger(__name__)


COMPOSE_DRAIN = "notifications.pipeline.compose.compose_drain"


DRAIN_FLAG = "ccm:notifications:compose-drain-pending"


# A lost drain (its process died between the flag and the queue row) delays the next one by at
# most this long; the `notifications.received` sweep covers anything older as well.
DRAIN_FLAG_TTL_S = 30


# One drain composes at most this many chunks, and starts no new one after a quarter of the
# task timeout, then hands over to a new task: others queued meanwhile get their turn, and a
# task stays well inside Q_CLUSTER's timeout (a chunk of PDFs takes tens of seconds).
DRAIN_MAX_CHUNKS = 20


def _drain_budget_s() -> float:
    return settings.Q_CLUSTER.get("timeout", 120) / 4


def compose_enqueue(ids: list[int], queue: Queue | None = None) -> None:
    """Composition for new communications, after commit. A batch becomes compose tasks
    (`compose_pieces`), all of it: the drain reads the oldest waiting rows first, so a remainder
    left to it would make it take the batch's rows from under their own tasks and work them one
    after the other. Less than a piece — a single request — is left to the drain of that
    queue, which composes a stream of them together."""
    if not ids:
        return
    text_only = queue == Queue.DISPATCH
    pieces = compose_pieces(ids, text_only=text_only)
    if not pieces:
        # The drain's log lines name the request that asked for it (on commit, the request
        # may be over).
        transaction.on_commit(
            partial(compose_drain_request, request_id=context.request_id(), text_only=text_only),
            robust=False,
        )
        return
    for piece in pieces:
        # A text-only chunk is sent by the task that composes it (`dispatch_now`).
        enqueue(
            "notifications.pipeline.compose.compose_chunk",
            piece,
            queue=queue,
            dispatch_now=text_only,
        )


def _drain_flag(text_only: bool) -> str:
    return f"{DRAIN_FLAG}:{'text' if text_only else 'all'}"


def compose_drain_request(request_id: str | None = None, *, text_only: bool = False) -> None:
    """Enqueue a drain unless one is already waiting (the shared cache's flag, one per drain).
    If the cache cannot be asked, enqueue anyway: a spare drain costs one task, a missing one a
    delay. The text-only drain runs on the dispatch queue and composes only communications
    that render no PDF; the other, on the rendering queue, composes any."""
    flag = _drain_flag(text_only)
    try:
        # Under a stream of requests the flag is mostly there: one read, no write.
        first = cache.get(flag) is None and cache.add(flag, 1, timeout=DRAIN_FLAG_TTL_S)
    except Exception:
        logger.warning("the compose drain flag could not be set; enqueueing", exc_info=True)
        first = True
    if first:
        token = context.set_request_id(request_id) if request_id else None
        try:
            if text_only:
                enqueue(COMPOSE_DRAIN, text_only=True, queue=Queue.DISPATCH)
            else:
                enqueue(COMPOSE_DRAIN)
        finally:
            if token is not None:
                context.reset_request_id(token)


def _text_only_filter() -> Q:
    """Communications that compose without rendering a PDF: they carry their document, or
    their template's published version has no print rendition."""
    published = TemplateVersion.objects.filter(state=VersionState.PUBLISHED).values_list(
        "template__code", flat=True
    )
    templates = [
        version.template_id
        for version in document_selectors.versions_for_sending(codes=published).values()
        if not needs_pdf(version)
    ]
    return Q(document__isnull=False) | Q(urgency="high") | Q(template_id__in=templates)


def compose_drain(text_only: bool = False) -> dict[str, int]:
    """Compose every `received` communication (only those that render no PDF, for the
    text-only drain), a chunk at a time, oldest first (safe to run twice, and beside chunk
    tasks: each chunk is claimed with a guarded UPDATE)."""
    try:
        # Before reading: whatever commits later asks for a new drain.
        cache.delete(_drain_flag(text_only))
    except Exception:
        logger.warning("the compose drain flag could not be cleared", exc_info=True)
    counts: dict[str, int] = defaultdict(int)
    waiting = Communication.objects.filter(state=CommState.RECEIVED)
    if text_only:
        waiting = waiting.filter(_text_only_filter())
    started = time.monotonic()
    for _ in range(DRAIN_MAX_CHUNKS):
        ids = list(
            waiting.order_by("pk").values_list("pk", flat=True)[
                : chunk_size(renders_pdf=not text_only)
            ]
        )
        if not ids:
            return dict(counts)
        # Rows another worker is claiming right now are skipped; the next read leaves them out.
        # The drain's log lines name the chunk it composes, as a chunk task's do.
        with (
            history.steps_named_by_request(
                CommunicationStep.objects.filter(communication_id__any=ids)
            ),
            context.bound(communication_ids=ids),
        ):
            done = compose_chunk(ids, dispatch_now=text_only)
        for name, value in done.items():
            counts[name] += value
        if time.monotonic() - started > _drain_budget_s():
            break  # at least one chunk a drain, so each one moves the backlog on
    compose_drain_request(text_only=text_only)  # more than a task's worth: a fresh one goes on
    return dict(counts)


def _claim_communications(ids: Sequence[int], source: str, target: str) -> list[int]:
    """One guarded UPDATE for a whole chunk: the ids this call moved from `source`."""
    with transaction.atomic():
        claimed = update_returning(
            Communication.objects.select_for_update(skip_locked=True).filter(
                pk__any=ids, state=source
            ),
            {"state": target, "updated_at": timezone.now()},
            ["pk"],
        )
    return [pk for (pk,) in claimed]


@dataclass
class _Composed:
    communication: Communication
    version: TemplateVersion
    selection: selection.Selection
    rendered: dict
    data: dict
    document_id: int | None


def compose_chunk(ids: Sequence[int], dispatch_now: bool = False) -> dict[str, int]:
    """received → composing → composed → (gate) for a chunk; safe to run twice.

    Every communication, whatever brought it in: portal links made and kept in the data, a PDF
    archived where the template needs one, channels chosen, outputs rendered. Returns counts by
    outcome (for logs and tests).

    With `dispatch_now` (a text-only chunk, composed on the dispatch queue) the deliveries the
    gate starts are sent by this same task once they are committed: no second task, no second
    wait in the queue, no second read of the chunk from the queue table. A crash in between
    leaves them `pending`, which the `deliveries_due` sweep hands to a dispatch task."""
    if not dispatch_now:
        return _compose_chunk(ids)
    here: list[int] = []
    # What was rendered, by communication: the sending half uses it as it is instead of reading
    # every email back from the row it was just written to (and decoding it again).
    rendered: dict[int, dict] = {}
    token = dispatch_here.set(here)
    try:
        with history.steps_sealed_once():
            counts = _compose_chunk(ids, outputs=rendered)
            _dispatch_after_commit(here, rendered)
    finally:
        dispatch_here.reset(token)
    return counts


def _dispatch_after_commit(delivery_ids: list[int], rendered: dict[int, dict]) -> None:
    for chunk in chunks(delivery_ids, chunk_size()):
        with context.bound(delivery_ids=chunk):
            dispatch_chunk_here(chunk, rendered=rendered)


def _compose_chunk(ids: Sequence[int], outputs: dict[int, dict] | None = None) -> dict[str, int]:
    claimed = _claim_communications(list(ids), CommState.RECEIVED, CommState.COMPOSING)
    counts = {"claimed": len(claimed)}
    if not claimed:
        return counts
    communications = list(
        Communication.objects.filter(pk__any=claimed)
        .select_related("customer")
        .defer("rendered", "decision_trace", "failure_errors")
        .order_by("pk")
    )
    # A chunk has a template or a few: each read once, not joined and built again per row.
    templates = Template.objects.in_bulk({c.template_id for c in communications})
    for c in communications:
        c.template = templates[c.template_id]
    versions = {
        v.pk: v
        for v in TemplateVersion.objects.select_related("template").filter(
            pk__in={c.template_version_id for c in communications if c.template_version_id}
        )
    }
    published: dict[str, TemplateVersion | None] = {}

    def version_of(c: Communication) -> TemplateVersion | None:
        if c.template_version_id:
            return versions[c.template_version_id]  # a reprint of its own document
        code = c.template.code
        if code not in published:
            published[code] = document_selectors.version_for_sending(code=code)
        return published[code]

    enabled = set(enabled_channels())
    chosen_version = {c.pk: version_of(c) for c in communications}
    renditions = {
        pk: [ch for ch in (v.meta.get("channels", []) if v else []) if ch in enabled]
        for pk, v in chosen_version.items()
    }
    facts = facts_for_chunk(communications, renditions)
    composed: list[_Composed] = []
    failed: list[tuple[Communication, TemplateVersion | None, CompositionError]] = []
    # The text channels go to the render worker in one trip per template version and language.
    groups: dict[tuple[int, str], list[tuple[Communication, selection.Selection, dict]]] = {}
    documents_made: dict[int, int | None] = {}
    for c in each_bound(communications, communication_id=lambda c: c.pk):
        version = chosen_version[c.pk]
        try:
            if version is None:
                raise CompositionError("the template has no published version")
            if portal_linked(version) and "portal_url" not in c.data:
                # The link is part of the archived data, so the letter that prints it
                # regenerates byte for byte.
                c.data = {**c.data, "portal_url": portal_url(c)}
            # The addressee comes from the customer record, never from the data.
            context = composition_context(c, version)
            mismatches = addressee_mismatches(c, version)
            if mismatches and c.created_by_id is None:
                # The record changed since intake and nobody asked for this one to hold it
                # for a release (the gate holds the others): it fails with the reason.
                raise DataInvalid("; ".join(e.message for e in mismatches), errors=mismatches)
            errors = data_errors(intake_validator(version), context)
            if errors:
                reason = "; ".join(f"{e.field or '(root)'}: {e.message}" for e in errors)
                raise DataInvalid(
                    f"data does not match the template's schema: {reason}", errors=errors
                )
            chosen = selection.select_channels(facts[c.pk])
            document_id = c.document_id
            later = selection.durable_later(chosen, urgency=c.urgency)
            if later is not None and document_id is None and needs_pdf(version):
                chosen = later  # the PDF follows on the render queue (dispatch_start)
            elif document_id is None and needs_pdf(version):
                # The archived snapshot records the addressee it was composed for (the print
                # close checks it against the envelope); the document belongs to whoever asked
                # for the communication (API ownership).
                document_id = documents.document_compose(
                    version=version, data=context, language=c.customer.language, by=c.created_by
                ).pk
        except CompositionError as exc:
            failed.append((c, version, exc))
            continue
        documents_made[c.pk] = document_id
        language = documents.language_for(version, c.customer.language)
        groups.setdefault((version.pk, language), []).append((c, chosen, context))
    for (_, language), members in groups.items():
        version = chosen_version[members[0][0].pk]
        assert version is not None  # grouped only once composed with one
        results = documents.text_channels_compose(
            version=version,
            language=language,
            items=[(context, chosen.channels) for _, chosen, context in members],
        )
        for (c, chosen, _), rendered in zip(members, results, strict=True):
            if isinstance(rendered, CompositionError):
                failed.append((c, version, rendered))
            else:
                composed.append(
                    _Composed(c, version, chosen, rendered, dict(c.data), documents_made[c.pk])
                )
    counts.update(_record_composed(composed, failed, outputs))
    return counts


def _record_composed(
    composed: list[_Composed],
    failed: list[tuple[Communication, TemplateVersion | None, CompositionError]],
    outputs: dict[int, dict] | None = None,
) -> dict[str, int]:
    now = timezone.now()
    counts: dict[str, int] = {"composed": 0, "compose_failed": 0}
    with transaction.atomic():
        # Still ours? A sweep may have reset a chunk that took far too long.
        ours = set(
            Communication.objects.select_for_update()
            .filter(
                pk__any=[x.communication.pk for x in composed] + [f[0].pk for f in failed],
                state=CommState.COMPOSING,
            )
            .values_list("pk", flat=True)
        )
        composed = [x for x in composed if x.communication.pk in ours]
        failed = [f for f in failed if f[0].pk in ours]
        if outputs is not None:
            outputs.update({x.communication.pk: x.rendered for x in composed})
        for x in composed:
            # As the gate would read them back (locked above): no second read of the chunk.
            x.communication.data = x.data
            x.communication.template_version = x.version
            x.communication.decision_trace = x.selection.trace
        # The gate's decisions are known now: the ones that go straight on are written as
        # `dispatching` with what composition made, and not updated a second time (each update
        # of a communication rewrites every one of its table's indexes).
        reasons = {
            x.communication.pk: why for x in composed if (why := hold_reason(x.communication))
        }
        straight = {
            x.communication.pk
            for x in composed
            if x.communication.pk not in reasons and targets_of(x.communication)
        }
        # What composition made and its state, in one statement.
        update_rows(
            Communication,
            [
                *("data", "template_version", "document", "rendered", "decision_trace"),
                *("state", "updated_at"),
            ],
            {
                x.communication.pk: (
                    x.data,
                    x.version.pk,
                    x.document_id,
                    x.rendered,
                    x.selection.trace,
                    (
                        CommState.DISPATCHING
                        if x.communication.pk in straight
                        else CommState.COMPOSED
                    ).value,
                    now,
                )
                for x in composed
            },
            where_state=CommState.COMPOSING,
        )
        steps = [
            history.Step(
                x.communication.pk,
                "communication.composed",
                {"version": x.version.pk, "channels": x.selection.channels},
            )
            for x in composed
        ]
        events = [
            webhooks.Occurrence(webhooks.WebhookEvent.COMPOSED, x.communication, CommState.COMPOSED)
            for x in composed
        ]
        if failed:
            update_rows(
                Communication,
                ["template_version", "failure_reason", "failure_errors"],
                {
                    c.pk: (
                        v.pk if v else None,
                        exc.reason,
                        [{"field": e.field, "message": e.message} for e in exc.errors],
                    )
                    for c, v, exc in failed
                },
            )
            Communication.objects.filter(
                pk__any=[f[0].pk for f in failed], state=CommState.COMPOSING
            ).update(state=CommState.COMPOSE_FAILED, updated_at=now)
            moves_announce([f[0].pk for f in failed], CommState.COMPOSE_FAILED)
            steps += [
                history.Step(c.pk, "communication.compose_failed", {"reason": exc.reason})
                for c, _, exc in failed
            ]
            events += [
                webhooks.Occurrence(
                    webhooks.WebhookEvent.FAILED, c, CommState.COMPOSE_FAILED, reason=exc.reason
                )
                for c, _, exc in failed
            ]
        history.steps_record(steps, at=now)
        counts["composed"] = len(composed)
        counts["compose_failed"] = len(failed)
        counts.update(
            gate(
                [x.communication.pk for x in composed],
                events,
                locked=sorted((x.communication for x in composed), key=lambda c: c.pk),
                reasons=reasons,
                dispatching=straight,
            )
        )
        # One outbox INSERT for the chunk's events.
        webhooks.webhook_events_emit(events)
    # After the transaction: receivers (an exception case) see the failure committed.
    for communication, _, _exc in failed:
        signal_send(signals.communication_compose_failed, communication.pk)
    return counts
