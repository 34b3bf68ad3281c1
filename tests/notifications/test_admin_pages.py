"""Every admin screen of every model renders on the demo data: the list, the first rows' change
pages and their history (the object's audit trail)."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.urls import reverse

from ccm.demo import seed_all
from ccm.models import AuditEvent
from documents.models import TemplateVersion
from notifications.channels import printing
from notifications.models import Communication, PrintBatch

ROWS_PER_MODEL = 2


@pytest.fixture
def demo(settings, sync_tasks, admin_user):
    settings.CCM_ENABLED_CHANNELS = ["email", "sms", "push", "print"]
    sync_tasks(seed_all)


def _admin_urls() -> list[str]:
    urls = []
    for model in admin.site._registry:
        info = (model._meta.app_label, model._meta.model_name)
        urls.append(reverse("admin:{}_{}_changelist".format(*info)))
        for pk in model._default_manager.order_by("-pk").values_list("pk", flat=True)[
            :ROWS_PER_MODEL
        ]:
            urls.append(reverse("admin:{}_{}_change".format(*info), args=[pk]))
            urls.append(reverse("admin:{}_{}_history".format(*info), args=[pk]))
    return urls


def test_every_admin_page_of_every_model_renders(client, demo, admin_user):
    client.force_login(admin_user)
    broken = {}
    urls = _admin_urls()
    for url in urls:
        response = client.get(url)
        if response.status_code != 200:
            broken[url] = response.status_code
    assert broken == {}
    assert len(urls) > 60


def test_a_communication_page_shows_its_decision_trace(client, demo, admin_user):
    communication = Communication.objects.filter(state="sent").order_by("pk").first()
    client.force_login(admin_user)

    page = client.get(reverse("admin:notifications_communication_change", args=[communication.pk]))

    assert page.status_code == 200
    assert "Channel decision trace" in page.content.decode()
    for step in communication.decision_trace:
        if step.get("reason"):
            assert str(step["reason"]) in page.content.decode()


def test_history_page_shows_the_objects_audit_trail(client, demo, admin_user):
    version = TemplateVersion.objects.filter(state="published").order_by("pk").first()
    client.force_login(admin_user)

    page = client.get(reverse("admin:documents_templateversion_history", args=[version.pk]))

    body = page.content.decode()
    assert page.status_code == 200
    events = AuditEvent.objects.filter(
        subject_type="documents.templateversion", subject_id=str(version.pk)
    )
    assert events.count() >= 3
    for event in events:
        assert event.action in body
    assert "have a change history" not in body


def test_print_batch_shows_its_letters_pages_and_downloads_as_files(client, demo, admin_user):
    batch = PrintBatch.objects.get(state="open")
    client.force_login(admin_user)
    letter_pages = sum(batch.items.values_list("pages", flat=True))

    open_page = client.get(reverse("admin:notifications_printbatch_change", args=[batch.pk]))
    assert f"{letter_pages} pages in {batch.item_count} letter" in open_page.content.decode()

    printing.print_batch_close(batch=batch, by=admin_user)
    batch.refresh_from_db()
    closed_page = client.get(reverse("admin:notifications_printbatch_change", args=[batch.pk]))
    stream = client.get(reverse("admin:notifications_printbatch_stream", args=[batch.pk]))
    manifest = client.get(reverse("admin:notifications_printbatch_manifest", args=[batch.pk]))

    assert f"{batch.page_count} pages" in closed_page.content.decode()
    assert batch.page_count > letter_pages  # the cover sheets
    assert stream["Content-Disposition"] == f'attachment; filename="{batch.reference}.pdf"'
    assert manifest["Content-Disposition"] == (
        f'attachment; filename="{batch.reference}-manifest.csv"'
    )
