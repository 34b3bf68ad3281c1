"""Channel backends: how a delivery leaves CCM, one module per channel.

`settings.CCM_CHANNEL_BACKENDS` maps a channel to the dotted path of its backend class, the way
Django's EMAIL_BACKEND names the mail backend; a channel without one gets `NoBackend`.
"""

from __future__ import annotations

from django.conf import settings
from django.utils.module_loading import import_string

from notifications.channels.base import (
    ChannelBackend,
    NoBackend,
    PermanentSendError,
    SendError,
    TransientSendError,
)
from notifications.channels.email import EmailBackend

__all__ = [
    "ChannelBackend",
    "EmailBackend",
    "NoBackend",
    "PermanentSendError",
    "SendError",
    "TransientSendError",
    "backend_for",
]


def backend_for(channel: str) -> ChannelBackend:
    path = settings.CCM_CHANNEL_BACKENDS.get(channel)
    if not path:
        return NoBackend(channel)
    return import_string(path)()
