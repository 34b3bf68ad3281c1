"""The five roles, as Django groups, and what each may do.

The permission lists name permissions of every app, including ones whose models arrive in later
migrations: `roles_sync` grants what exists and runs again after every `migrate`.
"""

from __future__ import annotations

from django.db.models import TextChoices


class Role(TextChoices):
    COMPLIANCE_REVIEWER = "compliance_reviewer", "Compliance reviewer"
    TEMPLATE_AUTHOR = "template_author", "Template author"
    SERVICE_AGENT = "service_agent", "Service agent"
    OPERATIONS = "operations", "Operations"
    INTEGRATOR = "integrator", "Integrator"


# What a case screen shows beside the case, and what working it adds (notes, files).
CASE_RECORDS_VIEW = [
    "cases.view_milestone",
    "cases.view_casenote",
    "cases.view_caseattachment",
    "cases.view_casecommunication",
    "cases.view_casedocument",
]
CASE_RECORDS_ADD = ["cases.add_casenote", "cases.add_caseattachment"]

# The customer page (cases/web/customers.py): contact points with their state, preferences and
# the consent ledger, for the people who talk to customers and those who check them.
CUSTOMER_RECORDS_VIEW = [
    "notifications.view_customer",
    "notifications.view_contactpoint",
    "notifications.view_preference",
    "notifications.view_consentrecord",
    "notifications.view_suppression",
    "cases.view_addresscorrection",
]

CAMPAIGNS_VIEW = [
    "notifications.view_campaign",
    "notifications.view_segment",
    "notifications.view_campaignrecipient",
]

ROLE_PERMISSIONS: dict[str, list[str]] = {
    Role.COMPLIANCE_REVIEWER: [
        "ccm.decide_approval",
        "ccm.view_approval",
        "ccm.view_auditevent",
        "ccm.verify_audit_chain",
        "documents.view_template",
        "documents.view_templateversion",
        "documents.publish_templateversion",
        "documents.view_document",
        "documents.view_regenerationcheck",
        "notifications.view_communication",
        *CUSTOMER_RECORDS_VIEW,
        "notifications.view_sendjob",
        "cases.view_case",
        *CASE_RECORDS_VIEW,
        "cases.view_reprintrequest",
        "cases.view_correspondencerequest",
        # The compliance page: reconciliation, complaint rates, archived reports.
        "notifications.view_dailystat",
        "notifications.view_reportdefinition",
        "notifications.view_reportrun",
        *CAMPAIGNS_VIEW,
        "notifications.view_statementrun",
        "notifications.view_recommendationruleset",
    ],
    Role.TEMPLATE_AUTHOR: [
        "ccm.view_approval",
        "documents.add_template",
        "documents.change_template",
        "documents.view_template",
        "documents.add_templateversion",
        "documents.change_templateversion",
        "documents.view_templateversion",
        "documents.publish_templateversion",
        "documents.view_document",
        # Authors prepare campaigns (segment, data) and submit them for sign-off.
        *CAMPAIGNS_VIEW,
        "notifications.add_segment",
        "notifications.add_campaign",
        # Authors write the statements' recommendation rules and submit them for sign-off.
        "notifications.view_recommendationruleset",
        "notifications.add_recommendationruleset",
        "notifications.change_recommendationruleset",
    ],
    Role.SERVICE_AGENT: [
        "documents.view_template",
        "documents.view_document",
        *CUSTOMER_RECORDS_VIEW,
        "cases.add_addresscorrection",
        "notifications.view_communication",
        "cases.add_case",
        "cases.change_case",
        "cases.view_case",
        *CASE_RECORDS_VIEW,
        *CASE_RECORDS_ADD,
        "cases.add_reprintrequest",
        "cases.view_reprintrequest",
        "cases.add_correspondencerequest",
        "cases.view_correspondencerequest",
    ],
    Role.OPERATIONS: [
        "ccm.view_approval",
        "ccm.view_auditevent",
        "ccm.verify_audit_chain",
        "ccm.view_apikey",
        "documents.view_template",
        "documents.view_templateversion",
        "documents.view_document",
        "documents.view_regenerationcheck",
        *CUSTOMER_RECORDS_VIEW,
        "cases.add_addresscorrection",
        "notifications.view_communication",
        "notifications.change_communication",
        "notifications.view_delivery",
        "notifications.add_sendjob",
        "notifications.change_sendjob",
        "notifications.view_sendjob",
        "notifications.view_webhooksubscription",
        "notifications.view_webhookdelivery",
        "notifications.replay_webhookdelivery",
        "cases.add_case",
        "notifications.view_printbatch",
        "notifications.view_printitem",
        "notifications.close_printbatch",
        "notifications.hand_over_printbatch",
        "notifications.record_print_outcome",
        "cases.view_case",
        "cases.change_case",
        "cases.handle_exception",
        "cases.view_reprintrequest",
        "cases.view_correspondencerequest",
        "cases.view_processedinboxmessage",
        "cases.view_approvalmail",
        "cases.view_casealert",
        # The operations dashboard, reconciliation and production reports (run now).
        "notifications.view_dailystat",
        "notifications.view_reportdefinition",
        "notifications.add_reportdefinition",
        "notifications.change_reportdefinition",
        "notifications.view_reportrun",
        "notifications.add_reportrun",
        "ccm.view_clusterheartbeat",
        *CASE_RECORDS_VIEW,
        *CASE_RECORDS_ADD,
        # Operations schedule, pause, resume and cancel campaigns.
        *CAMPAIGNS_VIEW,
        "notifications.change_campaign",
        "notifications.view_statementrun",
        "notifications.change_statementrun",
        "notifications.view_recommendationruleset",
    ],
    Role.INTEGRATOR: [
        "documents.view_template",
        "documents.view_document",
        "notifications.add_customer",
        "notifications.change_customer",
        "notifications.view_customer",
        "notifications.add_communication",
        "notifications.view_communication",
        # The mail house's system, with the "print" scope: fetches batches, reports them
        # mailed and letters returned. Closing and handing over stay with operations.
        "notifications.view_printbatch",
        "notifications.view_printitem",
        "notifications.record_print_outcome",
        # BI tools with the "stats:read" / "reports:read" scopes read rollups and report runs.
        "notifications.view_dailystat",
        "notifications.view_reportrun",
    ],
}

# The API scopes a signed-in staff member's session carries, by role (a superuser: every scope;
# several roles: the union). An API key carries the scopes it was issued with instead. The
# README's role table lists the same (tests/ccm/test_roles.py compares them).
ROLE_SCOPES: dict[str, list[str]] = {
    Role.COMPLIANCE_REVIEWER: [
        "me:read",
        "templates:read",
        "documents:read",
        "customers:read",
        "communications:read",
        "cases:read",
        "campaigns:read",
        "statements:read",
    ],
    Role.TEMPLATE_AUTHOR: [
        "me:read",
        "templates:read",
        "documents:read",
        "campaigns:read",
        "campaigns:write",
    ],
    Role.SERVICE_AGENT: [
        "me:read",
        "templates:read",
        "documents:read",
        "customers:read",
        "communications:read",
        "cases:read",
        "cases:write",
    ],
    Role.OPERATIONS: [
        "me:read",
        "templates:read",
        "documents:read",
        "customers:read",
        "communications:read",
        "communications:write",
        "cases:read",
        "cases:write",
        "webhooks:read",
        "webhooks:write",
        "print",
        "stats:read",
        "reports:read",
        "campaigns:read",
        "campaigns:write",
        "statements:read",
        "statements:write",
    ],
    # Integrators call the API with a key, never with a session.
    Role.INTEGRATOR: [],
}

# Who may do what, in words; the README's table is generated from the same source.
ROLE_DUTIES: dict[str, str] = {
    Role.COMPLIANCE_REVIEWER: "Decides approvals (never their own), reads the audit log",
    Role.TEMPLATE_AUTHOR: (
        "Writes templates and versions, prepares campaigns, writes the statements' "
        "recommendation rules, submits them for sign-off"
    ),
    Role.SERVICE_AGENT: (
        "Opens and works cases, requests reprints and ad hoc correspondence, corrects addresses"
    ),
    Role.OPERATIONS: (
        "Handles exceptions, watches queues and reports, reads the audit log, runs print batches"
        " and campaigns"
    ),
    Role.INTEGRATOR: "Calls the API: customers, communications, templates (read)",
}


def roles_sync(apps=None) -> None:
    """Create the role groups and grant each the permissions that exist now."""
    from django.apps import apps as global_apps

    registry = apps or global_apps
    Group = registry.get_model("auth", "Group")
    Permission = registry.get_model("auth", "Permission")
    for role, perms in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        wanted = []
        for dotted in perms:
            app_label, codename = dotted.split(".", 1)
            perm = Permission.objects.filter(
                content_type__app_label=app_label, codename=codename
            ).first()
            if perm is not None:
                wanted.append(perm)
        group.permissions.set(wanted)
