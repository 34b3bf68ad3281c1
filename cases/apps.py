from __future__ import annotations

from django.apps import AppConfig


class CasesConfig(AppConfig):
    name = "cases"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from cases import address_corrections, receivers, tasks
        from cases import demo as cases_demo
        from cases.inbox import tasks as inbox_tasks
        from cases.incidents import demo as incidents_demo
        from cases.incidents import selectors as incident_selectors
        from cases.incidents import tasks as incident_tasks
        from cases.requests import tasks as request_tasks
        from cases.web import customers as customer_views
        from cases.web import queues
        from ccm import demo
        from ccm.notices import WorkCount, register_work_count
        from ccm.roles import Role
        from ccm.selectors import HomeLink, register_home_link
        from notifications.progress import register_progress_source
        from notifications.reporting import selectors as reporting_selectors

        receivers.connect()
        for item in (
            WorkCount(
                "cases", "My cases", "cases-queue", "cases.change_case", queues.my_open_cases
            ),
            WorkCount(
                "exceptions",
                "Exceptions",
                "cases-exceptions",
                "cases.handle_exception",
                queues.open_exception_cases,
            ),
        ):
            register_work_count(item)
        register_progress_source("incident_update", incident_selectors.incident_updates_progress)
        reporting_selectors.register_dashboard_panel(
            "cases.exceptions_by_age", queues.exceptions_by_age_panel
        )
        tasks.register()
        incident_tasks.register()
        request_tasks.register()
        inbox_tasks.register()
        demo.register_seeder(cases_demo.seed_complaint)
        demo.register_seeder(incidents_demo.seed_network)
        address_corrections.register_approvable(proof=customer_views.address_correction_proof)
        customers = HomeLink(
            "Customers",
            "customer-list",
            "Find a customer: contact points and their state, preferences, the consent ledger, "
            "communications and cases; open a case, correct an address",
        )
        for role in (Role.SERVICE_AGENT, Role.OPERATIONS, Role.COMPLIANCE_REVIEWER):
            register_home_link(role, customers)
        for role in (Role.SERVICE_AGENT, Role.OPERATIONS):
            register_home_link(
                role,
                HomeLink(
                    "Open a case",
                    "cases-new",
                    "A complaint, dispute or letter a customer brought to you, with its "
                    "acknowledgement letter",
                ),
            )
        # The agent and operations screens (cases/web/views.py), with what waits for each.
        for role in (Role.SERVICE_AGENT, Role.OPERATIONS):
            register_home_link(
                role,
                HomeLink(
                    "My cases",
                    "cases-queue",
                    "Your open cases with their deadlines; team queues and unassigned cases",
                    queues.my_open_cases_count,
                ),
            )
        register_home_link(
            Role.OPERATIONS,
            HomeLink(
                "Exceptions",
                "cases-exceptions",
                "Failed compositions, undeliverable and returned mail to regenerate or resend",
                queues.open_exceptions_count,
            ),
        )
        register_home_link(
            Role.OPERATIONS,
            HomeLink(
                "Incidents",
                "incident-list",
                "Events grouped into incidents, their notices and delivery; acknowledge, hold, "
                "update, resolve",
            ),
        )
        register_home_link(
            Role.COMPLIANCE_REVIEWER,
            HomeLink("Cases", "admin:cases_case_changelist", "Cases and their SLA clocks"),
        )
