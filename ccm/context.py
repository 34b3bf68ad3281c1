"""Per-request context that the kernel reads without threading it through every call.

The request id is set by RequestIdMiddleware for a web request, and by the task wrapper
(`ccm.tasks.task_context_enter`) for a task, from the id the enqueueing request carried. Other
ids (communication, delivery) are bound for a block with `bound(...)` and appear in log lines.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_request_id: ContextVar[str | None] = ContextVar("ccm_request_id", default=None)
_log_ids: ContextVar[dict[str, str | int]] = ContextVar("ccm_log_ids", default={})  # noqa: B039


def request_id() -> str | None:
    return _request_id.get()


def set_request_id(value: str | None):
    return _request_id.set(value)


def reset_request_id(token) -> None:
    _request_id.reset(token)


@contextmanager
def bound(**ids: str | int | None) -> Iterator[None]:
    """Within the block, log lines carry these ids (e.g. communication_id=…, delivery_id=…)."""
    token = _log_ids.set({**_log_ids.get(), **{k: v for k, v in ids.items() if v is not None}})
    try:
        yield
    finally:
        _log_ids.reset(token)


def log_fields() -> dict[str, str | int]:
    """The ids a log line carries now; `request_id` is always there (empty outside a request)."""
    return {"request_id": _request_id.get() or "", **_log_ids.get()}
