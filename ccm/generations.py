"""Copies a process keeps of rows that rarely change (API keys, published template versions),
each kind valid while its generation in the shared cache is unchanged.

A change to such a row gives its kind a new generation when the change commits; a process uses
a kept copy only while the generation it was read under is still current, so a revoked key or
a newly published version takes effect at once in every process. Within a web request the
generations are read once, all of them in one cache round trip (`read_once`): a request that
authenticates a key and takes a template's published version asks the cache once, not twice.
Read the generation before the row it validates: a row read after a change committed may then
be kept under the old generation (and read again), never the other way round."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from contextvars import ContextVar

from django.core.cache import cache
from django.db import transaction

from ccm.cache import redis_of

API_KEYS = "ccm:api-keys:generation"
TEMPLATES = "ccm:templates:generation"
_NAMES = (API_KEYS, TEMPLATES)
_this_request: ContextVar[dict[str, object] | None] = ContextVar("ccm_generations", default=None)


def current(name: str) -> object:
    """The generation of `name` now (as read once for the whole request, inside `read_once`).
    When the cache cannot be asked, or holds none yet, a value equal to nothing: kept copies
    are read again."""
    seen = _this_request.get()
    if seen is not None and name in seen:
        return seen[name]
    values = _read()
    if seen is not None:
        seen.update(values)
    return values[name]


def current_counting(name: str, counter: str, *, timeout: int) -> tuple[object, int | None]:
    """`current(name)`, and the shared cache's counter `counter` (made with `timeout` seconds)
    counted up by one in the same round trip, when the generations are still to be read in this
    request and the cache is Redis (the API's throttle, counted with the key's generation); the
    count is None when the counter was not counted (the caller counts it itself)."""
    seen = _this_request.get()
    redis = redis_of(cache)
    if seen is None or name in seen or redis is None:
        return current(name), None
    full = cache.make_and_validate_key(counter)
    pipeline = redis.get_client(full, write=True).pipeline(transaction=False)
    pipeline.mget([cache.make_and_validate_key(n) for n in _NAMES])
    pipeline.set(full, 0, ex=timeout, nx=True)
    pipeline.incr(full)
    try:
        values, _, count = pipeline.execute()
    except Exception:
        return current(name), None
    found = {
        n: redis._serializer.loads(v)  # type: ignore[attr-defined]  # Django's, unstubbed
        for n, v in zip(_NAMES, values, strict=True)
        if v is not None
    }
    seen.update(_found(found))
    return seen[name], int(count)


def _read() -> dict[str, object]:
    try:
        found = cache.get_many(_NAMES)
    except Exception:
        return {name: object() for name in _NAMES}
    return _found(found)


def _found(found: dict[str, object]) -> dict[str, object]:
    for name in _NAMES:
        if name not in found:
            # A fresh (or emptied) cache: start a generation (or, if another process just did,
            # trust no copy until the next read).
            found[name] = _start(name)
    return found


def _start(name: str) -> object:
    token = secrets.token_hex(8)
    try:
        return token if cache.add(name, token, timeout=None) else object()
    except Exception:
        return object()


def changed(name: str) -> None:
    """Rows of kind `name` changed: every process reads them again once this commits."""

    def bump() -> None:
        # If the cache cannot be written, kept copies expire after their own time limit.
        with contextlib.suppress(Exception):
            cache.set(name, secrets.token_hex(8), timeout=None)

    transaction.on_commit(bump)


@contextlib.contextmanager
def read_once() -> Iterator[None]:
    """Within the block (a web request) each generation is read at most once."""
    token = _this_request.set({})
    try:
        yield
    finally:
        _this_request.reset(token)
