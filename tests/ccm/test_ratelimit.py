"""Rate limits in the shared cache, and the client address behind trusted proxies."""

from __future__ import annotations

import socket
import uuid
import warnings

import pytest
from django.core.cache import caches
from django.test import RequestFactory, override_settings

from ccm import ratelimit
from tests.ccm.test_settings import _setting

REDIS_DB = 4


@pytest.mark.parametrize(
    ("proxies", "remote", "forwarded", "client"),
    [
        ([], "203.0.113.7", "1.2.3.4", "203.0.113.7"),  # no proxy: the header is the client's word
        (["10.0.0.0/8"], "203.0.113.7", "1.2.3.4", "203.0.113.7"),  # not via the proxy
        (["10.0.0.0/8"], "10.0.0.5", "198.51.100.1, 203.0.113.7", "203.0.113.7"),
        (["10.0.0.0/8"], "10.0.0.5", "203.0.113.7, 10.0.0.9", "203.0.113.7"),  # two proxies
        (
            ["10.0.0.0/8", "2001:db8::/32"],
            "2001:db8::1",
            "2001:db9::5, 2001:db8::2",
            "2001:db9::5",
        ),
        (["10.0.0.0/8"], "10.0.0.5", "", "10.0.0.5"),
        (["10.0.0.0/8"], "10.0.0.5", "not-an-ip, 10.0.0.7", "not-an-ip"),
    ],
)
def test_client_address_is_read_from_the_right_through_trusted_proxies(
    proxies, remote, forwarded, client
):
    request = RequestFactory().get("/", REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR=forwarded)
    with override_settings(CCM_TRUSTED_PROXIES=proxies):
        assert ratelimit.client_ip(request) == client


def test_the_default_cache_is_the_database_and_redis_when_configured():
    assert _setting("CACHES['default']['BACKEND']") == (
        "django.core.cache.backends.db.DatabaseCache"
    )
    assert _setting("CACHES['default']['LOCATION']") == "ccm_cache"
    # Django's Redis cache, keeping its client between calls (ccm/cache.py)
    assert _setting("CACHES['default']['BACKEND']", CACHE_URL="rediscache://127.0.0.1:6379/1") == (
        "ccm.cache.KeptClientRedisCache"
    )


def _redis_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=0.5).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _redis_up(), reason="no Redis on 127.0.0.1:6379")
def test_limits_count_across_connections_in_redis(settings, monkeypatch):
    # given two processes' caches pointing at the same Redis
    location = f"redis://127.0.0.1:6379/{REDIS_DB}"
    backend = "ccm.cache.KeptClientRedisCache"
    # (keys of this run's own, expiring with their window: other runs, xdist workers or
    # checkouts may use the database at the same time, so it is never cleared)
    prefix = f"ratelimit-test-{uuid.uuid4().hex}"
    settings.CACHES = {
        "default": {"BACKEND": backend, "LOCATION": location, "KEY_PREFIX": prefix},
        "other": {"BACKEND": backend, "LOCATION": location, "KEY_PREFIX": prefix},
    }
    key = ratelimit.rate_limit_key("test", "203.0.113.7")

    # when each counts hits for the same client
    first = [ratelimit.rate_limit_hit(key, limit=3, window=60) for _ in range(2)]
    monkeypatch.setattr(ratelimit, "cache", caches["other"])
    later = [ratelimit.rate_limit_hit(key, limit=3, window=60) for _ in range(2)]

    # then the second sees the first's hits: the fourth is over the limit
    assert first == [0, 0]
    assert later[0] == 0
    assert later[1] > 0


def test_the_redis_cache_builds_its_client_once():
    # Django's Redis cache builds a client per call (a tenth of a millisecond of CPU each, three
    # calls per API request); CCM's keeps one per connection pool and reuses it.
    from ccm.cache import KeptClientRedisCache

    backend = KeptClientRedisCache(f"redis://127.0.0.1:6379/{REDIS_DB}", {})

    first = backend._cache.get_client("a", write=True)

    assert backend._cache.get_client("b", write=True) is first
    assert backend._cache.get_client("c") is first  # one server: reads use its pool too


@pytest.mark.skipif(not _redis_up(), reason="no Redis on 127.0.0.1:6379")
def test_the_redis_cache_reads_replies_with_the_c_parser_and_takes_any_key():
    # redis-py's pure-Python parser costs the web twice the CPU a cache call needs; the
    # project installs hiredis, which redis-py then uses.
    from redis._parsers import _HiredisParser

    from ccm.cache import KeptClientRedisCache

    backend = KeptClientRedisCache(
        f"redis://127.0.0.1:6379/{REDIS_DB}", {"KEY_PREFIX": f"parser-{uuid.uuid4().hex}"}
    )
    pool = backend._cache.get_client("a", write=True).connection_pool
    connection = pool.get_connection()
    try:
        assert isinstance(connection._parser, _HiredisParser)
    finally:
        pool.release(connection)
    # Redis takes any key: no memcached warning for a key with a space, and it round-trips.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backend.set("a key with spaces", 1, timeout=60)
        assert backend.get("a key with spaces") == 1
