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


def test_healthz_shows_each_host_with_its_heartbeat_last_task_and_queue(
    db, client, settings, monkeypatch
):
    from datetime import timedelta

    from django.utils import timezone
    from django_q.conf import Conf
    from django_q.models import OrmQ

    from ccm import tasks
    from ccm.models import ClusterHeartbeat

    settings.CCM_HEALTH_HOST_STALE_AFTER_S = 300
    now = timezone.now()
    # given this host beating now and running a task (as a worker does, not in sync mode)
    monkeypatch.setattr(Conf, "SYNC", False)
    monkeypatch.setattr(tasks, "_host_task_recorded_at", -1e9)
    tasks.cluster_heartbeat()
    tasks.host_task_record(
        "django_q", func="notifications.pipeline.dispatch.dispatch_chunk", task={}
    )
    # and a second host whose last sign of life was 10 minutes ago
    ClusterHeartbeat.objects.create(
        cluster="ccm",
        host="worker-2",
        beat_at=now - timedelta(minutes=12),
        last_task="notifications.pipeline.tasks.sweep",
        last_task_at=now - timedelta(minutes=10),
    )
    # and one task due on the cluster's queue for a minute
    OrmQ.objects.create(key="ccm", payload="x", lock=now - timedelta(minutes=1))
    # when
    response = client.get("/healthz")
    # then the cluster takes work (the newest heartbeat is fresh) and each host is listed
    assert response.status_code == 200
    cluster = response.json()["checks"]["cluster"]
    hosts = {beat["host"]: beat for beat in cluster["heartbeats"]}
    here = next(h for h in hosts if h != "worker-2")
    assert hosts[here]["last_task"] == "notifications.pipeline.dispatch.dispatch_chunk"
    assert hosts[here]["last_task_age_s"] < 5
    assert hosts[here]["stale"] is False
    assert hosts[here]["queue_due"] == 1
    assert 55 <= hosts[here]["queue_oldest_due_age_s"] <= 70
    # and the silent host is flagged stale, by its last task rather than its heartbeat
    assert hosts["worker-2"]["stale"] is True
    assert 595 <= hosts["worker-2"]["last_task_age_s"] <= 610
    assert cluster["stale_hosts"] == ["ccm@worker-2"]


def test_a_stale_host_is_red_on_the_dashboard_and_hosts_stay_listed_when_unhealthy(
    db, client, ops, settings
):
    from datetime import timedelta

    from django.utils import timezone

    from ccm.models import ClusterHeartbeat

    ClusterHeartbeat.objects.create(
        cluster="ccm", host="worker-9", beat_at=timezone.now() - timedelta(minutes=30)
    )
    # /healthz is 503 (no fresh heartbeat at all) and still lists the host
    response = client.get("/healthz")
    assert response.status_code == 503
    [beat] = response.json()["checks"]["cluster"]["heartbeats"]
    assert (beat["host"], beat["stale"]) == ("worker-9", True)
    # and the dashboard flags it
    client.force_login(ops)
    page = client.get("/ops/").content.decode()
    assert 'ccm on worker-9 <strong class="red">stale</strong>' in page


def test_a_host_silent_for_a_day_is_forgotten(db, settings):
    from datetime import timedelta

    from django.utils import timezone

    from ccm.models import ClusterHeartbeat
    from ccm.tasks import cluster_heartbeat

    settings.CCM_HEALTH_HOST_FORGET_AFTER_S = 86400
    ClusterHeartbeat.objects.create(
        cluster="ccm", host="retired", beat_at=timezone.now() - timedelta(days=2)
    )
    cluster_heartbeat()
    assert not ClusterHeartbeat.objects.filter(host="retired").exists()
