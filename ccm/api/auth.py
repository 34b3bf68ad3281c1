"""API keys: `Authorization: Api-Key <key>`, stored hashed, scoped, revocable."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import TypeVar

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import models, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from rest_framework import authentication, exceptions, permissions, throttling

from ccm import audit, generations
from ccm.cache import redis_of
from ccm.models import ApiKey
from ccm.roles import ROLE_SCOPES, Role

M = TypeVar("M", bound=models.Model)

KEYWORD = "Api-Key"
_PREFIX_LEN = 8

# Scopes an API key can carry. Endpoints name the one they need in `required_scopes`.
SCOPES: dict[str, str] = {
    "me:read": "See who the key belongs to",
    "templates:read": "List templates and render previews",
    "documents:read": "Read archived documents",
    "customers:read": "Read customers, preferences and consent",
    "customers:write": "Create and update customers, preferences and consent",
    "communications:read": "Read communications and their deliveries",
    "communications:write": "Request and cancel communications",
    "cases:read": "Read cases",
    "cases:write": "Open and move cases, request reprints and correspondence",
    "webhooks:read": "See webhook subscriptions and the log of events sent to them",
    "webhooks:write": "Manage webhook subscriptions and replay their events",
    "campaigns:read": "Read segments and campaigns: previews, progress, evidence packs",
    "campaigns:write": "Create segments and campaigns; submit, schedule, pause, resume, cancel",
    "events:write": "Send operational and IoT events (they become incidents and notices)",
    "print": "Print batches: fetch streams and manifests, report mailing and returned mail",
    "stats:read": "Read the daily rollups: volumes, statuses, channels, sources",
    "reports:read": "Read production report runs and download their archived files",
    "readings:write": "Send meter readings (bulk, idempotent per meter and interval)",
    "statements:read": "Read statement runs, their progress, report and statements",
    "statements:write": "Create, start, pause and resume statement runs; release held statements",
}


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    key: str  # shown once; only its hash is stored


class UnknownScope(ValueError):
    pass


@transaction.atomic
def api_key_create(
    *, name: str, scopes: list[str], source_systems: list[str] | None = None, created_by=None
) -> IssuedKey:
    """Create a key for an integrator; its service user joins the integrator role. The key sees
    what it created, and the communications and cases of the `source_systems` granted."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise UnknownScope(
            f"Unknown scope(s): {', '.join(unknown)}. Known scopes: {', '.join(sorted(SCOPES))}."
        )
    User = get_user_model()
    user, _ = User.objects.get_or_create(username=f"api:{name}", defaults={"is_active": True})
    user.set_unusable_password()
    user.save(update_fields=["password"])
    user.groups.add(Group.objects.get(name=Role.INTEGRATOR))
    prefix = secrets.token_hex(_PREFIX_LEN // 2)
    secret = secrets.token_urlsafe(32)
    key = f"ccm_{prefix}_{secret}"
    api_key = ApiKey.objects.create(
        name=name,
        prefix=prefix,
        key_hash=_hash(key),
        scopes=sorted(set(scopes)),
        source_systems=sorted(set(source_systems or [])),
        user=user,
        created_by=created_by,
    )
    audit.record(
        actor=created_by,
        action="api_key.created",
        subject=api_key,
        after={
            "name": name,
            "scopes": api_key.scopes,
            "source_systems": api_key.source_systems,
            "prefix": prefix,
        },
    )
    return IssuedKey(api_key=api_key, key=key)


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, by=None) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
        audit.record(actor=by, action="api_key.revoked", subject=api_key)
    return api_key


# A process keeps the keys it looked up (by the key's hash), so a busy integrator's requests do
# not each read the key and its user. Any change to a key or a user (revoked, scopes, user
# disabled) gives the API keys a new generation on commit (ccm.generations), and a kept key is
# used only while the generation it was read under is current: a revocation takes effect at
# once in every process (with Redis, the check is part of one cache read per request).
KEY_CACHE_S = 60.0
_kept: dict[str, tuple[float, object, ApiKey]] = {}


def api_keys_changed(**kwargs) -> None:
    """A key or a user changed: kept keys are read again (here at once, elsewhere on commit)."""
    _kept.clear()
    generations.changed(generations.API_KEYS)


def api_key_lookup(key: str, *, request=None) -> ApiKey | None:
    """The active or revoked key `key` names, or None. With `request`, a key this process
    keeps is counted against its rate (ApiKeyRateThrottle) in the same cache round trip that
    checks its generation."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != "ccm":
        return None
    digest = _hash(key)
    now = time.monotonic()
    kept = _kept.get(digest)
    if kept is not None and request is not None:
        generation = ApiKeyRateThrottle.count_ahead(request, kept[2])
    else:
        generation = generations.current(generations.API_KEYS)
    if kept is not None and kept[0] > now and kept[1] == generation:
        return kept[2]
    api_key = ApiKey.objects.select_related("user").filter(prefix=parts[1]).first()
    if api_key is None or not hmac.compare_digest(api_key.key_hash, digest):
        return None
    if len(_kept) > 1000:
        _kept.clear()
    _kept[digest] = (now + KEY_CACHE_S, generation, api_key)
    return api_key


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        keyword, _, key = header.partition(" ")
        if keyword != KEYWORD:
            return None
        key = key.strip()
        if not key:
            raise exceptions.AuthenticationFailed("The Api-Key header carries no key.")
        api_key = api_key_lookup(key, request=request)
        if api_key is None:
            raise exceptions.AuthenticationFailed("Unknown API key.")
        if not api_key.is_active:
            raise exceptions.AuthenticationFailed("This API key has been revoked.")
        if not api_key.user.is_active:
            raise exceptions.AuthenticationFailed("The account behind this API key is disabled.")
        now = timezone.now()
        # Writing on every request would serialise a busy integrator on one row.
        if api_key.last_used_at is None or (now - api_key.last_used_at).total_seconds() > 60:
            ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
            api_key.last_used_at = now  # the kept copy too
        return api_key.user, api_key

    def authenticate_header(self, request):
        return KEYWORD


def session_scopes(user) -> set[str]:
    """The scopes a signed-in user's session carries: those of their roles (ROLE_SCOPES)."""
    if not user.is_active:
        return set()
    if user.is_superuser:
        return set(SCOPES)
    roles = user.groups.values_list("name", flat=True)
    return {scope for role in roles for scope in ROLE_SCOPES.get(role, ())}


def caller_scopes(request) -> set[str]:
    """The scopes of the calling key, or of the session's roles."""
    if isinstance(request.auth, ApiKey):
        return set(request.auth.scopes)
    return session_scopes(request.user)


def visible_to_caller(
    queryset: QuerySet[M], request, *, creator: str = "created_by", source_system: str = ""
) -> QuerySet[M]:
    """What the caller may see of `queryset`: a staff session (held to its role's scopes and
    permissions elsewhere) all of it; an API key only the rows its own service user created,
    plus those of the customer source systems it was granted (`source_system` names the path
    to a row's source system, e.g. "customer__source_system"). Anything else answers 404."""
    if not isinstance(request.auth, ApiKey):
        return queryset
    mine = Q(**{creator: request.auth.user})
    if source_system and request.auth.source_systems:
        mine |= Q(**{f"{source_system}__in": list(request.auth.source_systems)})
    return queryset.filter(mine)


class HasScope(permissions.BasePermission):
    """Views name `required_scopes` (all needed), or a dict per HTTP method."""

    message = "This API key lacks the scope this endpoint needs."

    def has_permission(self, request, view) -> bool:
        required = getattr(view, "required_scopes", ())
        if isinstance(required, dict):
            required = required.get(request.method, required.get("*", ())) or ()
        if not (request.user and request.user.is_authenticated):
            return False
        missing = set(required) - caller_scopes(request)
        if missing:
            who = "This API key" if isinstance(request.auth, ApiKey) else "Your role"
            self.message = f"{who} lacks the scope(s): {', '.join(sorted(missing))}."
            return False
        return True


class CountingRateThrottle(throttling.SimpleRateThrottle):
    """DRF's rate limit, counted instead of logged: a counter per caller and window of the
    rate's period in the shared cache, and the rate applied to a sliding window (the previous
    window's count weighted by how much of it still overlaps, plus the current one's).

    DRF's own throttle reads, extends and writes back the list of every request's time in the
    period (6,000 floats for a key at 6,000/min): two cache round trips and the whole list
    pickled per request, and concurrent requests overwrite each other's entries. An increment
    is atomic, one round trip with Redis (the finished window's count is read once per window
    and kept by the process), and a refused request is not counted."""

    _finished: dict[str, int] = {}  # "<key>:<window>" → its final count, per process
    num_requests: int  # set by SimpleRateThrottle.__init__ from the rate
    duration: int

    def allow_request(self, request, view) -> bool:
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        counted = getattr(request, "_ccm_counted", {}).pop(self.key, None)
        if counted is not None:  # with the generations (`count_ahead`)
            self.now, self.count = counted
        else:
            self.now = self.timer()
        window, into = divmod(self.now, self.duration)
        current = f"{self.key}:{int(window)}"
        if counted is None:
            self.count = _counter_incr(self.cache, current, timeout=2 * self.duration)
        self.previous = self._previous(f"{self.key}:{int(window) - 1}")
        self.overlap = 1 - into / self.duration  # of the previous window, still inside the rate's
        if self.previous * self.overlap + self.count <= self.num_requests:
            return True
        with contextlib.suppress(Exception):
            self.cache.decr(current)  # a refused request does not count
        return False

    def _previous(self, key: str) -> int:
        kept = self._finished.get(key)
        if kept is None:
            kept = int(self.cache.get(key) or 0)
            if len(self._finished) > 10_000:
                self._finished.clear()
            self._finished[key] = kept
        return kept

    def wait(self) -> float | None:
        """Seconds until a request would be allowed again."""
        into = self.duration * (1 - self.overlap)
        counted = self.count - 1  # this window's requests, the refused one taken off
        if self.previous and counted < self.num_requests:
            # Later in this window: the previous window's share falls until one more fits.
            overlap_then = (self.num_requests - counted - 1) / self.previous
            return max(1.0, self.duration * (1 - overlap_then) - into)
        # In the next window, once this window's share leaves room for one more.
        overlap_next = min(1.0, (self.num_requests - 1) / counted) if counted else 1.0
        return self.duration - into + self.duration * (1 - overlap_next)


def _counter_incr(cache, key: str, *, timeout: int) -> int:
    """Add one to the counter `key` (created with `timeout`) and return it. With Redis one
    round trip (SET NX and INCR in a pipeline; Django's `incr` asks whether the key exists
    first); elsewhere `incr`, and `add` for a window's first request."""
    redis = redis_of(cache)
    if redis is not None:
        full = cache.make_and_validate_key(key)
        pipeline = redis.get_client(full, write=True).pipeline(transaction=False)
        pipeline.set(full, 0, ex=timeout, nx=True)
        pipeline.incr(full)
        return int(pipeline.execute()[1])
    try:
        return cache.incr(key)
    except ValueError:  # the window's first request
        if cache.add(key, 1, timeout=timeout):
            return 1
        return cache.incr(key)


class SessionUserRateThrottle(CountingRateThrottle, throttling.UserRateThrottle):
    """DRF's per-user rate, for people signed in: a key's calls are counted by
    `ApiKeyRateThrottle` alone (its service user would otherwise cap it at the user rate)."""

    def get_cache_key(self, request, view):
        if isinstance(request.auth, ApiKey):
            return None
        return super().get_cache_key(request, view)


class SessionOnly(permissions.BasePermission):
    """Refuses API keys: the operation is for staff signed in to CCM. The OpenAPI schema lists
    only the session scheme for views that use it (or a subclass)."""

    message = "This operation is for staff signed in to CCM, not for API keys."

    def has_permission(self, request, view) -> bool:
        return not isinstance(request.auth, ApiKey)


class ApiKeyRateThrottle(CountingRateThrottle):
    scope = "api_key"

    def get_cache_key(self, request, view):
        if not isinstance(request.auth, ApiKey):
            return None
        return self._key_of(request.auth)

    def _key_of(self, api_key: ApiKey) -> str:
        return self.cache_format % {"scope": self.scope, "ident": api_key.pk}

    @classmethod
    def count_ahead(cls, request, api_key: ApiKey) -> object:
        """The API keys' generation, read in one cache round trip with this request counted
        against `api_key`'s rate (every request a key makes counts, whatever its answer; one
        refused for the rate is taken off again). The throttle then uses that count."""
        throttle = cls()
        if throttle.rate is None:
            return generations.current(generations.API_KEYS)
        key, now = throttle._key_of(api_key), throttle.timer()
        generation, count = generations.current_counting(
            generations.API_KEYS,
            f"{key}:{int(now // throttle.duration)}",
            timeout=2 * throttle.duration,
        )
        if count is not None:
            request._ccm_counted = {key: (now, count)}
        return generation

    @classmethod
    def uncount_unused(cls, request) -> None:
        """A request counted ahead that no throttle took (refused before the throttles: the
        key's account disabled, a scope missing) is taken off again: as before counting
        ahead, only requests that reach the throttle count."""
        for key, (now, _) in getattr(request, "_ccm_counted", {}).items():
            with contextlib.suppress(Exception):
                cls.cache.decr(f"{key}:{int(now // cls().duration)}")
        request._ccm_counted = {}


class CountedAheadMixin:
    """Mix into an APIView: a request counted against its key's rate with the generations
    (`ApiKeyRateThrottle.count_ahead`) and refused before the throttles is not counted."""

    def handle_exception(self, exc):
        ApiKeyRateThrottle.uncount_unused(self.request)  # type: ignore[attr-defined]
        return super().handle_exception(exc)  # type: ignore[misc]
