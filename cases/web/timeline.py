"""The case timeline (cases.selectors.case_timeline) in words for the case page: each entry
says what happened, who did it and, for a letter, which communication and document it was."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cases.selectors import TimelineEntry
from notifications.models import Communication


def _when(detail: Mapping, key: str, prefix: str) -> str:
    value = detail.get(key)
    return f"{prefix}{value}" if value not in (None, "") else ""


# What the case's own audit actions say; `d` is the entry's detail (the audit row's `after`).
CASE_TEXT: dict[str, Callable[[Mapping], str]] = {
    "case.opened": lambda d: "Case opened" + _when(d, "team", " for the team ").replace("_", " "),
    "case.updated": lambda d: "Case changed: " + ", ".join(f"{k} {v}" for k, v in d.items()),
    "case.assigned": lambda d: f"Assigned to {d.get('assignee') or 'nobody'}",
    "case.started": lambda d: "Work started",
    "case.waiting": lambda d: (
        "Waiting on the customer (SLA clock stopped)" + _when(d, "reason", ": ")
    ),
    "case.resumed": lambda d: (
        "Resumed: the SLA clock runs again" + _when(d, "paused_days", "; business days paused: ")
    ),
    "case.deadlines_extended": lambda d: "Deadlines moved by the time spent waiting",
    "case.resolved": lambda d: "Resolved" + _when(d, "resolution", ": "),
    "case.closed": lambda d: "Closed",
    "case.reopened": lambda d: "Reopened" + _when(d, "reason", ": "),
    "case.escalated": lambda d: (
        f"Escalated to {d.get('priority')} priority: {d.get('milestone')} is "
        f"{str(d.get('sla_status', '')).replace('_', ' ')}"
    ),
    "case.attachment_added": lambda d: "Attachment added" + _when(d, "name", ": "),
    "case.communication_linked": lambda d: (
        f"Communication {d.get('communication')} linked" + _when(d, "role", " as ")
    ),
    "case.document_linked": lambda d: f"Document {d.get('document')} linked",
    "case.exception_recurred": lambda d: (
        f"The failure happened again ({d.get('occurrences')} times)" + _when(d, "reason", ": ")
    ),
    "case.regenerate_requested": lambda d: "Regeneration with corrected data requested",
    "case.regenerate_succeeded": lambda d: "Regenerated communication sent",
    "case.regenerate_failed": lambda d: "Regeneration failed: see the communication",
    "case.resend_requested": lambda d: (
        f"Resend requested by {d.get('channel')} to {d.get('address')}"
    ),
    "case.resend_succeeded": lambda d: "Resent communication sent",
    "case.resend_failed": lambda d: "Resend failed: see the delivery",
}


def _humanised(action: str) -> str:
    words = action.split(".", 1)[-1].replace("_", " ")
    return words[:1].upper() + words[1:]


def _communication_text(entry: TimelineEntry, communication: Communication | None) -> str:
    d = entry.detail
    what = (
        f"{communication.template.name} (communication {communication.pk})"
        if communication is not None
        else f"Communication {d.get('communication')}"
    )
    verb = _humanised(entry.action).lower()
    if entry.action.startswith("delivery.") and d.get("channel"):
        verb += f" by {d['channel']}"
    extra = d.get("reason") or d.get("description") or ""
    return f"{what}: {verb}" + (f" ({extra})" if extra else "")


def timeline_rows(
    entries: list[TimelineEntry], communications: Mapping[int, Communication]
) -> list[dict[str, Any]]:
    """Newest first, as a person reading a case wants it."""
    rows = []
    for entry in entries:
        d = entry.detail
        communication = communications.get(d.get("communication"))  # type: ignore[arg-type]
        if entry.kind == "case":
            describe = CASE_TEXT.get(entry.action)
            text = describe(d) if describe else _humanised(entry.action)
        elif entry.kind == "note":
            text = f"Note: {d.get('body', '')}"
        elif entry.kind == "milestone":
            timing = "on time" if d.get("on_time") else "late"
            text = f"{d.get('label')} reached ({timing})"
            if communication is not None:
                text += f"; letter {communication.template.name} requested"
        else:
            text = _communication_text(entry, communication)
        rows.append(
            {
                "at": entry.at,
                "actor": entry.actor or "system",
                "kind": entry.kind,
                "text": text,
                "communication": communication if entry.kind == "milestone" else None,
            }
        )
    rows.reverse()
    return rows
