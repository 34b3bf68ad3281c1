"""The contract every channel backend keeps.

A backend sends one delivery with its stable dedupe key (the Message-ID for email, metadata
`delivery_id` where the provider keeps metadata) and classifies failures: transient ones (429,
5xx, timeouts) are retried with backoff, permanent ones fail the delivery with the provider's
reason, and the fallback chain moves on. `lookup` answers "did the provider already accept this
delivery?" before a send whose outcome is unknown is repeated.
"""

from __future__ import annotations

from typing import Protocol

from notifications.models import Delivery


class SendError(Exception):
    pass


class TransientSendError(SendError):
    """Worth retrying. `maybe_sent`: the provider may have accepted it (e.g. a timeout)."""

    def __init__(self, message: str, *, maybe_sent: bool = False):
        super().__init__(message)
        self.maybe_sent = maybe_sent


class PermanentSendError(SendError):
    pass


class ChannelBackend(Protocol):
    def send(self, delivery: Delivery) -> str:
        """Hand the delivery to the provider; return the provider's message id."""
        ...

    def lookup(self, delivery: Delivery) -> str | None:
        """The provider's message id if it already accepted this delivery, else None."""
        ...


class NoBackend:
    """A channel with no backend configured: every send fails permanently, saying so."""

    def __init__(self, channel: str):
        self.channel = channel

    def send(self, delivery: Delivery) -> str:
        raise PermanentSendError(f"no backend is configured for the {self.channel} channel")

    def lookup(self, delivery: Delivery) -> str | None:
        return None
