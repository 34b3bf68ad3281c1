"""Per-request context that the kernel reads without threading it through every call.

The request id is set by RequestIdMiddleware for a web request, and by the task wrapper
(`ccm.tasks.task_context_enter`) for a task, from the id the enqueueing request carried. Other
ids (communication, delivery) are bound for a block with `bound(...)` and appear in log lines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from typing import TypeVar

LogId = str | int | list[int]
_request_id: ContextVar[str | None] = ContextVar("ccm_request_id", default=None)
_log_ids: ContextVar[dict[str, LogId]] = ContextVar("ccm_log_ids", default={})  # noqa: B039
T = TypeVar("T")


def request_id() -> str | None:
    return _request_id.get()


def set_request_id(value: str | None):
    return _request_id.set(value)


def reset_request_id(token) -> None:
    _request_id.reset(token)


def set_log_ids(ids: Mapping[str, LogId]) -> dict[str, LogId]:
    """Replace the bound ids (a task's own, set by the task wrapper); returns what was there."""
    outer = _log_ids.get()
    _log_ids.set(dict(ids))
    return outer


@contextmanager
def bound(**ids: LogId | None) -> Iterator[None]:
    """Within the block, log lines carry these ids (e.g. communication_id=…, delivery_id=…)."""
    token = _log_ids.set({**_log_ids.get(), **{k: v for k, v in ids.items() if v is not None}})
    try:
        yield
    finally:
        _log_ids.reset(token)


def each_bound(items: Iterable[T], **ids_of: Callable[[T], LogId | None]) -> Iterator[T]:
    """Iterate `items`; while the loop body runs for one, log lines carry its ids, e.g.
    `for d in each_bound(deliveries, delivery_id=lambda d: d.pk)`. (A generator runs in its
    caller's context, so what it binds before `yield` holds for the body.)"""
    for item in items:
        token = _log_ids.set(
            {
                **_log_ids.get(),
                **{k: v for k, of in ids_of.items() if (v := of(item)) is not None},
            }
        )
        try:
            yield item
        finally:
            # A generator abandoned mid-loop is closed where it is collected.
            with suppress(ValueError):
                _log_ids.reset(token)


def log_fields() -> dict[str, LogId]:
    """The ids a log line carries now; `request_id` is always there (empty outside a request)."""
    return {"request_id": _request_id.get() or "", **_log_ids.get()}
