"""The two services of the pipeline that channels call, handed over by the pipeline.

The pipeline sends through the channels (it picks their backends, and makes portal links while
composing), so a channel never imports it: that would be a cycle. Two channels still need it:

- the portal sends a fresh link for an expired one as a new communication, through the intake
  (`notifications.pipeline.services.communication_request`);
- tracking moves a delivery when a provider reports on it, through the one service that changes
  a delivery's state and records what that owes: the history step, and for a failure the
  integrators' webhook event, the signal and the fallback
  (`notifications.pipeline.transitions.delivery_move`).

`NotificationsConfig.ready()` registers both before any request or task runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from django.core.exceptions import ImproperlyConfigured

from notifications.models import Communication, Customer, Delivery


class CommunicationRequest(Protocol):
    def __call__(
        self,
        *,
        template_code: str,
        customer: Customer,
        data: Mapping,
        client: str,
        by,
        source: str = ...,
        parent: Communication | None = ...,
        document=...,
    ) -> tuple[Communication, bool]: ...


class DeliveryMove(Protocol):
    def __call__(
        self,
        *,
        delivery: Delivery,
        target: str,
        values: Mapping[str, Any] | None = ...,
        action: str = ...,
        detail: Mapping[str, Any] | None = ...,
    ) -> bool: ...


@dataclass(frozen=True)
class PipelineCalls:
    communication_request: CommunicationRequest
    delivery_move: DeliveryMove


_registered: PipelineCalls | None = None


def pipeline_calls_register(calls: PipelineCalls) -> None:
    global _registered
    _registered = calls


def pipeline_calls() -> PipelineCalls:
    if _registered is None:
        raise ImproperlyConfigured(
            "The pipeline has not handed its services to the channels: "
            "NotificationsConfig.ready() registers them (is 'notifications' installed?)."
        )
    return _registered
