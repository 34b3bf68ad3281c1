"""Rate limits shared by every process, and the client address they count by.

Counts live in the default cache, which is shared (the database cache unless CACHE_URL names
Redis): a per-process memory would let each web process count alone.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from functools import lru_cache

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def _trusted(proxies: tuple[str, ...]) -> tuple[_Network, ...]:
    return tuple(ipaddress.ip_network(p.strip(), strict=False) for p in proxies if p.strip())


def _is_trusted(address: str, networks: tuple[_Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_ip(request: HttpRequest) -> str:
    """The address of the client, as the trusted proxies (CCM_TRUSTED_PROXIES) saw it.

    X-Forwarded-For is read from the right: each trusted proxy appends the address it got the
    request from, so the right-most address that is not a trusted proxy is the client. Entries
    further left were written by the client itself and prove nothing. Without trusted proxies,
    or when the request did not come through one, it is the connecting address."""
    remote = request.META.get("REMOTE_ADDR", "")
    networks = _trusted(tuple(getattr(settings, "CCM_TRUSTED_PROXIES", ())))
    if not networks or not _is_trusted(remote, networks):
        return remote
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, networks):
            return hop
    return hops[0] if hops else remote


def rate_limit_key(*parts: str) -> str:
    """A cache key for what is counted; secrets (a link's token) are hashed, never stored."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


def rate_limit_hit(key: str, *, limit: int, window: int) -> int:
    """Count one hit for `key` in the current fixed window of `window` seconds. Returns 0 when
    it is within `limit`, else the seconds until the window ends (for Retry-After)."""
    now = int(time.time())
    bucket = f"ccm:rl:{key}:{now // window}"
    try:
        # Atomic on Redis; on the database cache a hit that races another may be lost, which
        # only ever makes the limit a little more lenient.
        count = cache.incr(bucket)
    except ValueError:  # the window's first hit (or it just expired)
        count = 1 if cache.add(bucket, 1, timeout=window + 1) else cache.incr(bucket)
    if count <= limit:
        return 0
    return max(1, window - now % window)
