from __future__ import annotations

from django.apps import AppConfig


class CasesConfig(AppConfig):
    name = "cases"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from cases import demo as cases_demo
        from cases import receivers, request_tasks, tasks
        from ccm import demo
        from ccm.roles import Role
        from ccm.selectors import HomeLink, register_home_link

        receivers.connect()
        tasks.register()
        request_tasks.register()
        demo.register_seeder(cases_demo.seed_complaint)
        register_home_link(
            Role.SERVICE_AGENT,
            HomeLink(
                "Cases",
                "admin:cases_case_changelist",
                "Complaints, disputes and correspondence with their deadlines",
            ),
        )
        register_home_link(
            Role.OPERATIONS,
            HomeLink(
                "Exceptions",
                "admin:cases_case_changelist",
                "Failed compositions, undeliverable and returned mail to regenerate or resend",
            ),
        )
        register_home_link(
            Role.COMPLIANCE_REVIEWER,
            HomeLink("Cases", "admin:cases_case_changelist", "Cases and their SLA clocks"),
        )
