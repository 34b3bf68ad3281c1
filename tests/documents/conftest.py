from __future__ import annotations

import pytest

from documents import services
from tests.documents.factories import TemplateFactory, letter_bundle


@pytest.fixture
def template(db):
    return TemplateFactory()


@pytest.fixture
def draft(template, author):
    return services.template_version_create(template=template, bundle=letter_bundle(), by=author)


@pytest.fixture
def published(draft, author, reviewer):
    from ccm import approvals

    approval = services.template_version_submit(version=draft, by=author)
    approvals.approval_decide(approval=approval, by=reviewer, decision="approve")
    draft.refresh_from_db()
    return services.template_version_publish(version=draft, by=author)
