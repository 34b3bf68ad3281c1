"""`Idempotency-Key` on POST: same key and body → the stored response again; same key, other
body → 422; while the first request runs → 409. Keys are scoped per client and expire.

"The same body" means the same JSON value: a client that re-serialises its request on retry
(other whitespace, other key order) still gets the replay, not a 422."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.http import HttpResponse
from django.utils import timezone
from rest_framework import exceptions

from ccm.api.errors import Conflict, Unprocessable
from ccm.models import ApiKey, IdempotencyRecord
from ccm.rows import prepared_cursor

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
# Printable ASCII, no space at either end (HTTP would strip it, so the key would not round-trip).
KEY_PATTERN = r"^[!-~]([ -~]*[!-~])?$"
_KEY_RE = re.compile(KEY_PATTERN)
# A request still "in progress" after this long died with its worker; its key may be reused.
ABANDONED_AFTER = timedelta(minutes=2)


class Replay(Exception):
    def __init__(self, record: IdempotencyRecord):
        self.record = record


def client_of(request) -> str:
    if isinstance(request.auth, ApiKey):
        return api_key_client(request.auth)
    return f"user:{request.user.pk}"


def api_key_client(api_key: ApiKey) -> str:
    """How the requests of `api_key` are labelled (e.g. Communication.client)."""
    return f"key:{api_key.pk}"


def fingerprint(request) -> str:
    """The request's method, path and body as a JSON value (whitespace and key order aside)."""
    digest = hashlib.sha256()
    digest.update(request.method.encode() + b" " + request.path.encode() + b"\n")
    body = request._request.body
    try:
        value = json.loads(body) if body.strip() else None
    except (ValueError, UnicodeDecodeError):
        digest.update(b"raw:" + body)  # not JSON: the parser will refuse it anyway
    else:
        canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest.update(b"json:" + canonical.encode())
    return digest.hexdigest()


def key_valid(key: str) -> bool:
    return len(key) <= MAX_KEY_LENGTH and _KEY_RE.fullmatch(key) is not None


def idempotency_claim(*, client: str, key: str, method: str, path: str, request_hash: str):
    """Claim `key` for this request, or raise Replay / Conflict / Unprocessable."""
    now = timezone.now()
    for _ in range(2):
        record = _claim(
            IdempotencyRecord(
                client=client,
                key=key,
                method=method,
                path=path,
                request_hash=request_hash,
                created_at=now,
                expires_at=now + timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS),
            )
        )
        if record is not None:
            return record
        existing = IdempotencyRecord.objects.filter(client=client, key=key).first()
        if existing is None:
            continue  # it expired and was purged between our insert and our read
        stale = existing.expires_at <= now or (
            existing.state == IdempotencyRecord.State.IN_PROGRESS
            and existing.created_at <= now - ABANDONED_AFTER
        )
        if stale:
            IdempotencyRecord.objects.filter(pk=existing.pk).delete()
            continue
        if existing.request_hash != request_hash:
            raise Unprocessable(
                f"This {HEADER} was already used with a different request. "
                "Use a new key for a new request.",
                code="idempotency_key_reused",
            )
        if existing.state == IdempotencyRecord.State.IN_PROGRESS:
            raise Conflict(
                f"A request with this {HEADER} is still being processed; retry later.",
                code="idempotency_in_progress",
            )
        raise Replay(existing)
    raise Conflict(f"Could not claim this {HEADER}; retry.", code="idempotency_in_progress")


def _claim(record: IdempotencyRecord) -> IdempotencyRecord | None:
    """Insert `record` unless its (client, key) exists: one statement, no transaction of its
    own (a failed INSERT in a savepoint costs three round trips more); None if it exists."""
    opts = IdempotencyRecord._meta
    fields = [f for f in opts.concrete_fields if not f.primary_key]
    qn = connection.ops.quote_name
    columns = ", ".join(qn(str(f.column)) for f in fields)
    values = [f.get_db_prep_save(getattr(record, f.attname), connection) for f in fields]
    with prepared_cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {qn(opts.db_table)} ({columns}) "  # noqa: S608 - names from the model
            f"VALUES ({', '.join(['%s'] * len(fields))}) "
            f"ON CONFLICT ({qn('client')}, {qn('key')}) DO NOTHING RETURNING {qn('id')}",
            values,
        )
        row = cursor.fetchone()
    if row is None:
        return None
    record.pk = row[0]
    record._state.adding = False
    return record


class IdempotentMixin:
    """Mix into an APIView (before it) to honour Idempotency-Key on POST."""

    idempotent_methods = ("POST",)
    _idempotency_record: IdempotencyRecord | None = None

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)  # type: ignore[misc]
        self._idempotency_record = None
        key = request.headers.get(HEADER)
        if request.method not in self.idempotent_methods or key is None:
            return
        if not key_valid(key):
            raise exceptions.ValidationError(
                {
                    HEADER: [
                        f"Give 1 to {MAX_KEY_LENGTH} printable ASCII characters, "
                        "with no space at either end."
                    ]
                }
            )
        self._idempotency_record = idempotency_claim(
            client=client_of(request),
            key=key,
            method=request.method,
            path=request.path,
            request_hash=fingerprint(request),
        )

    def handle_exception(self, exc):
        if isinstance(exc, Replay):
            record = exc.record
            response = HttpResponse(
                bytes(record.response_body or b""),
                status=record.response_status,
                content_type=record.response_content_type or "application/json",
            )
            response["Idempotent-Replayed"] = "true"
            return response
        return super().handle_exception(exc)  # type: ignore[misc]

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        record = self._idempotency_record
        if record is None:
            return response
        self._idempotency_record = None
        if response.status_code >= 500:
            # Nothing was promised: let the client retry with the same key.
            IdempotencyRecord.objects.filter(pk=record.pk).delete()
            return response
        if hasattr(response, "render") and not getattr(response, "is_rendered", True):
            response.render()
        _store(record, response)
        return response


def _store(record: IdempotencyRecord, response) -> None:
    """The answer a replay of `record`'s key gets: one prepared UPDATE by id (every keyed
    request runs it)."""
    qn = connection.ops.quote_name
    with prepared_cursor() as cursor:
        cursor.execute(
            f"UPDATE {qn(IdempotencyRecord._meta.db_table)} SET state = %s, "  # noqa: S608
            "response_status = %s, response_body = %s, response_content_type = %s WHERE id = %s",
            [
                IdempotencyRecord.State.DONE.value,
                response.status_code,
                response.content,
                response.get("Content-Type", ""),
                record.pk,
            ],
        )
