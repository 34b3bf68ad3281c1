"""Reads for the kernel's own screens."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.db.models import Count, QuerySet
from django.urls import NoReverseMatch, reverse

from ccm.models import Approval, ApprovalState, AuditEvent
from ccm.roles import ROLE_DUTIES, Role
from ccm.search import as_int, matching_pks


@dataclass(frozen=True)
class HomeLink:
    title: str
    url_name: str
    description: str
    count: Callable[[object], int] | None = None
    url_args: tuple = ()
    # Who may open it. Empty: for an admin list, view (or change) on its model; else anyone
    # holding the role. A home page never links to a page that answers 403.
    permission: str = ""


# role → links; apps add theirs with `register_home_link` in AppConfig.ready().
_links: dict[str, list[HomeLink]] = {role: [] for role in Role.values}


def audit_search(term: str) -> QuerySet:
    """The ids of the audit events `term` names, each lookup through an index: the start of the
    action or of the hash; the subject's id, the request id or the actor's label in full; the
    event's id."""
    parts = [
        AuditEvent.objects.filter(action__startswith=term).values("pk"),
        AuditEvent.objects.filter(hash__startswith=term.lower()).values("pk"),
        AuditEvent.objects.filter(subject_id=term).values("pk"),
        AuditEvent.objects.filter(request_id=term).values("pk"),
        AuditEvent.objects.filter(actor_label=term).values("pk"),
    ]
    if (number := as_int(term)) is not None:
        parts.append(AuditEvent.objects.filter(pk=number).values("pk"))
    return matching_pks(parts)


def register_home_link(role: str, link: HomeLink, *, first: bool = False) -> None:
    """Add a link to a role's section of the home page (`first`: at its top)."""
    if link not in _links[role]:
        _links[role].insert(0 if first else len(_links[role]), link)


def pending_approvals_count(user) -> int:
    return (
        Approval.objects.filter(state=ApprovalState.PENDING)
        .exclude(requested_by=user)
        .exclude(author=user)
        .count()
    )


def approval_queue(*, kind: str = "") -> QuerySet[Approval]:
    """Pending approvals across every approvable kind, oldest first; `kind` is a registered
    model's `app_label.model` (see `ccm.approvals.kinds`)."""
    qs = Approval.objects.filter(state=ApprovalState.PENDING)
    if kind:
        app_label, _, model = kind.partition(".")
        qs = qs.filter(subject_type__app_label=app_label, subject_type__model=model)
    return qs.select_related("subject_type", "requested_by", "author").order_by(
        "requested_at", "id"
    )


def approval_queue_counts() -> dict[str, int]:
    """Pending approvals per kind."""
    rows = (
        Approval.objects.filter(state=ApprovalState.PENDING)
        .values("subject_type__app_label", "subject_type__model")
        .annotate(n=Count("id"))
    )
    return {f"{r['subject_type__app_label']}.{r['subject_type__model']}": r["n"] for r in rows}


register_home_link(
    Role.COMPLIANCE_REVIEWER,
    HomeLink(
        "Sign-off queue",
        "review-queue",
        "Approvals waiting for a reviewer other than their requester or author",
        pending_approvals_count,
    ),
)
register_home_link(
    Role.OPERATIONS,
    HomeLink("Audit log", "admin:ccm_auditevent_changelist", "Every recorded action, hash-chained"),
)
register_home_link(
    Role.OPERATIONS,
    HomeLink("Task queue", "admin:django_q_failure_changelist", "Background tasks that failed"),
)
register_home_link(
    Role.INTEGRATOR,
    HomeLink("API documentation", "api-docs", "OpenAPI schema and interactive docs"),
)


def _admin_list_permissions(url_name: str) -> tuple[str, ...]:
    from django.contrib import admin  # the registry is complete once apps are ready

    for model in admin.site._registry:
        opts = model._meta
        if url_name == f"admin:{opts.app_label}_{opts.model_name}_changelist":
            return (
                f"{opts.app_label}.view_{opts.model_name}",
                f"{opts.app_label}.change_{opts.model_name}",
            )
    return ()


def home_link_allowed(user, link: HomeLink) -> bool:
    """Whether `user` may open the page `link` leads to."""
    if link.permission:
        return user.has_perm(link.permission)
    needed = _admin_list_permissions(link.url_name)
    return not needed or any(user.has_perm(perm) for perm in needed)


def home_sections(user) -> list[dict]:
    """One section per role the user holds (every role for a superuser)."""
    held = (
        set(Role.values) if user.is_superuser else set(user.groups.values_list("name", flat=True))
    )
    sections = []
    for role in Role:
        if role.value not in held:
            continue
        links = []
        for link in _links[role.value]:
            if not home_link_allowed(user, link):
                continue
            try:
                url = reverse(link.url_name, args=link.url_args)
            except NoReverseMatch:
                continue
            links.append(
                {
                    "title": link.title,
                    "url": url,
                    "description": link.description,
                    "count": link.count(user) if link.count else None,
                }
            )
        sections.append(
            {"role": role.value, "label": role.label, "duties": ROLE_DUTIES[role], "links": links}
        )
    return sections
