from __future__ import annotations

import pytest

from ccm.roles import Role
from tests.approvables import version_submitted


def test_login_page_and_redirect(db, client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")
    page = client.get("/login/")
    assert b'<label for="id_username">Username</label>' in page.content


def test_login_with_wrong_password_shows_error(reviewer, client):
    response = client.post("/login/", {"username": "rita", "password": "wrong"})
    assert response.status_code == 200
    assert b"didn't match" in response.content


def test_home_shows_the_reviewers_queue(reviewer, client):
    client.force_login(reviewer)
    page = client.get("/").content.decode()
    assert "Compliance reviewer" in page
    assert "Sign-off queue" in page
    assert "Operations" not in page


def test_home_for_operations(ops, client):
    client.force_login(ops)
    page = client.get("/").content.decode()
    assert "Audit log" in page
    assert "Sign-off queue" not in page


@pytest.mark.parametrize("path", ["/admin/", "/admin/ccm/auditevent/", "/admin/ccm/approval/"])
def test_back_office_pages_render(admin_user, client, path):
    client.force_login(admin_user)
    response = client.get(path)
    assert response.status_code == 200
    assert b"CCM back-office" in response.content


def test_audit_log_is_read_only_in_admin(admin_user, client):
    client.force_login(admin_user)
    assert client.get("/admin/ccm/auditevent/add/").status_code == 403


def test_request_id_is_echoed(db, client):
    response = client.get("/healthz", HTTP_X_REQUEST_ID="abc-123")
    assert response["X-Request-ID"] == "abc-123"
    assert len(client.get("/healthz")["X-Request-ID"]) == 32


def test_the_demo_integrator_cannot_use_the_back_office(db, client):
    from django.contrib.auth import get_user_model

    from ccm.demo import DEMO_PASSWORD, seed_users

    # given the demo users
    seed_users()
    integrator = get_user_model().objects.get(username="integrator")
    assert not integrator.is_staff
    # when the integrator signs in and opens the admin's customer list
    assert client.login(username="integrator", password=DEMO_PASSWORD)
    response = client.get("/admin/notifications/customer/")
    # then the admin sends them to its login instead of listing customers
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    # while the staff roles keep the back-office
    assert get_user_model().objects.get(username="ops").is_staff


@pytest.mark.parametrize("role", [r.value for r in Role])
def test_every_home_link_opens_for_its_role(make_user, client, role):
    # given a user holding only this role
    user = make_user(f"only-{role}", role)
    client.force_login(user)

    # when they follow every link on their home page
    sections = client.get("/").context["sections"]
    links = [link["url"] for section in sections for link in section["links"]]

    # then none of them is refused
    refused = {url: client.get(url).status_code for url in links}
    refused = {url: status for url, status in refused.items() if status >= 400}
    assert refused == {}


def test_operations_home_does_not_offer_the_task_queue_they_cannot_open(ops, client):
    client.force_login(ops)
    assert "Task queue" not in client.get("/").content.decode()
    assert client.get("/admin/django_q/failure/").status_code == 403


def test_read_only_links_lead_only_to_pages_the_viewer_may_open(
    reviewer, author, admin_user, client
):
    # given an approval requested by the author, which links to their user record
    _version, approval = version_submitted(author=author)
    url = f"/admin/ccm/approval/{approval.pk}/change/"

    # when a reviewer (who may not open user records) looks at it, the author is named, not linked
    client.force_login(reviewer)
    page = client.get(url).content.decode()
    assert "alex" in page
    assert f"/admin/auth/user/{author.pk}/change/" not in page

    # and an administrator gets the link
    client.force_login(admin_user)
    assert f"/admin/auth/user/{author.pk}/change/" in client.get(url).content.decode()
