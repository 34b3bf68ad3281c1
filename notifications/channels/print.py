"""Print: letters join the open print batch; the mail house prints and posts them."""

from __future__ import annotations

from notifications.channels.base import PermanentSendError, TransientSendError
from notifications.channels.printing import PrintError, print_item_add
from notifications.models import Delivery, PrintItem


class PrintBackend:
    """ "Sending" a letter is putting it into the open batch; its provider id is
    "batch-<id>/<sequence>", as printed on its cover sheet. What happens next (mailed, returned)
    arrives as the mail house's events."""

    def send(self, delivery: Delivery) -> str:
        try:
            return print_item_add(delivery=delivery).provider_id
        except PrintError as exc:
            if exc.code == "batch_busy":
                raise TransientSendError(str(exc)) from exc
            raise PermanentSendError(str(exc)) from exc

    def lookup(self, delivery: Delivery) -> str | None:
        item = PrintItem.objects.filter(delivery_id=delivery.pk).first()
        return item.provider_id if item is not None else None
