"""Demo data for `make run`: users for every role, and what each app registers.

Never for production: `seed_demo` refuses to run with DEBUG off.
"""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from ccm.roles import Role

DEMO_PASSWORD = "ccm-demo"  # noqa: S105 - demo data only; seed_demo refuses production

DEMO_USERS: list[tuple[str, str | None, str]] = [
    ("admin", None, "Administrator (superuser)"),
    ("reviewer", Role.COMPLIANCE_REVIEWER, "Compliance reviewer"),
    ("reviewer2", Role.COMPLIANCE_REVIEWER, "Second compliance reviewer"),
    ("author", Role.TEMPLATE_AUTHOR, "Template author"),
    ("agent", Role.SERVICE_AGENT, "Service agent"),
    ("ops", Role.OPERATIONS, "Operations"),
    ("integrator", Role.INTEGRATOR, "Integrator (API only: keys via create_api_key)"),
]

# Apps add their demo data here (in AppConfig.ready()); each seeder must be idempotent.
_seeders: list[Callable[[], None]] = []


def register_seeder(seeder: Callable[[], None]) -> None:
    if seeder not in _seeders:
        _seeders.append(seeder)


def seed_users() -> None:
    User = get_user_model()
    for username, role, label in DEMO_USERS:
        user, created = User.objects.get_or_create(
            username=username,
            defaults={"first_name": label, "email": f"{username}@ccm.localhost"},
        )
        if created:
            user.set_password(DEMO_PASSWORD)
        # Integrators call the API with a key; the back-office and the admin are not theirs.
        user.is_staff = role != Role.INTEGRATOR
        user.is_superuser = role is None
        user.save()
        if role:
            user.groups.add(Group.objects.get(name=role))


def seed_all() -> None:
    seed_users()
    for seeder in _seeders:
        seeder()
