from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from ccm.api.auth import api_key_create
from ccm.roles import Role
from documents.bundle import read_folder
from documents.demo import LIBRARY
from notifications.channels.gmail import DEFAULT_SENDER_PROFILE
from notifications.models import Communication
from notifications.pipeline import services, tasks
from tests.documents.factories import letter_bundle
from tests.notifications import conftest as notifications_fixtures
from tests.notifications.conftest import publish

# The notifications suite's fixtures, shared.
customer = notifications_fixtures.customer
integrator = notifications_fixtures.integrator
letter = notifications_fixtures.letter
sync_tasks = notifications_fixtures.sync_tasks

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
    settings.CCM_SENDER_PROFILE = DEFAULT_SENDER_PROFILE
    settings.CCM_GMAIL_EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.GMAIL_DELEGATED_USER = ALERT_MAILBOX
    settings.GMAIL_SERVICE_ACCOUNT_FILE = None
    settings.CASES_ALERT_RECIPIENTS = {}


@pytest.fixture(autouse=True)
def _email_only(settings):
    # The cases tests make customers unreachable by suppressing their email address; with SMS
    # or print enabled the fallback chain would reach them another way (tests/notifications
    # covers that). Tests about letters enable print themselves.
    settings.CCM_ENABLED_CHANNELS = ["email"]


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
        name = "key-" + "-".join(scope.replace(":", "_") for scope in scopes)
        # The CRM's key: it sees the cases and communications of the default source system,
        # whoever opened them (tests/cases/test_api.py shows a key without the grant does not).
        issued = api_key_create(name=name, scopes=list(scopes), source_systems=["default"])
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")
        return client

    return make


DATA = {"customer": {"name": "Ada Lovelace"}, "balance": 12.5, "as_of": "2026-05-01"}


def stricter_letter():
    """Version 2 of the test letter: it also needs the customer's account number."""
    bundle = letter_bundle()
    bundle.schema["required"].append("account")
    bundle.schema["properties"]["account"] = {"type": "string", "minLength": 1}
    bundle.samples["default"]["account"] = "ACC-1"
    return bundle


def request(customer, by) -> Communication:
    communication, _ = services.communication_request(
        template_code="letter", customer=customer, data=DATA, client="t", by=by
    )
    return communication


@pytest.fixture
def compose_failed(
    letter, customer, integrator, author, reviewer, ops, sync_tasks
) -> Communication:
    """A letter accepted against version 1, composed after version 2 (which also needs an
    account number) was published: composition fails on the missing field."""
    communication = request(customer, integrator)
    publish(stricter_letter(), author=author, reviewer=reviewer)
    sync_tasks(tasks.communication_compose, communication.pk)
    communication.refresh_from_db()
    assert communication.state == "compose_failed"
    return communication


from tests.cases.incident_fixtures import events_api, outage_templates, run_tasks  # noqa: E402, F401
