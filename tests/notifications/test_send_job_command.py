"""`manage.py send_job`: a CSV file sent as one job from the command line."""

from __future__ import annotations

import pytest
from django.core import mail
from django.core.management import CommandError, call_command

from notifications.customers import services as customer_services
from notifications.models import Communication, JobState, SendJob

HEADER = "customer_ref,customer.name,balance,as_of\n"


@pytest.fixture
def customers(db, admin_user):
    for i in range(3):
        customer_services.customer_upsert(
            external_ref=f"C-{i}", name=f"Customer {i}", emails=[f"c{i}@example.org"], by=admin_user
        )


def write(tmp_path, text: str):
    path = tmp_path / "rows.csv"
    path.write_text(text)
    return path


def test_good_file_is_sent_and_prints_the_job(letter, customers, tmp_path, capsys, sync_tasks):
    path = write(tmp_path, HEADER + "C-0,Ada,12.50,2026-05-01\nC-1,Bob,3,2026-05-01\n")
    sync_tasks(call_command, "send_job", str(path), "--template", "letter")
    out = capsys.readouterr().out
    job = SendJob.objects.get()
    assert f"job {job.pk}: 2 rows, 2 good, 0 bad" in out
    job.refresh_from_db()
    assert job.source == "command"
    assert {c.data["balance"] for c in Communication.objects.all()} == {12.5, 3}
    assert {c.data["customer"]["name"] for c in Communication.objects.all()} == {"Ada", "Bob"}
    assert len(mail.outbox) == 2


def test_bad_rows_are_printed_and_nothing_is_sent(letter, customers, tmp_path, capsys):
    path = write(
        tmp_path, HEADER + "C-0,Ada,12.50,2026-05-01\nC-9,Eve,1,2026-05-01\nC-1,,abc,2026-05-01\n"
    )
    with pytest.raises(CommandError) as raised:
        call_command("send_job", str(path), "--template", "letter")
    assert raised.value.returncode == 2
    err = capsys.readouterr().err
    assert "row 3: customer: There is no customer 'C-9'." in err
    assert "row 4: data.balance: 'abc' is not a number" in err
    assert not SendJob.objects.exists()
    assert not Communication.objects.exists()


def test_skip_bad_sends_the_good_rows(letter, customers, tmp_path, capsys, sync_tasks):
    path = write(tmp_path, HEADER + "C-0,Ada,12.50,2026-05-01\nC-1,Bob,x,2026-05-01\n")
    sync_tasks(call_command, "send_job", str(path), "--template", "letter", "--skip-bad")
    assert Communication.objects.count() == 1
    assert SendJob.objects.get().refused == 1


def test_dry_run_creates_nothing(letter, customers, tmp_path, capsys):
    path = write(tmp_path, HEADER + "C-0,Ada,12.50,2026-05-01\n")
    call_command("send_job", str(path), "--template", "letter", "--dry-run")
    assert "checked rows.csv: 1 rows, 1 good, 0 bad" in capsys.readouterr().out
    assert not SendJob.objects.exists()
    assert not Communication.objects.exists()


def test_at_schedules_the_job(letter, customers, tmp_path, capsys):
    path = write(tmp_path, HEADER + "C-0,Ada,12.50,2026-05-01\n")
    call_command("send_job", str(path), "--template", "letter", "--at", "2099-01-01T09:00+00:00")
    job = SendJob.objects.get()
    assert job.state == JobState.SCHEDULED
    assert job.send_at.year == 2099
    assert not Communication.objects.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--template", "nope"], "does not exist or has no published version"),
        (["--template", "letter", "--at", "tomorrow"], "not an ISO 8601 time"),
        (["--template", "letter", "--at", "2099-01-01T09:00"], "needs an offset"),
    ],
)
def test_bad_arguments_say_what_to_fix(letter, tmp_path, args, message):
    path = write(tmp_path, HEADER + "C-0,Ada,12.50,2026-05-01\n")
    with pytest.raises(CommandError, match=message):
        call_command("send_job", str(path), *args)


def test_a_file_without_the_customer_column_is_refused(letter, tmp_path):
    path = write(tmp_path, "name,balance\nAda,1\n")
    with pytest.raises(CommandError, match="customer_ref"):
        call_command("send_job", str(path), "--template", "letter")
