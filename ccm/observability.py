"""Logs that follow a request into its tasks, the gunicorn access log in the same shape, and
error reports to Sentry.

Every log record gets the ids the kernel knows at that moment (`ccm.context`): the request id
(set by RequestIdMiddleware in the web process, and by `task_context_enter` in a cluster worker
from the id `ccm.tasks.enqueue` put into the task), plus the task, communication and delivery
ids that code binds with `context.bound(...)`. With LOG_FORMAT=json each record is one JSON
object a line, ready for a log shipper; the plain format stays readable on a terminal.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ccm import context


class ContextFilter(logging.Filter):
    """Copies the kernel's context ids onto each record (a handler filter, so it sees records of
    every logger, gunicorn's and django-q's included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in context.log_fields().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def json_formatter_factory(**_ignored: Any) -> logging.Formatter:
    """The JSON formatter of LOGGING (a factory, so settings need not import the library)."""
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        timestamp=False,
    )


def sentry_init(*, dsn: str, environment: str, release: str, traces_sample_rate: float) -> bool:
    """Report unhandled errors (web and tasks) to Sentry; nothing happens without a DSN."""
    if not dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.django import DjangoIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration

    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        release=release or None,
        traces_sample_rate=traces_sample_rate,
        # Customer names and addresses are personal data: never send them along by default.
        send_default_pii=False,
        integrations=[
            DjangoIntegration(),
            LoggingIntegration(level=logging.INFO, event_level=logging.ERROR),
        ],
    )
    return True


try:
    from gunicorn.glogging import Logger as _GunicornLogger
except ImportError:  # gunicorn is a production dependency; tools that import this may lack it
    _GunicornLogger = object  # type: ignore[assignment,misc]


class GunicornJsonLogger(_GunicornLogger):  # type: ignore[misc,valid-type]
    """gunicorn's access log as one JSON object a line (values escaped properly, which a JSON
    `access_log_format` string cannot do), with the request id the middleware echoed."""

    def access(self, resp, req, environ, request_time) -> None:
        if not self.access_log_enabled:
            return
        atoms = self.atoms(resp, req, environ, request_time)
        line = {
            "logger": "gunicorn.access",
            "level": "INFO",
            "time": self.now(),
            "remote": atoms["h"],
            "method": atoms["m"],
            "path": atoms["U"],
            "query": atoms["q"],
            "status": int(atoms["s"]),
            "bytes": atoms["B"],
            "duration_ms": atoms["M"],
            "user_agent": atoms["a"],
            "request_id": dict(resp.headers).get("X-Request-ID", ""),
        }
        self.access_log.info(json.dumps(line))
