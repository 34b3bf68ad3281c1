"""What the chunked stages of the pipeline share: the chunk size, a chunk's task, telling the
higher layers that communications moved, and "does this template need a PDF?".

The stages, each in its own module and each safe to run twice: `intake` (validate,
idempotency, materialise), `compose` (render, choose channels), `gate` (the release gate),
`dispatch` (send, record, reconcile). docs/pipeline.md explains them."""

from __future__ import annotations

from contextvars import ContextVar

from django.conf import settings

from ccm.tasks import Queue, enqueue
from documents.models import TemplateVersion
from notifications import signals
from notifications.models import (
    Communication,
)


def chunk_size() -> int:
    return max(1, settings.CCM_BULK_CHUNK)


def render_chunk_size() -> int:
    """Communications a compose task on the render queue takes: fewer than a text chunk, so a
    batch's PDFs (a quarter of a second each) are shared by every render worker instead of one
    worker rendering a whole chunk while the others wait."""
    return max(1, min(settings.CCM_RENDER_CHUNK, chunk_size()))


def ids_enqueue(task: str, ids: list[int], queue: Queue | None = None) -> None:
    # One task carries one chunk of ids (a list argument; `enqueue` only types single ids).
    enqueue(task, ids, queue=queue)


def needs_pdf(version: TemplateVersion) -> bool:
    """A PDF is archived for a template that prints or attaches its letter to the email."""
    meta = version.meta
    return "print" in meta.get("channels", []) or meta.get("delivery", "attach") == "attach"


# Set by `compose_chunk(…, dispatch_now=True)`: the deliveries `dispatch_start` makes are
# collected here, for the same task to send after its commit, instead of each chunk of them
# becoming a `dispatch_chunk` task of its own.
dispatch_here: ContextVar[list[int] | None] = ContextVar("ccm_dispatch_here", default=None)


def signal_send(signal, comm_id: int) -> None:
    """Tell the higher layers, with the communication as it now is (receivers look at its
    state and reason)."""
    communication = Communication.objects.get(pk=comm_id)
    signal.send(
        sender=Communication, communication=communication, reason=communication.failure_reason
    )


def moves_announce(ids: list[int], target: str) -> None:
    if ids:
        signals.communications_transitioned.send(sender=Communication, ids=ids, target=target)


def targets_of(communication: Communication) -> list[dict]:
    """The channels and addresses chosen at composition (from its decision trace)."""
    return [t for t in communication.decision_trace if t.get("decision") == "chosen"]
