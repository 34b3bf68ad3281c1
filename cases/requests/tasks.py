"""Tasks of the reprint and correspondence work (ids in, re-fetch, safe to run twice), and their
registration: approvables, sweeps and the agents' home links (the mailbox's periodic intake is
`cases.inbox.tasks`).
`register()` runs in CasesConfig.ready()."""

from __future__ import annotations

from cases.requests import approval_mail, reprints


def reprint_fulfil(request_id: int) -> str:
    return reprints.reprint_fulfil_run(request_id)


def approval_mail_send(mail_id: int) -> bool:
    return approval_mail.approval_mail_send_run(mail_id)


def register() -> None:
    from cases.requests import correspondence, views
    from ccm.roles import Role
    from ccm.selectors import HomeLink, register_home_link
    from ccm.tasks import register_sweep

    reprints.register_approvable(proof=views.reprint_proof)
    correspondence.register_approvable(proof=views.correspondence_proof)
    register_sweep(reprints.UNFULFILLED_SWEEP)
    register_sweep(approval_mail.UNSENT_SWEEP)
    for link in (
        HomeLink(
            "Request a reprint", "agent-reprint-new", "A copy of a document, stamped DUPLICATE"
        ),
        HomeLink(
            "Write a letter",
            "agent-correspondence-new",
            "Ad hoc correspondence from a published template, released by a reviewer",
        ),
        HomeLink("My requests", "agent-requests", "Your reprints and letters and where they are"),
    ):
        register_home_link(Role.SERVICE_AGENT, link)
