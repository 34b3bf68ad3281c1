"""What every page's navigation shows: what waits for the signed-in person."""

from __future__ import annotations

from django.utils.functional import SimpleLazyObject

from ccm import notices


def _summary(user) -> dict:
    waiting, unread = notices.work_summary(user)
    return {
        "counts": {w["key"]: w["count"] for w in waiting},
        "unread": unread,
        "cap": notices.WORK_COUNT_CAP,
    }


def work(request) -> dict:
    """`work.counts.<key>` and `work.unread`, counted only if a template reads them (the
    admin and the API never do), every kind of work in one statement (notices.work_summary)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"work": SimpleLazyObject(lambda: _summary(user))}
