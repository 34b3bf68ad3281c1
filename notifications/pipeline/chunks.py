"""What the chunked stages of the pipeline share: the chunk size, a chunk's task, telling the
higher layers that communications moved, and "does this template need a PDF?".

The stages, each in its own module and each safe to run twice: `intake` (validate,
idempotency, materialise), `compose` (render, choose channels), `gate` (the release gate),
`dispatch` (send, record, reconcile). docs/pipeline.md explains them."""

from __future__ import annotations

from contextvars import ContextVar

from django.conf import settings

from ccm.rows import chunks
from ccm.tasks import Queue, enqueue
from documents.models import TemplateVersion
from notifications import signals
from notifications.models import (
    Communication,
)


def chunk_size(*, renders_pdf: bool = False) -> int:
    """Communications (or deliveries) per chunk: `CCM_BULK_CHUNK`, or at most
    `CCM_RENDER_CHUNK` where the chunk may archive PDFs (`renders_pdf`)."""
    size = max(1, settings.CCM_BULK_CHUNK)
    return min(size, max(1, settings.CCM_RENDER_CHUNK)) if renders_pdf else size


# A batch on the render queue smaller than this is left to the drain, like a single request.
RENDER_PIECE_MIN = 10


def compose_pieces(ids: list[int], *, text_only: bool) -> list[list[int]]:
    """How a batch is split into compose tasks; none for fewer than a piece (a single request:
    the queue's drain composes a stream of those together).

    A text chunk is `CCM_BULK_CHUNK`. A batch that archives PDFs (a quarter of a second each)
    is cut into chunks of at most `CCM_RENDER_CHUNK`, and into at least as many near-equal
    pieces as the render queue has workers, so a bill run's chunk of 100 is rendered by every
    render worker at once instead of one of them working it alone; large batches keep full
    chunks (a smaller one would cost a task and a provider call more per chunk)."""
    if text_only:
        size = chunk_size()
        return [] if len(ids) < size else list(chunks(ids, size))
    size = chunk_size(renders_pdf=True)
    if len(ids) < RENDER_PIECE_MIN:
        return []
    render = settings.Q_CLUSTER.get("ALT_CLUSTERS", {}).get(Queue.RENDER, {})
    workers = max(1, render.get("workers", settings.Q_CLUSTER.get("workers", 1)))
    pieces = max(-(-len(ids) // size), min(workers, len(ids) // RENDER_PIECE_MIN))
    base, extra = divmod(len(ids), pieces)
    cut, start = [], 0
    for n in range(pieces):
        end = start + base + (n < extra)
        cut.append(ids[start:end])
        start = end
    return cut


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
