from __future__ import annotations

import uuid

from django.core.management.base import BaseCommand, CommandError

from notifications.models import Communication
from notifications.pipeline import history


class Command(BaseCommand):
    help = (
        "Prove one communication's history against the audit chain: every step matches its "
        "hash, and the chained events that seal the steps (Merkle roots) are intact."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "communication_id", help="the communication's id in the API (a UUID) or its number"
        )

    def handle(self, *args, communication_id: str, **options) -> None:
        lookup: dict[str, object] | None = (
            {"pk": communication_id} if communication_id.isdigit() else None
        )
        if lookup is None:
            try:
                lookup = {"public_id": uuid.UUID(communication_id)}
            except ValueError:
                raise CommandError(f"{communication_id!r} is not a communication id") from None
        pk = Communication.objects.filter(**lookup).values_list("pk", flat=True).first()
        if pk is None:
            raise CommandError(f"There is no communication {communication_id}.")
        proof = history.communication_verify(pk)
        if not proof.ok:
            raise CommandError(
                f"communication {communication_id}: history NOT proved: {proof.reason}",
                returncode=1,
            )
        seals = ", ".join(f"#{pk}" for pk in proof.seals) or "none yet"
        self.stdout.write(
            f"communication {communication_id}: {proof.steps} steps proved "
            f"(audit events {seals}; {proof.unsealed} not sealed yet)"
        )
