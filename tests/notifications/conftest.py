from __future__ import annotations

import pytest
from django.core import mail
from django_q.conf import Conf
from django_q.models import Task

from ccm import approvals
from documents import services as documents
from notifications import services
from notifications.channels import sms
from tests.documents.factories import TemplateFactory, letter_bundle


@pytest.fixture
def sync_tasks(monkeypatch, django_capture_on_commit_callbacks):
    """Run enqueued tasks at once, in this process, as their transactions commit."""
    monkeypatch.setattr(Conf, "SYNC", True)

    def run(fn, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            result = fn(*args, **kwargs)
        # django-q records a failing task instead of raising: surface it here.
        failed = list(Task.objects.filter(success=False).values_list("func", "result"))
        assert failed == [], failed
        return result

    return run


def publish(bundle, *, author, reviewer):
    template = TemplateFactory(code=bundle.meta["code"], category=bundle.meta["category"])
    version = documents.template_version_create(template=template, bundle=bundle, by=author)
    approval = documents.template_version_submit(version=version, by=author)
    approvals.approval_decide(approval=approval, by=reviewer, decision="approve")
    version.refresh_from_db()
    return documents.template_version_publish(version=version, by=author)


@pytest.fixture
def letter(author, reviewer):
    return publish(letter_bundle(), author=author, reviewer=reviewer)


@pytest.fixture
def customer(db, admin_user):
    customer, _ = services.customer_upsert(
        external_ref="C-1",
        name="Ada Lovelace",
        postal_address=["1 Analytical Row", "London N1 1AA"],
        emails=["ada@example.org"],
        phones=["07911 123456"],
        by=admin_user,
    )
    return customer


@pytest.fixture
def integrator(make_user):
    return make_user("core-banking", "integrator")


@pytest.fixture(autouse=True)
def _empty_outbox():
    mail.outbox = []
    sms.outbox.clear()
