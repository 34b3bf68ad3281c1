"""The Message-ID of a delivery, which is also its dedupe key: issued when a delivery is made
(by dispatch, a fallback or a resend) and checked when a bounce or reply names one (the inbox).
Its own module, below the stages, because both the stages and the mail readers above them need
it and neither owns it."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.utils.crypto import salted_hmac

from notifications.models import Communication


def delivery_message_id(communication: Communication, index: int | str, channel: str) -> str:
    """The stable dedupe key of the communication's `index`-th delivery (0-based; a resend
    passes "r<n>"), which is also the Message-ID of its mail.

    The delivery is named by (communication, index, channel) and sealed with an HMAC of that
    name: a bounce report can only name a delivery whose Message-ID it has seen, never one
    guessed from the counter (`message_id_issued`)."""
    name = f"ccm.{communication.pk}.{index}.{channel}"
    return f"<{name}.{_message_id_seal(name)}@{settings.CCM_MESSAGE_ID_DOMAIN}>"


def message_id_issued(message_id: str) -> bool:
    """Whether CCM issued this Message-ID for a delivery (its seal verifies)."""
    local = message_id.strip().removeprefix("<").removesuffix(">").rpartition("@")[0]
    name, _, seal = local.rpartition(".")
    return name.startswith("ccm.") and hmac.compare_digest(seal, _message_id_seal(name))


def _message_id_seal(name: str) -> str:
    # 96 bits: the Message-ID stays short enough for every MTA, and cannot be guessed.
    key = settings.CCM_MESSAGE_ID_KEY or settings.SECRET_KEY
    return salted_hmac("ccm.message-id", name, secret=key, algorithm="sha256").hexdigest()[:24]
