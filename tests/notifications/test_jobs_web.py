"""The back-office's send jobs: a CSV file checked row by row, previewed, sent now or at a
time, followed, cancelled."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from notifications.customers import services as customer_services
from notifications.jobs import services as job_services
from notifications.models import Communication, JobState, SendJob, SendJobItem

HEADER = "customer_ref,customer.name,balance,as_of\n"
GOOD = "C-0,Ada,12.50,2026-05-01\nC-1,Bob,3,2026-05-01\n"


@pytest.fixture
def customers(db, admin_user):
    for i in range(3):
        customer_services.customer_upsert(
            external_ref=f"C-{i}", name=f"Customer {i}", emails=[f"c{i}@example.org"], by=admin_user
        )


def upload(client, text: str, template: int):
    return client.post(
        "/jobs/new/",
        {"template": template, "file": SimpleUploadedFile("rows.csv", text.encode())},
    )


def test_every_bad_row_is_shown_with_its_reason_before_anything_is_sent(
    client, ops, letter, customers
):
    # given
    client.force_login(ops)
    text = HEADER + GOOD + "C-9,Eve,1,2026-05-01\nC-2,,lots,2026-05-01\n"
    # when
    response = upload(client, text, letter.template_id)
    # then
    assert response.status_code == 302
    job = SendJob.objects.get()
    page = client.get(response["Location"])
    html = page.content.decode()
    assert job.state == JobState.READY
    assert (job.total, job.refused) == (4, 2)
    assert "2 rows will not be sent" in html
    assert "There is no customer &#x27;C-9&#x27;." in html
    assert "<code>data.balance</code>: &#x27;lots&#x27; is not a number" in html
    # the first good rows as they will read
    assert "Your balance, Ada" in html
    assert "Your balance, Bob" in html
    assert "The letter (print and attached PDF) is rendered and archived" in html
    assert not Communication.objects.exists()
    assert mail.outbox == []


def test_send_now_sends_the_good_rows_and_the_progress_reaches_100(
    client, ops, letter, customers, sync_tasks
):
    client.force_login(ops)
    job_url = upload(client, HEADER + GOOD + "C-9,Eve,1,2026-05-01\n", letter.template_id)[
        "Location"
    ]
    job = SendJob.objects.get()
    # when
    sent = sync_tasks(client.post, f"/jobs/{job.pk}/send/", {"when": "now"})
    # then
    assert sent.status_code == 302
    assert len(mail.outbox) == 2
    progress = client.get(f"/jobs/{job.pk}/progress.json").json()
    assert progress["state"] == "completed"
    assert progress["percent"] == 100
    assert progress["by_state"] == {"sent": 2}
    page = client.get(job_url).content.decode()
    assert 'id="job-progress"' in page
    assert "2 of 2 done (100 %)" in page


def test_the_progress_bar_script_is_served_from_static_while_the_job_moves(
    client, ops, letter, customers
):
    client.force_login(ops)
    upload(client, HEADER + GOOD, letter.template_id)
    job = SendJob.objects.get()
    client.post(f"/jobs/{job.pk}/send/", {"when": "now"})  # the task is queued, not run
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert "/static/ccm/job_progress.js" in page
    assert "http" not in page.split("job_progress.js")[0].rsplit("src=", 1)[1]
    progress = client.get(f"/jobs/{job.pk}/progress.json").json()
    assert progress["state"] == "sending"
    assert progress["waiting"] == 2


def test_send_at_a_time_waits_until_then(client, ops, letter, customers, sync_tasks):
    client.force_login(ops)
    upload(client, HEADER + GOOD, letter.template_id)
    job = SendJob.objects.get()
    at = (timezone.localtime() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    response = client.post(f"/jobs/{job.pk}/send/", {"when": "at", "at": at})
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.state == JobState.SCHEDULED
    # not due: the periodic task leaves it
    sync_tasks(job_services.send_jobs_due_run)
    assert not Communication.objects.exists()
    # due: it is sent
    SendJob.objects.filter(pk=job.pk).update(send_at=timezone.now() - timedelta(seconds=1))
    sync_tasks(job_services.send_jobs_due_run)
    assert Communication.objects.count() == 2
    assert len(mail.outbox) == 2


@pytest.mark.parametrize(
    ("post", "message"),
    [
        ({"when": "at"}, "Give the date and time to send at."),
        ({"when": "at", "at": "2001-01-01T09:00"}, "Give a time in the future"),
        ({"when": "at", "at": "tomorrow"}, "Enter a valid date/time."),
    ],
)
def test_a_bad_send_time_is_a_form_error(client, ops, letter, customers, post, message):
    client.force_login(ops)
    upload(client, HEADER + GOOD, letter.template_id)
    job = SendJob.objects.get()
    response = client.post(f"/jobs/{job.pk}/send/", post)
    assert response.status_code == 400
    assert message in response.content.decode()
    job.refresh_from_db()
    assert job.state == JobState.READY


def test_cancel_stops_what_was_not_handed_over(client, ops, letter, customers):
    client.force_login(ops)
    upload(client, HEADER + GOOD, letter.template_id)
    job = SendJob.objects.get()
    client.post(f"/jobs/{job.pk}/send/", {"when": "now"})
    # one chunk handed over (communications received), the task not run yet
    job_services._rows_submit(job, list(SendJobItem.objects.filter(job=job)[:1]))
    # the first press asks, saying what happens; nothing is cancelled yet
    asked = client.post(f"/jobs/{job.pk}/cancel/", {"reason": "wrong tariff"})
    assert asked.status_code == 200
    assert f"Cancel job {job.pk}?" in asked.content.decode()
    assert 'name="reason" value="wrong tariff"' in asked.content.decode()
    job.refresh_from_db()
    assert job.state != JobState.CANCELLED
    assert set(Communication.objects.values_list("state", flat=True)) == {"received"}
    # the confirmed one cancels
    response = client.post(f"/jobs/{job.pk}/cancel/", {"reason": "wrong tariff", "confirm": "yes"})
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.state == JobState.CANCELLED
    assert set(Communication.objects.values_list("state", flat=True)) == {"cancelled"}
    # the task, run late, hands nothing more over
    assert job_services.send_job_run(job.pk) == 0
    assert Communication.objects.count() == 1
    assert mail.outbox == []


def test_running_the_send_task_twice_makes_each_communication_once(client, ops, letter, customers):
    client.force_login(ops)
    upload(client, HEADER + GOOD, letter.template_id)
    job = SendJob.objects.get()
    client.post(f"/jobs/{job.pk}/send/", {"when": "now"})
    assert job_services.send_job_run(job.pk) == 2
    assert job_services.send_job_run(job.pk) == 0
    assert Communication.objects.count() == 2
    keys = set(Communication.objects.values_list("idempotency_key", flat=True))
    assert keys == {f"send-job-{job.pk}-row-2", f"send-job-{job.pk}-row-3"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name,balance\nAda,1\n", "customer_ref"),
        (HEADER, "no rows"),
        ("", "empty"),
        ("customer_ref,a,a\nC-0,1,2\n", "appear twice"),
    ],
)
def test_an_unusable_file_is_a_form_error(client, ops, letter, text, message):
    client.force_login(ops)
    response = upload(client, text, letter.template_id)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert 'aria-invalid="true"' in response.content.decode()
    assert not SendJob.objects.exists()


def test_a_file_that_is_not_utf8_is_a_form_error(client, ops, letter):
    client.force_login(ops)
    response = client.post(
        "/jobs/new/",
        {
            "template": letter.template_id,
            "file": SimpleUploadedFile("rows.csv", "customer_ref\nCé\n".encode("latin-1")),
        },
    )
    assert response.status_code == 400
    assert "not UTF-8" in response.content.decode()


def test_compliance_sees_jobs_but_cannot_send(client, reviewer, ops, letter, customers):
    client.force_login(ops)
    upload(client, HEADER + GOOD, letter.template_id)
    job = SendJob.objects.get()
    client.force_login(reviewer)
    listing = client.get("/jobs/")
    assert listing.status_code == 200
    assert f'href="/jobs/{job.pk}/"' in listing.content.decode()
    assert client.get(f"/jobs/{job.pk}/").status_code == 200
    assert client.get("/jobs/new/").status_code == 403
    assert client.post(f"/jobs/{job.pk}/send/", {"when": "now"}).status_code == 403
    job.refresh_from_db()
    assert job.state == JobState.READY


def test_agents_cannot_see_jobs(client, agent):
    client.force_login(agent)
    assert client.get("/jobs/").status_code == 403


def test_operations_home_links_to_the_file_screen(client, ops):
    client.force_login(ops)
    html = client.get("/").content.decode()
    assert 'href="/jobs/new/"' in html
    assert 'href="/jobs/"' in html
