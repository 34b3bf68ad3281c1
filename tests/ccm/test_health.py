from __future__ import annotations


def test_healthz_reports_each_dependency(db, client):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "broker", "storage", "cluster"}
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


def test_heartbeat_task_records_each_run_of_the_cluster(db):
    from ccm.models import ClusterHeartbeat
    from ccm.tasks import cluster_heartbeat

    cluster_heartbeat()
    cluster_heartbeat()

    beat = ClusterHeartbeat.objects.get()
    assert beat.beats == 2
    assert beat.cluster == "ccm"


def test_healthz_is_503_when_the_cluster_stopped_beating(db, client, settings):
    from datetime import timedelta

    from django.utils import timezone
    from freezegun import freeze_time

    from ccm.tasks import cluster_heartbeat

    settings.CCM_HEALTH_HEARTBEAT_MAX_AGE_S = 180
    # given a heartbeat 4 minutes ago and none since
    with freeze_time(timezone.now() - timedelta(minutes=4)):
        cluster_heartbeat()
    # when
    response = client.get("/healthz")
    # then
    assert response.status_code == 503
    cluster = response.json()["checks"]["cluster"]
    assert cluster["ok"] is False
    assert "no heartbeat for 24" in cluster["error"]
    # and a fresh heartbeat makes it healthy again
    cluster_heartbeat()
    assert client.get("/healthz").status_code == 200


def test_healthz_is_503_when_due_work_is_not_picked_up(db, client, settings):
    from datetime import timedelta

    from django.utils import timezone
    from django_q.models import OrmQ

    settings.CCM_HEALTH_DUE_TASK_MAX_AGE_S = 300
    # given a task due 6 minutes ago that no worker took
    OrmQ.objects.create(key="ccm", payload="x", lock=timezone.now() - timedelta(minutes=6))
    # when
    response = client.get("/healthz")
    # then
    assert response.status_code == 503
    assert "a task has been due for 36" in response.json()["checks"]["cluster"]["error"]


def test_healthz_ignores_a_task_just_queued_or_being_worked_on(db, client):
    from datetime import timedelta

    from django.utils import timezone
    from django_q.models import OrmQ

    OrmQ.objects.create(key="ccm", payload="x", lock=timezone.now())
    OrmQ.objects.create(key="ccm", payload="y", lock=timezone.now() + timedelta(minutes=3))

    assert client.get("/healthz").status_code == 200
