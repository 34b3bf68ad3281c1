"""What the reprint, correspondence and intake tests share: a letter that reached the customer,
a sensitive template, a reviewer who reads mail, PDF text."""

from __future__ import annotations

import io

import pypdf
import pytest

from ccm.roles import Role
from notifications.models import Communication
from notifications.pipeline import tasks
from tests.cases.conftest import request
from tests.documents.factories import letter_bundle
from tests.notifications.conftest import publish


def pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(data)).pages)


def sent(customer, by, run) -> Communication:
    """A balance letter composed, archived and emailed to the customer."""
    communication = request(customer, by)
    run(tasks.communication_compose, communication.pk)
    communication.refresh_from_db()
    assert communication.state == "sent"
    assert communication.document is not None
    return communication


@pytest.fixture
def original(letter, customer, integrator, sync_tasks) -> Communication:
    return sent(customer, integrator, sync_tasks)


@pytest.fixture
def sensitive(author, reviewer):
    """A sensitive template (template.json "sensitive": true) with the same schema."""
    return publish(letter_bundle("secret", sensitive=True), author=author, reviewer=reviewer)


@pytest.fixture
def rita(make_user):
    """A compliance reviewer with a mailbox (the approval mails go to her)."""
    return make_user("rita-mail", Role.COMPLIANCE_REVIEWER, email="Rita@Northwind.example")
