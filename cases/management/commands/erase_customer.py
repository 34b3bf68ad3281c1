from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from cases import erasure
from cases.models import ErasureState
from notifications.models import Customer


class Command(BaseCommand):
    help = (
        "Erase a customer's personal data (right to erasure): refused while a legal hold "
        "stands, deferred while communications kept by law (CCM_ERASURE_KEEPS) are within "
        "their retention, otherwise done now; audited either way. Exit 0 when done, 3 when "
        "deferred, 4 when refused."
    )

    def add_arguments(self, parser):
        parser.add_argument("ref", help="The customer's reference (external_ref)")
        parser.add_argument("--source-system", default="default")
        parser.add_argument("--grounds", required=True, help="The request: who asked, how and when")

    def handle(self, *args, ref: str, source_system: str, grounds: str, **options):
        customer = Customer.objects.filter(external_ref=ref, source_system=source_system).first()
        if customer is None:
            raise CommandError(f"There is no customer {ref!r} in source system {source_system!r}.")
        try:
            done = erasure.customer_erase(customer=customer, by=None, grounds=grounds)
        except erasure.ErasureError as exc:
            raise CommandError(str(exc)) from exc
        if done.state == ErasureState.DONE:
            counts = ", ".join(f"{kind} {n}" for kind, n in done.erased.items() if n)
            self.stdout.write(f"Erasure {done.pk}: customer {customer.pk} erased ({counts}).")
            return
        self.stderr.write(f"Erasure {done.pk} {done.state}: {done.reason}")
        raise SystemExit(3 if done.state == ErasureState.DEFERRED else 4)
