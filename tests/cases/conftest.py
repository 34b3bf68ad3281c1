from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from ccm.api.auth import api_key_create
from ccm.roles import Role
from documents.bundle import read_folder
from documents.demo import LIBRARY
from tests.notifications.conftest import (  # noqa: F401 - fixtures shared with notifications
    customer,
    integrator,
    letter,
    publish,
    sync_tasks,
)

# The library templates the cases app sends or renders.
CASE_TEMPLATES = (
    "complaint_acknowledgement",
    "complaint_interim_update",
    "complaint_final_response",
    "exception_alert",
)
ALERT_MAILBOX = "ccm-alerts@northwind.example"


@pytest.fixture(autouse=True)
def _alerts_captured(settings):
    # Internal alerts take the Gmail route of the sender profile; here its backend is locmem,
    # so they land in mail.outbox (test_alerts.py drives the real Gmail backend).
    settings.CCM_GMAIL_EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.GMAIL_DELEGATED_USER = ALERT_MAILBOX
    settings.GMAIL_SERVICE_ACCOUNT_FILE = None
    settings.CASES_ALERT_RECIPIENTS = {}


@pytest.fixture
def library(author, reviewer):
    return {
        code: publish(read_folder(LIBRARY / code), author=author, reviewer=reviewer)
        for code in CASE_TEMPLATES
    }


@pytest.fixture
def agent(make_user):
    return make_user("agnes", Role.SERVICE_AGENT, email="agnes@northwind.example")


@pytest.fixture
def ops(make_user):
    return make_user("otto", Role.OPERATIONS, email="otto@northwind.example")


COMPLAINT_DETAILS = {
    "channel": "phone",
    "product": "home_insurance",
    "account_reference": "Policy NHI-4471093",
    "summary": "You told us that your claim took too long to settle.",
}


@pytest.fixture
def api_client(db):
    def make(*scopes: str) -> APIClient:
        issued = api_key_create(name=f"key-{len(scopes)}-{'-'.join(scopes)}"[:90], scopes=list(scopes))
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")
        return client

    return make
