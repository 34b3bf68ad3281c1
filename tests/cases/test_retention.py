"""Retention: a document is purged (file, data snapshots) when its category's period is over,
never before and never while a legal hold on its customer or case stands; each purge is
recorded. The clock is frozen at chosen ages."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command
from freezegun import freeze_time

from cases import retention, services
from cases.models import DocumentPurge
from ccm.models import AuditEvent
from ccm.tasks import SCHEDULES
from documents.models import Template
from tests.cases import reprint_fixtures
from tests.cases.conftest import COMPLAINT_DETAILS

original = reprint_fixtures.original


@pytest.fixture
def days(settings):
    settings.CCM_RETENTION_DAYS = {
        "regulatory": 2555,
        "transactional": 2555,
        "service": 730,
        "marketing": 365,
    }
    return settings.CCM_RETENTION_DAYS


def at_age(document, days: int):
    return freeze_time(document.created_at + timedelta(days=days, hours=1))


def purge(capture, **kwargs):
    with capture(execute=True):
        return retention.retention_purge_run(**kwargs)


def test_an_expired_document_loses_its_file_and_data_and_the_purge_is_recorded(
    original, days, django_capture_on_commit_callbacks
):
    document = original.document
    name = document.file.name
    assert default_storage.exists(name)
    # when the purge runs after the transactional period, first as a dry run
    with at_age(document, 2556):
        listed = purge(django_capture_on_commit_callbacks, dry_run=True)
        assert [p.document for p in listed] == [document.pk]
        assert default_storage.exists(name)
        assert not DocumentPurge.objects.exists()
        purged = purge(django_capture_on_commit_callbacks)
    # then the file is gone, and so is the personal data it was rendered from
    assert [p.document for p in purged] == [document.pk]
    assert not default_storage.exists(name)
    document.refresh_from_db()
    original.refresh_from_db()
    assert (document.file.name, document.data, original.data) == ("", {}, {})
    # the row stays with its hash, and the purge says what went and under which rule
    record = DocumentPurge.objects.get(document=document)
    assert (record.category, record.retention_days, record.sha256, record.file_name) == (
        "transactional",
        2555,
        document.sha256,
        name,
    )
    event = AuditEvent.objects.get(action="document.purged")
    assert event.after["sha256"] == document.sha256
    assert event.after["file"] == name
    # and a second run finds nothing more to do
    with at_age(document, 2557):
        assert purge(django_capture_on_commit_callbacks) == []


def test_nothing_is_purged_before_its_categorys_time(
    original, days, django_capture_on_commit_callbacks
):
    document = original.document
    # a transactional (regulated) letter at 7 years less a day stays
    with at_age(document, 2554):
        assert purge(django_capture_on_commit_callbacks) == []
    # the same age is long enough for marketing, a year is not yet
    Template.objects.filter(pk=document.template_version.template_id).update(category="marketing")
    with at_age(document, 364):
        assert purge(django_capture_on_commit_callbacks) == []
    with at_age(document, 366):
        assert [p.document for p in purge(django_capture_on_commit_callbacks)] == [document.pk]


def test_a_legal_hold_on_the_customer_stops_the_purge_until_released(
    original, customer, days, admin_user, django_capture_on_commit_callbacks
):
    document = original.document
    hold = retention.legal_hold_place(customer=customer, reason="Ombudsman case 7", by=admin_user)
    with at_age(document, 3000):
        assert purge(django_capture_on_commit_callbacks) == []
        assert default_storage.exists(document.file.name)
        retention.legal_hold_release(hold=hold, by=admin_user)
        assert len(purge(django_capture_on_commit_callbacks)) == 1
    actions = list(
        AuditEvent.objects.filter(action__startswith="legal_hold").values_list("action", flat=True)
    )
    assert actions == ["legal_hold.placed", "legal_hold.released"]


def test_a_legal_hold_on_a_case_holds_the_documents_linked_to_it(
    original, customer, agent, days, admin_user, django_capture_on_commit_callbacks
):
    document = original.document
    case = services.case_open(
        case_type="complaint",
        subject="Disputed bill",
        customer=customer,
        details=COMPLAINT_DETAILS,
        assignee=agent,
        by=agent,
    )
    services.case_link_document(case=case, document=document, by=agent)
    retention.legal_hold_place(case=case, reason="Litigation hold", by=admin_user)
    with at_age(document, 3000):
        assert purge(django_capture_on_commit_callbacks) == []


def test_a_hold_names_one_customer_or_one_case_and_a_reason(customer, admin_user):
    with pytest.raises(retention.RetentionError):
        retention.legal_hold_place(reason="x", by=admin_user)
    with pytest.raises(retention.RetentionError):
        retention.legal_hold_place(customer=customer, reason=" ", by=admin_user)


def test_the_command_dry_run_lists_and_the_purge_is_scheduled_daily(original, days, capsys):
    with at_age(original.document, 2556):
        call_command("retention_purge", "--dry-run")
    out = capsys.readouterr().out
    assert f"would purge document {original.document.pk} (transactional" in out
    assert "1 documents would be purged." in out
    assert not DocumentPurge.objects.exists()
    assert SCHEDULES["cases.retention_purge"] == ("cases.tasks.retention_purge", 24 * 60)
