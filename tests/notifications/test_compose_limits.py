"""The pipeline composes each chunk in the render worker: a message that exceeds the limits
fails alone, with the reason, and the rest of its chunk goes out."""

from __future__ import annotations

from documents.bundle import read_folder
from documents.demo import LIBRARY
from notifications.customers import services as customer_services
from notifications.models import Communication
from notifications.pipeline import intake
from tests.documents.test_composition_limits import SLOW
from tests.notifications.conftest import publish
from tests.timing import within


def test_a_slow_message_fails_alone_in_a_pipeline_chunk(
    author, reviewer, integrator, sync_tasks, settings
):
    settings.CCM_COMPOSE_TIMEOUT_S = 1
    # given a template whose email is slow for one customer only
    bundle = read_folder(LIBRARY / "document_ready")
    bundle.files["email.txt"] = (
        "{% if customer.name == 'Customer 1' %}" + SLOW + "{% endif %}" + bundle.files["email.txt"]
    )
    publish(bundle, author=author, reviewer=reviewer)
    customers = [
        customer_services.customer_upsert(
            external_ref=f"B-{i}", name=f"Customer {i}", emails=[f"c{i}@example.org"], by=author
        )[0]
        for i in range(3)
    ]
    items = [
        {
            "customer": c,
            "data": {
                "customer": {"name": f"Customer {i}"},
                "reference": f"DOC-{i:05d}",
                "document_title": "Your annual statement",
                "document_date": "2026-04-12",
                "portal_url": f"https://portal.example/documents/DOC-{i:05d}",
            },
        }
        for i, c in enumerate(customers)
    ]
    # when the chunk is composed and sent
    with within(60):
        ids = sync_tasks(
            intake.communications_request_bulk,
            template_code="document_ready",
            items=items,
            client="campaign",
            by=integrator,
        )
    # then the slow one failed with the reason and the others went out
    states = {c.pk: (c.state, c.failure_reason) for c in Communication.objects.all()}
    assert states[ids[1]] == (
        "compose_failed",
        "composition exceeded 1 s, the time limit for one rendition",
    )
    assert states[ids[0]][0] == states[ids[2]][0] == "sent"
