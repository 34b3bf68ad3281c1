"""The shared cache's Redis backend, keeping its client.

Django's Redis cache builds a new `redis.Redis` for every operation (its constructor fills a
table of some 170 response callbacks): about a tenth of a millisecond of CPU per cache call,
three calls per API request. A `redis.Redis` is safe to share between threads (each command
takes a connection from the pool), so one per pool is kept and reused."""

from __future__ import annotations

from django.core.cache.backends.redis import RedisCache, RedisCacheClient


class KeptRedisCacheClient(RedisCacheClient):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._kept: dict[int, object] = {}  # id of a connection pool → its client

    def get_client(self, key=None, *, write=False):
        # Django's own attributes, which its type stubs do not declare.
        pool = self._get_connection_pool(write)  # type: ignore[attr-defined]
        client = self._kept.get(id(pool))  # pools live as long as the cache
        if client is None:
            client = self._kept[id(pool)] = self._client(connection_pool=pool)  # type: ignore[attr-defined]
        return client


class KeptClientRedisCache(RedisCache):
    """CACHE_URL=rediscache://… is served by this backend (ccm/settings.py)."""

    def __init__(self, server, params):
        super().__init__(server, params)
        self._class = KeptRedisCacheClient

    def validate_key(self, key):
        # Django's check warns of keys memcached would refuse (a scan of every character, on
        # every cache call of every request); Redis takes any key, and CCM's are its own.
        pass


def redis_of(cache) -> RedisCacheClient | None:
    """The Redis client behind `cache` (one of Django's Redis caches), for commands sent in one
    round trip (a pipeline); None for any other cache."""
    client = getattr(cache, "_cache", None)
    return client if isinstance(client, RedisCacheClient) else None
