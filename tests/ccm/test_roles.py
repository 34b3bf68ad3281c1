from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import Group

from ccm.roles import ROLE_PERMISSIONS, Role

README = Path(__file__).resolve().parents[2] / "README.md"


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
