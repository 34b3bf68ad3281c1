from __future__ import annotations

from documents import services
from documents.models import VersionState
from tests.documents.factories import letter_bundle


def test_reviewer_sees_proofs_and_diff_then_approves(draft, author, reviewer, client):
    approval = services.template_version_submit(version=draft, by=author)
    client.force_login(reviewer)
    queue = client.get("/admin/ccm/approval/").content.decode()
    assert f"/admin/documents/templateversion/{draft.pk}/review/" in queue
    page = client.get(f"/admin/documents/templateversion/{draft.pk}/review/").content.decode()
    assert "Record decision" in page
    assert "Your balance, Ada Lovelace" in page  # the email proof's subject
    assert "print.html" in page  # the source diff
    proof = client.get(f"/admin/documents/templateversion/{draft.pk}/proof.pdf")
    assert proof["Content-Type"] == "application/pdf"
    response = client.post(
        f"/admin/documents/templateversion/{draft.pk}/review/", {"decision": "approve"}
    )
    assert response.status_code == 302
    approval.refresh_from_db()
    draft.refresh_from_db()
    assert (approval.state, draft.state) == ("approved", VersionState.APPROVED)


def test_review_shows_the_live_version_side_by_side(published, author, template, client, reviewer):
    v2 = services.template_version_create(
        template=template, bundle=letter_bundle(heading="Hello"), by=author
    )
    client.force_login(reviewer)
    page = client.get(f"/admin/documents/templateversion/{v2.pk}/review/").content.decode()
    assert f"/admin/documents/templateversion/{published.pk}/proof.pdf" in page
    assert "+<h1>Hello {{ customer.name }}</h1>" in page.replace("&lt;", "<").replace("&gt;", ">")


def test_author_is_refused_on_screen(draft, author, client):
    services.template_version_submit(version=draft, by=author)
    author.is_superuser = True  # even with every permission
    author.save()
    client.force_login(author)
    page = client.get(f"/admin/documents/templateversion/{draft.pk}/review/").content.decode()
    assert "four-eyes rule forbids deciding your own submission" in page
    response = client.post(
        f"/admin/documents/templateversion/{draft.pk}/review/", {"decision": "approve"}, follow=True
    )
    assert "Four-eyes rule" in response.content.decode()
    draft.refresh_from_db()
    assert draft.state == VersionState.IN_REVIEW


def test_reject_needs_a_comment(draft, author, reviewer, client):
    services.template_version_submit(version=draft, by=author)
    client.force_login(reviewer)
    page = client.post(
        f"/admin/documents/templateversion/{draft.pk}/review/", {"decision": "reject"}
    ).content.decode()
    assert "Say why" in page
    draft.refresh_from_db()
    assert draft.state == VersionState.IN_REVIEW
