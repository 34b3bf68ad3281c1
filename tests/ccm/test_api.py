from __future__ import annotations

import uuid

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from ccm.api.auth import api_key_create
from ccm.models import ApiKey, IdempotencyRecord
from tests.ccm.test_ratelimit import REDIS_DB, _redis_up

PROBLEM = "application/problem+json"


@pytest.fixture
def client_for():
    def make(key: str | None = None, user=None) -> APIClient:
        client = APIClient()
        if key:
            client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
        if user:
            client.force_login(user)
        return client

    return make


def test_me_shows_the_key_and_its_scopes(db, client_for):
    issued = api_key_create(name="core-banking", scopes=["me:read", "communications:write"])
    response = client_for(issued.key).get("/api/v1/me")
    assert response.status_code == 200
    assert response.json() == {
        "username": "api:core-banking",
        "auth": "api_key",
        "api_key": "core-banking",
        "roles": ["integrator"],
        "scopes": ["communications:write", "me:read"],
    }


def test_me_for_a_staff_session(reviewer, client_for):
    body = client_for(user=reviewer).get("/api/v1/me").json()
    assert (body["username"], body["auth"], body["roles"]) == (
        "rita",
        "session",
        ["compliance_reviewer"],
    )


def test_key_is_stored_hashed_and_shown_once(db):
    issued = api_key_create(name="billing", scopes=["me:read"])
    row = ApiKey.objects.get(name="billing")
    assert issued.key not in (row.key_hash, row.prefix)
    assert issued.key.startswith(f"ccm_{row.prefix}_")
    assert len(row.key_hash) == 64


def test_create_api_key_command_prints_the_key_last(db, capsys, client_for):
    call_command("create_api_key", "claims", "--scopes", "me:read,templates:read")
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert client_for(key).get("/api/v1/me").json()["api_key"] == "claims"


def test_create_api_key_rejects_unknown_scope(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="Unknown scope"):
        call_command("create_api_key", "x", "--scopes", "everything")


def test_revoked_key_is_refused_with_a_problem(db, client_for, admin_user):
    issued = api_key_create(name="old", scopes=["me:read"])
    revoke = client_for(user=admin_user).post(f"/api/v1/api-keys/{issued.api_key.pk}/revoke")
    assert revoke.status_code == 200
    response = client_for(issued.key).get("/api/v1/me")
    assert response.status_code == 401
    assert response["Content-Type"] == PROBLEM
    assert response.json()["detail"] == "This API key has been revoked."
    assert response["WWW-Authenticate"] == "Api-Key"


def test_a_busy_key_is_not_read_from_the_database_on_every_request(db, client_for):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    issued = api_key_create(name="busy", scopes=["me:read"])
    client = client_for(issued.key)
    assert client.get("/api/v1/me").status_code == 200
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/api/v1/me").status_code == 200
    assert not [q["sql"] for q in queries if '"ccm_apikey"' in q["sql"]]


def test_a_key_revoked_elsewhere_is_refused_at_once_by_a_process_that_kept_it(
    db, client_for, admin_user, django_capture_on_commit_callbacks
):
    from ccm.api import auth

    issued = api_key_create(name="kept", scopes=["me:read"])
    client = client_for(issued.key)
    assert client.get("/api/v1/me").status_code == 200
    kept = dict(auth._kept)  # what this process keeps; another process keeps the same
    # when an operator revokes the key in another process (its commit bumps the generation)
    with django_capture_on_commit_callbacks(execute=True):
        revoke = client_for(user=admin_user).post(f"/api/v1/api-keys/{issued.api_key.pk}/revoke")
    assert revoke.status_code == 200
    auth._kept.update(kept)  # the other process's copy, not cleared by the revoke here
    # then the kept copy is not used: the key is refused
    response = client.get("/api/v1/me")
    assert response.status_code == 401
    assert response.json()["detail"] == "This API key has been revoked."


def test_unknown_key_and_no_key_are_401(db, client_for):
    assert client_for("ccm_deadbeef_nope").get("/api/v1/me").status_code == 401
    response = client_for().get("/api/v1/me")
    assert response.status_code == 401
    assert response.json()["title"] == "Not authenticated"


def test_missing_scope_is_403_naming_the_scope(db, client_for):
    issued = api_key_create(name="narrow", scopes=["templates:read"])
    response = client_for(issued.key).get("/api/v1/me")
    assert response.status_code == 403
    assert response["Content-Type"] == PROBLEM
    assert "me:read" in response.json()["detail"]


def test_api_keys_cannot_manage_api_keys(db, client_for):
    issued = api_key_create(name="sneaky", scopes=list(["me:read"]))
    response = client_for(issued.key).post("/api/v1/api-keys", {"name": "x", "scopes": []})
    assert response.status_code == 403


def test_validation_errors_are_problem_details_with_fields(admin_user, client_for):
    response = client_for(user=admin_user).post(
        "/api/v1/api-keys", {"name": "bad name!", "scopes": ["nope"]}, format="json"
    )
    assert response.status_code == 400
    assert response["Content-Type"] == PROBLEM
    body = response.json()
    assert body["type"].endswith("/validation-error")
    assert body["status"] == 400
    assert body["instance"] == "/api/v1/api-keys"
    fields = {e["field"] for e in body["errors"]}
    assert fields == {"name", "scopes[0]"}


def test_unknown_api_path_is_a_problem_404(db, client_for):
    response = client_for().get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response["Content-Type"] == PROBLEM
    assert response.json()["status"] == 404


def test_malformed_json_is_400_not_500(admin_user, client_for):
    response = client_for(user=admin_user).post(
        "/api/v1/api-keys", data="{not json", content_type="application/json"
    )
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]


# --- Idempotency-Key -------------------------------------------------------------------


def _issue(client, key: str, name: str = "erp"):
    return client.post(
        "/api/v1/api-keys",
        {"name": name, "scopes": ["me:read"]},
        format="json",
        HTTP_IDEMPOTENCY_KEY=key,
    )


def test_same_key_same_body_replays_the_stored_response(admin_user, client_for):
    client = client_for(user=admin_user)
    first = _issue(client, "k-1")
    second = _issue(client, "k-1")
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()  # the very key shown once, replayed, not a new one
    assert second["Idempotent-Replayed"] == "true"
    assert ApiKey.objects.filter(name="erp").count() == 1


def test_same_key_other_body_is_422(admin_user, client_for):
    client = client_for(user=admin_user)
    _issue(client, "k-2")
    response = _issue(client, "k-2", name="other")
    assert response.status_code == 422
    assert response["Content-Type"] == PROBLEM
    assert response.json()["type"].endswith("/idempotency-key-reused")
    assert not ApiKey.objects.filter(name="other").exists()


def test_same_key_while_first_is_running_is_409(admin_user, client_for, monkeypatch):
    # given a second, identical request that arrives while the first is still in the view
    from ccm.api import views

    real_create = views.api_key_create
    seen: dict[str, object] = {}

    def slow_create(**kwargs):
        seen["second"] = _issue(client_for(user=admin_user), "k-3")
        return real_create(**kwargs)

    monkeypatch.setattr(views, "api_key_create", slow_create)
    # when
    first = _issue(client_for(user=admin_user), "k-3")
    # then the second was told to come back later, and the first completed once
    second = seen["second"]
    assert second.status_code == 409
    assert second.json()["type"].endswith("/idempotency-in-progress")
    assert first.status_code == 201
    assert ApiKey.objects.filter(name="erp").count() == 1
    replay = _issue(client_for(user=admin_user), "k-3")
    assert replay.json()["key"] == first.json()["key"]


def test_keys_are_scoped_per_client(admin_user, make_user, client_for):
    other = make_user("boss", is_superuser=True)
    assert _issue(client_for(user=admin_user), "shared", name="a").status_code == 201
    assert _issue(client_for(user=other), "shared", name="b").status_code == 201


def test_server_errors_release_the_key(admin_user, client_for, monkeypatch):
    from ccm.api import views

    def boom(**kwargs):
        raise RuntimeError("database fell over")

    monkeypatch.setattr(views, "api_key_create", boom)
    client = client_for(user=admin_user)
    client.raise_request_exception = False
    assert _issue(client, "k-5").status_code == 500
    assert not IdempotencyRecord.objects.filter(key="k-5").exists()
    monkeypatch.undo()
    assert _issue(client, "k-5").status_code == 201


def test_expired_key_can_be_used_afresh(admin_user, client_for):
    client = client_for(user=admin_user)
    _issue(client, "k-6")
    from django.utils import timezone

    IdempotencyRecord.objects.filter(key="k-6").update(expires_at=timezone.now())
    response = _issue(client, "k-6", name="fresh")
    assert response.status_code == 201
    assert response.json()["name"] == "fresh"


def test_openapi_schema_and_docs(db, client):
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    text = schema.content.decode()
    assert "/api/v1/me" in text
    assert "Idempotency-Key" in text
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert b"cdn." not in docs.content  # served from our static files, no CDN
    assert b"/static/drf_spectacular_sidecar/swagger-ui-dist/" in docs.content


def test_list_is_cursor_paginated(admin_user, client_for):
    for i in range(3):
        api_key_create(name=f"k{i}", scopes=["me:read"])
    page = client_for(user=admin_user).get("/api/v1/api-keys?page_size=2").json()
    assert [k["name"] for k in page["results"]] == ["k2", "k1"]
    assert "cursor=" in page["next"]


def test_an_api_key_is_held_to_its_own_limit_not_the_user_limit(db, client_for, monkeypatch):
    from django.core.cache import cache

    from ccm.api.auth import ApiKeyRateThrottle, SessionUserRateThrottle

    cache.clear()
    monkeypatch.setattr(SessionUserRateThrottle, "THROTTLE_RATES", {"user": "2/min"})
    monkeypatch.setattr(ApiKeyRateThrottle, "THROTTLE_RATES", {"api_key": "5/min"})
    client = client_for(api_key_create(name="busy", scopes=["me:read"]).key)
    assert [client.get("/api/v1/me").status_code for _ in range(6)] == [200] * 5 + [429]
    cache.clear()


def test_api_keys_are_throttled_with_a_problem(db, client_for, monkeypatch):
    from django.core.cache import cache

    from ccm.api.auth import ApiKeyRateThrottle

    cache.clear()
    monkeypatch.setattr(ApiKeyRateThrottle, "THROTTLE_RATES", {"api_key": "2/min"})
    issued = api_key_create(name="chatty", scopes=["me:read"])
    client = client_for(issued.key)
    assert [client.get("/api/v1/me").status_code for _ in range(2)] == [200, 200]
    response = client.get("/api/v1/me")
    assert response.status_code == 429
    assert response["Content-Type"] == PROBLEM
    assert int(response["Retry-After"]) > 0
    cache.clear()


def test_the_rate_is_a_sliding_window_and_refusals_do_not_count(db, client_for, monkeypatch):
    # given: a key allowed 4 calls a minute, calls made at chosen times
    from django.core.cache import cache

    from ccm.api.auth import ApiKeyRateThrottle

    cache.clear()
    now = [6_000_000.0]  # the start of a one-minute window
    monkeypatch.setattr(ApiKeyRateThrottle, "timer", lambda self: now[0])
    monkeypatch.setattr(ApiKeyRateThrottle, "THROTTLE_RATES", {"api_key": "4/min"})
    client = client_for(api_key_create(name="steady", scopes=["me:read"]).key)

    def calls(n: int) -> list[int]:
        return [client.get("/api/v1/me").status_code for _ in range(n)]

    # when / then: four pass, and refused calls, however many, do not use up the next window
    assert calls(7) == [200] * 4 + [429] * 3
    # a quarter into the next window, 3/4 of the last window's 4 calls still count: one fits
    now[0] += 75
    assert calls(2) == [200, 429]
    # halfway: the previous window weighs 2, this one has 1: one more fits, and then none
    now[0] += 15
    response = client.get("/api/v1/me")
    assert response.status_code == 200
    refused = client.get("/api/v1/me")
    assert refused.status_code == 429
    # Retry-After: when the previous window's share has fallen far enough (15 s later)
    assert 14 <= int(refused["Retry-After"]) <= 16
    now[0] += 16
    assert calls(1) == [200]
    cache.clear()


@pytest.mark.skipif(not _redis_up(), reason="no Redis on 127.0.0.1:6379")
def test_with_redis_a_keys_request_asks_the_cache_once_and_is_still_throttled(
    db, client_for, settings, monkeypatch
):
    # given: Redis as the shared cache, a key allowed 3 calls a minute
    import redis

    from ccm.api.auth import ApiKeyRateThrottle

    location = f"redis://127.0.0.1:6379/{REDIS_DB}"
    # (keys of this run's own, expiring with their window: the database is never cleared)
    settings.CACHES = {
        "default": {
            "BACKEND": "ccm.cache.KeptClientRedisCache",
            "LOCATION": location,
            "KEY_PREFIX": f"api-test-{uuid.uuid4().hex}",
        }
    }
    monkeypatch.setattr(ApiKeyRateThrottle, "THROTTLE_RATES", {"api_key": "3/min"})
    trips: list[str] = []
    command, pipeline = redis.Redis.execute_command, redis.client.Pipeline.execute

    def one_command(self, *args, **kwargs):
        trips.append(str(args[0]))
        return command(self, *args, **kwargs)

    def one_pipeline(self, *args, **kwargs):
        trips.append("pipeline")
        return pipeline(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "execute_command", one_command)
    monkeypatch.setattr(redis.client.Pipeline, "execute", one_pipeline)
    client = client_for(api_key_create(name="counted", scopes=["me:read"]).key)
    assert client.get("/api/v1/me").status_code == 200  # the key is read and kept

    # when: the next calls
    trips.clear()
    second = client.get("/api/v1/me")

    # then: the key's generation and its rate's count are one round trip to Redis
    assert second.status_code == 200
    assert trips == ["pipeline"]
    # and calls refused for a missing scope do not use up the rate (as before)
    assert [client.get("/api/v1/communications").status_code for _ in range(3)] == [403] * 3
    # and the rate holds: the third call passes, the fourth is refused (and not counted)
    assert [client.get("/api/v1/me").status_code for _ in range(2)] == [200, 429]
    assert client.get("/api/v1/me").status_code == 429


def test_api_key_gets_its_own_rate_not_the_user_rate(db, client_for, monkeypatch):
    # given: the user rate is lower than the key rate (as 1,200/min is below 6,000/min)
    from django.core.cache import cache
    from rest_framework.throttling import UserRateThrottle

    from ccm.api.auth import ApiKeyRateThrottle

    cache.clear()
    monkeypatch.setattr(UserRateThrottle, "THROTTLE_RATES", {"user": "2/min", "anon": "60/min"})
    monkeypatch.setattr(ApiKeyRateThrottle, "THROTTLE_RATES", {"api_key": "5/min"})
    issued = api_key_create(name="busy", scopes=["me:read"])
    client = client_for(issued.key)
    # when: the key calls more often than the user rate allows
    codes = [client.get("/api/v1/me").status_code for _ in range(6)]
    # then: only the key's own rate applies
    assert codes == [200] * 5 + [429]
    cache.clear()
