from __future__ import annotations


def test_healthz_reports_each_dependency(db, client):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "broker", "storage"}
    assert all(check["ok"] for check in body["checks"].values())


def test_healthz_is_503_when_storage_fails(db, client, settings, tmp_path):
    # given document storage pointing at a path that cannot be a directory
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    settings.MEDIA_ROOT = blocker
    # when
    response = client.get("/healthz")
    # then
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["storage"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True
