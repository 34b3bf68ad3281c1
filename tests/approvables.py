"""The two kinds of approval a reviewer meets today, made through the real services: a template
version submitted for sign-off and a communication waiting for its release. Shared by the
server-side screen tests and the browser tests."""

from __future__ import annotations

from collections.abc import Callable

from ccm import approvals
from ccm.models import Approval
from documents import services as documents
from documents.models import TemplateVersion
from notifications.customers import services as customer_services
from notifications.models import Communication
from notifications.pipeline import services
from tests.documents.factories import TemplateFactory, letter_bundle
from tests.notifications.conftest import publish

DATA = {"customer": {"name": "Ada Lovelace"}, "balance": 5000, "as_of": "2026-05-01"}


def version_submitted(*, author, code: str = "letter") -> tuple[TemplateVersion, Approval]:
    template = TemplateFactory(code=code)
    version = documents.template_version_create(
        template=template, bundle=letter_bundle(code), by=author
    )
    approval = documents.template_version_submit(version=version, by=author)
    version.refresh_from_db()
    return version, approval


def communication_awaiting_release(
    *, author, reviewer, requester, admin, run: Callable, by_post: bool = False
) -> tuple[Communication, Approval]:
    """A letter whose template requires a release, requested by `requester` and composed by
    `run` (which must run the enqueued tasks): it waits in awaiting_approval. `by_post`: the
    customer has no email address, so the letter goes by post."""
    publish(
        letter_bundle("release-letter", release={"required": True}),
        author=author,
        reviewer=reviewer,
    )
    customer, _ = customer_services.customer_upsert(
        external_ref="C-1",
        name="Ada Lovelace",
        postal_address=["1 Analytical Row", "London N1 1AA"],
        emails=[] if by_post else ["ada@example.org"],
        by=admin,
    )
    communication, _ = run(
        services.communication_request,
        template_code="release-letter",
        customer=customer,
        data=DATA,
        client="test",
        by=requester,
    )
    communication.refresh_from_db()
    assert communication.state == "awaiting_approval", communication.failure_reason
    approval = approvals.pending_for(communication)
    assert approval is not None
    return communication, approval
