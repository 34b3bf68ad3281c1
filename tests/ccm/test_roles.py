from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from ccm.api.auth import SCOPES
from ccm.roles import ROLE_PERMISSIONS, ROLE_SCOPES, Role

README = Path(__file__).resolve().parents[2] / "README.md"
# A communication that does not exist (fixed: the cases' ids must be the same in every
# process that collects them, for xdist).
NO_SUCH_ID = uuid.UUID("6f1c2a9e-0000-4000-8000-000000000001")


def test_every_role_exists_as_a_group(db):
    assert set(Group.objects.values_list("name", flat=True)) >= set(Role.values)


# The kernel permissions each role must (True) or must not (False) hold.
MATRIX = {
    Role.COMPLIANCE_REVIEWER: {"ccm.decide_approval": True, "ccm.view_auditevent": True},
    Role.TEMPLATE_AUTHOR: {"ccm.decide_approval": False, "ccm.view_approval": True},
    Role.SERVICE_AGENT: {"ccm.decide_approval": False, "ccm.view_auditevent": False},
    Role.OPERATIONS: {"ccm.decide_approval": False, "ccm.view_auditevent": True},
    Role.INTEGRATOR: {"ccm.decide_approval": False, "ccm.manage_api_keys": False},
}


@pytest.mark.parametrize(
    ("role", "perm", "allowed"),
    [(role, perm, allowed) for role, perms in MATRIX.items() for perm, allowed in perms.items()],
)
def test_permission_matrix(make_user, role, perm, allowed):
    user = make_user(f"u-{role}", role)
    assert user.has_perm(perm) is allowed


def test_group_permissions_match_the_declared_roles(db):
    from django.contrib.auth.models import Permission

    for role, perms in ROLE_PERMISSIONS.items():
        granted = {
            f"{p.content_type.app_label}.{p.codename}"
            for p in Group.objects.get(name=role).permissions.select_related("content_type")
        }
        existing = {
            dotted
            for dotted in perms
            if Permission.objects.filter(
                content_type__app_label=dotted.split(".")[0], codename=dotted.split(".")[1]
            ).exists()
        }
        assert granted == existing


def test_readme_table_names_every_role():
    text = README.read_text()
    for role in Role.values:
        assert f"`{role}`" in text


# --- the API scopes of a staff session ----------------------------------------------------------


def _readme_role_scopes() -> dict[str, set[str]]:
    """The README's role table: group -> the scopes in its "API scopes of a session" column."""
    lines = README.read_text().split("## Roles: who may do what", 1)[1].splitlines()
    table = [line for line in lines[1:20] if line.startswith("|")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    group_at, scopes_at = header.index("group"), header.index("API scopes of a session")
    found = {}
    for row in table[2:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        found[cells[group_at].strip("`")] = set(re.findall(r"`([a-z:]+)`", cells[scopes_at]))
    return found


def test_the_readme_role_table_lists_each_roles_session_scopes():
    assert _readme_role_scopes() == {role: set(scopes) for role, scopes in ROLE_SCOPES.items()}


def test_role_scopes_are_known_scopes():
    assert {scope for scopes in ROLE_SCOPES.values() for scope in scopes} <= set(SCOPES)


@pytest.mark.parametrize(
    ("role", "method", "url", "body"),
    [
        (Role.TEMPLATE_AUTHOR, "post", "/api/v1/customers", {"external_ref": "X-1", "name": "X"}),
        (Role.TEMPLATE_AUTHOR, "post", f"/api/v1/communications/{NO_SUCH_ID}/cancel", {}),
        (Role.SERVICE_AGENT, "post", "/api/v1/webhooks", {"url": "https://hooks.example/"}),
        (Role.SERVICE_AGENT, "get", "/api/v1/webhooks", None),
        (Role.COMPLIANCE_REVIEWER, "post", "/api/v1/customers", {"external_ref": "X", "name": "X"}),
    ],
)
def test_a_session_gets_only_its_roles_scopes(make_user, role, method, url, body):
    user = make_user(f"u-{role}", role)
    client = APIClient()
    client.force_login(user)
    response = getattr(client, method)(url, body, format="json")
    assert response.status_code == 403
    assert "Your role lacks the scope" in response.json()["detail"]


def test_me_shows_the_session_scopes_of_the_role(make_user):
    client = APIClient()
    client.force_login(make_user("alex", Role.TEMPLATE_AUTHOR))
    body = client.get("/api/v1/me").json()
    assert body["scopes"] == sorted(ROLE_SCOPES[Role.TEMPLATE_AUTHOR])
