"""The one place a delivery changes state, for one row or a chunk.

`deliveries_move` checks that the state machine on `Delivery` (models) declares the move, makes
it with one guarded UPDATE (only rows still in a source state move, so two workers never both
move a row), and records, in the caller's transaction, what every state change owes: a step in
each communication's history, and for a delivery that failed for good the integrators' webhook
event, the `delivery_failed` signal (an exception case) and the fallback to the next channel.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from ccm.rows import update_returning, update_rows
from notifications import signals
from notifications.models import DELIVERY_PROGRESS, Delivery, DeliveryState
from notifications.pipeline import fallback, history
from notifications.webhooks import services as webhooks

FAILED_STATES = (DeliveryState.FAILED, DeliveryState.BOUNCED)


def _declared(source: str, target: str) -> bool:
    field = Delivery._meta.get_field("state")
    return any(
        t.target == target and t.source in (source, "*")
        for t in field.get_all_transitions(Delivery)  # type: ignore[attr-defined]
    )


def deliveries_move(
    *,
    ids: Sequence[int],
    source: str | Collection[str],
    target: str,
    values: Mapping[str, Any] | None = None,
    per_row: Mapping[int, Mapping[str, Any]] | None = None,
    detail: Mapping[int, Mapping[str, Any]] | None = None,
    action: str = "",
    actor=None,
    fall_back: bool = True,
    where: Q | None = None,
    skip_locked: bool = False,
) -> list[int]:
    """Move the deliveries `ids` that are in `source` to `target`; return the ids moved.

    `values` are set on every moved row, `per_row` per row (e.g. each one's provider id or
    reason); `detail` goes into each history step (with per_row's values). `where` narrows the
    rows further (e.g. only the due ones); with `skip_locked` rows another worker holds are left
    to it instead of waited for."""
    sources = [source] if isinstance(source, str) else list(source)
    for state in sources:
        if not _declared(state, target):
            raise ValueError(f"a delivery cannot move from {state} to {target}")
    if not ids:
        return []
    now = timezone.now()
    with transaction.atomic():
        rows = Delivery.objects.select_for_update(skip_locked=skip_locked).filter(
            pk__any=list(ids), state__in=sources
        )
        if where is not None:
            rows = rows.filter(where)
        changes = {"state": target, "updated_at": now, **(values or {})}
        # Each row's own values in the move's statement when every row has them (one new
        # version of each row, not two); otherwise after it, for the rows that moved.
        names = sorted({name for row in (per_row or {}).values() for name in row})
        own = per_row or {}
        together = bool(own) and len(sources) == 1 and all(pk in own for pk in ids)
        moved = _move(
            rows, sources, changes, per_row=_per_row_values(names, own) if together else None
        )
        if not moved:
            return []
        moved_ids = [pk for pk, _, _ in moved]
        if own and not together:
            left = {pk: own[pk] for pk in moved_ids if pk in own}
            if left:
                update_rows(Delivery, names, _per_row_values(names, left)[1])
        history.steps_record(
            [
                history.Step(
                    communication_id,
                    action or f"delivery.{target}",
                    {
                        "from": state,
                        "to": target,
                        **_plain((per_row or {}).get(pk, {})),
                        **dict((detail or {}).get(pk, {})),
                    },
                    delivery_id=pk,
                )
                for pk, communication_id, state in moved
            ],
            actor=actor,
            at=now,
        )
        if target in FAILED_STATES:
            _failed(moved_ids, fall_back=fall_back)
    return moved_ids


def _per_row_values(
    names: list[str], per_row: Mapping[int, Mapping[str, Any]]
) -> tuple[list[str], dict[int, tuple]]:
    return names, {pk: tuple(row.get(n) for n in names) for pk, row in per_row.items()}


def _move(
    rows: QuerySet[Delivery],
    sources: list[str],
    values: dict[str, Any],
    per_row: tuple[list[str], dict[int, tuple]] | None = None,
) -> list[tuple[int, int, str]]:
    """Lock and move `rows`; (id, communication id, state it left) of each, in id order. From
    one source state, one statement (with `per_row`'s values: see `update_returning`); from
    several, the states are read first."""
    if len(sources) == 1:
        moved = update_returning(rows, values, ["pk", "communication_id"], per_row=per_row)
        return [(pk, communication_id, sources[0]) for pk, communication_id in moved]
    found = list(rows.order_by("pk").values_list("pk", "communication_id", "state"))
    Delivery.objects.filter(pk__any=[pk for pk, _, _ in found]).update(**values)
    return found


def _plain(row: Mapping[str, Any]) -> dict:
    return {k: v for k, v in row.items() if k in ("provider_message_id", "last_error")}


def _failed(ids: list[int], *, fall_back: bool) -> None:
    failed = list(
        Delivery.objects.filter(pk__any=ids).select_related("communication").order_by("pk")
    )
    webhooks.webhook_events_emit([webhooks.delivery_failed_occurrence(d) for d in failed])
    for delivery in failed:
        # Receivers (an exception case) hear of this failure before they hear that the
        # communication as a whole became undeliverable (the fallback's signal).
        signals.delivery_failed.send(sender=Delivery, delivery=delivery, reason=delivery.last_error)
        if fall_back:
            fallback.delivery_fall_back(delivery=delivery, reason=delivery.last_error)


def delivery_move(
    *,
    delivery: Delivery,
    target: str,
    values: Mapping[str, Any] | None = None,
    action: str = "",
    detail: Mapping[str, Any] | None = None,
    actor=None,
) -> bool:
    """One delivery: forward only (a late provider event never moves it back)."""
    sources = [
        s
        for s, rank in DELIVERY_PROGRESS.items()
        if rank < DELIVERY_PROGRESS[DeliveryState(target)]
    ]
    sources = [s for s in sources if _declared(s, target)]
    moved = deliveries_move(
        ids=[delivery.pk],
        source=sources,
        target=target,
        values=values,
        detail={delivery.pk: detail or {}},
        action=action,
        actor=actor,
    )
    if moved:
        delivery.refresh_from_db(fields=["state", "updated_at", *(values or {})])
    return bool(moved)
