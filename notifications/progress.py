"""Live progress of long work, for the operations dashboard: send jobs, campaigns, incident
updates, print batches being closed — and any other kind of work that registers a source.

A source is a function `source(*, since)` returning the `Work` of its kind that is under way,
plus the work that finished at or after `since` (so a bar reaches 100 % before it goes away).
Each package registers its own source in its `AppConfig.ready()`, the way dashboard panels are
registered, so reporting never imports the packages that do the work (cases registers incident
updates). A statement run registers like this:

    from notifications.progress import Work, register_progress_source

    def statement_runs_progress(*, since):
        runs = StatementRun.objects.filter(Q(finished_at=None) | Q(finished_at__gte=since))
        for run in runs:
            yield Work(kind="statement_run", key=f"statement_run:{run.pk}", label=str(run),
                       state=run.state, done=run.done, total=run.total,
                       finished=run.finished_at is not None,
                       url=reverse(...), reference=run.correlation_id)

    register_progress_source("statement_run", statement_runs_progress)

The dashboard draws one bar per work item and `/ops/progress.json` answers the same list, which
`static/ccm/ops_progress.js` polls to move the bars without reloading.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol
from urllib.parse import urlencode

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.urls import reverse
from django.utils import timezone

from notifications.models import WorkProgress

logger = logging.getLogger(__name__)

# Finished work stays on the dashboard this long (at 100 %), then leaves it.
FINISHED_SHOWN_FOR = timedelta(minutes=10)
# At most this many items per kind: the dashboard is a glance, the kind's own list has the rest.
PER_KIND = 10


@dataclass(frozen=True)
class Work:
    """One piece of long work as a progress bar shows it."""

    kind: str  # send_job, campaign, incident_update, print_batch_close, statement_run…
    key: str  # unique over every kind, e.g. "campaign:12"
    label: str
    state: str
    done: int
    total: int
    finished: bool = False
    url: str = ""  # the work's own page
    # The communications' correlation id, when the work has one: reconciliation by reference.
    reference: str = ""
    started_at: datetime | None = None
    # The permissions the work's own page needs; a viewer without them sees the bar, no link.
    permissions: tuple[str, ...] = ()

    @property
    def percent(self) -> float:
        if self.total <= 0:
            return 100.0 if self.finished else 0.0
        return min(100.0, round(100 * self.done / self.total, 1))


class ProgressSource(Protocol):
    def __call__(self, *, since: datetime) -> Iterable[Work]: ...


_sources: dict[str, ProgressSource] = {}


def register_progress_source(kind: str, source: ProgressSource) -> None:
    """Add (or replace) the source of one kind of work."""
    _sources[kind] = source


def progress_sources() -> dict[str, ProgressSource]:
    return dict(_sources)


def work_in_progress(*, now: datetime | None = None, user=None) -> list[dict]:
    """Every registered kind's work under way or just finished, unfinished first, as dicts
    (what the dashboard renders and progress.json answers). With `user`, a work's link is left
    out where its page needs a permission they lack."""
    since = (now or timezone.now()) - FINISHED_SHOWN_FOR
    found: list[Work] = []
    for kind, source in _sources.items():
        try:
            found.extend(list(source(since=since))[:PER_KIND])
        except Exception:  # one broken source must not take the dashboard down
            logger.exception("progress source %s failed", kind)
    found.sort(key=lambda w: (w.finished, w.kind, w.key))
    if user is not None:
        found = [
            replace(work, url="")
            if work.permissions and not user.has_perms(work.permissions)
            else work
            for work in found
        ]
    return [_as_dict(work) for work in found]


def _as_dict(work: Work) -> dict:
    row = asdict(work)
    row["percent"] = work.percent
    row["started_at"] = work.started_at.isoformat() if work.started_at else None
    row["reconcile_url"] = (
        reverse("reporting-reconciliation")
        + "?"
        + urlencode(
            {
                "reference": work.reference,
                # The whole history of the work: reconciliation by reference reads live rows.
                "start": timezone.localdate(work.started_at or timezone.now()).isoformat(),
            }
        )
        if work.reference
        else ""
    )
    return row


# --- progress of work that runs in one transaction ----------------------------------------------


@contextmanager
def progress_publisher(key: str) -> Iterator[Callable[[int, int], None]]:
    """Yields `publish(done, total)`, which records the progress of `key` (a `WorkProgress` row)
    so that other processes see it at once, even while the caller's transaction is open: on
    PostgreSQL inside a transaction it writes through a connection of its own, in autocommit.
    When the work fails, its row is removed (its own transaction rolled back; nothing moves)."""
    side = None
    if connection.vendor == "postgresql" and connection.in_atomic_block:
        side = connections.create_connection(DEFAULT_DB_ALIAS)
        # The model's own table name, never input: the query text is a constant.
        table = connection.ops.quote_name(WorkProgress._meta.db_table)

        def publish(done: int, total: int) -> None:
            with side.cursor() as cursor:
                cursor.execute(
                    f"INSERT INTO {table} (key, done, total, updated_at) "  # noqa: S608
                    "VALUES (%s, %s, %s, now()) ON CONFLICT (key) DO UPDATE SET "
                    "done = EXCLUDED.done, total = EXCLUDED.total, updated_at = now()",
                    [key, done, total],
                )

    else:

        def publish(done: int, total: int) -> None:
            WorkProgress.objects.update_or_create(
                key=key, defaults={"done": done, "total": total, "updated_at": timezone.now()}
            )

    try:
        yield publish
    except BaseException:
        if side is not None:
            with side.cursor() as cursor:
                cursor.execute(f"DELETE FROM {table} WHERE key = %s", [key])  # noqa: S608
        raise
    finally:
        if side is not None:
            side.close()


def published_progress(*, prefix: str, since: datetime) -> dict[str, tuple[int, int]]:
    """{key: (done, total)} of the published progress under `prefix` updated since `since`."""
    return {
        key: (done, total)
        for key, done, total in WorkProgress.objects.filter(
            key__startswith=prefix, updated_at__gte=since
        ).values_list("key", "done", "total")
    }
