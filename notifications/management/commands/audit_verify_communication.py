from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from notifications import history


class Command(BaseCommand):
    help = (
        "Prove one communication's history against the audit chain: every step matches its "
        "hash, and the chained events that seal the steps (Merkle roots) are intact."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("communication_id", type=int)

    def handle(self, *args, communication_id: int, **options) -> None:
        proof = history.communication_verify(communication_id)
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
