from __future__ import annotations

from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from anymail.signals import tracking as anymail_tracking
        from django_fsm.signals import post_transition

        from ccm import demo
        from ccm.roles import Role
        from ccm.selectors import HomeLink, register_home_link
        from ccm.tasks import register_schedule, register_sweep
        from notifications import demo as notifications_demo
        from notifications.campaigns import selectors as campaign_selectors
        from notifications.campaigns import services as campaign_services
        from notifications.channels import notices, printing, tracking
        from notifications.channels.pipeline_calls import PipelineCalls, pipeline_calls_register
        from notifications.jobs import selectors as job_selectors
        from notifications.jobs import tasks as job_tasks
        from notifications.models import Communication
        from notifications.pipeline import services, tasks, transitions
        from notifications.progress import register_progress_source
        from notifications.reporting import demo as reporting_demo
        from notifications.reporting import metrics as reporting_metrics
        from notifications.reporting import tasks as reporting_tasks
        from notifications.statements import demo as statements_demo
        from notifications.statements import rule_views as statement_rule_views
        from notifications.statements import selectors as statement_selectors
        from notifications.statements import services as statement_services
        from notifications.webhooks import send as webhook_send
        from notifications.webhooks import services as webhooks

        # Channels are below the pipeline (it sends through them); the two of its services they
        # call are handed over here (notifications/channels/pipeline_calls.py).
        pipeline_calls_register(
            PipelineCalls(
                communication_request=services.communication_request,
                delivery_move=transitions.delivery_move,
            )
        )
        register_progress_source("send_job", job_selectors.send_jobs_at_work)
        register_progress_source("campaign", campaign_selectors.campaigns_progress)
        register_progress_source("print_batch_close", printing.print_batches_progress)
        register_progress_source("statement_run", statement_selectors.statement_runs_at_work)
        services.register_approvable()
        notices.register()
        job_tasks.register_schedules()
        reporting_tasks.register_schedules()
        reporting_metrics.register()
        campaign_services.register_approvable()
        statement_services.register_approvable(proof=statement_rule_views.rule_set_proof)
        register_schedule(
            "notifications.campaigns_sweep", "notifications.campaigns.tasks.campaigns_sweep", 1
        )
        tasks.register_tasks()
        register_schedule(
            "notifications.statement_runs_sweep",
            "notifications.statements.tasks.statement_runs_sweep",
            1,
        )
        tasks.register_sweeps()
        webhook_send.register_sweeps()
        post_transition.connect(
            webhooks.communication_transitioned,
            sender=Communication,
            dispatch_uid="notifications.webhooks.services.communication_transitioned",
        )
        anymail_tracking.connect(tracking.tracking_received, dispatch_uid=tracking.DISPATCH_UID)
        register_sweep(tracking.DELIVERY_EVENT_SWEEP)
        demo.register_seeder(notifications_demo.seed_customers_and_communications)
        demo.register_seeder(reporting_demo.seed_reports)
        demo.register_seeder(statements_demo.seed_statements)
        communications = HomeLink(
            "Communications",
            "admin:notifications_communication_changelist",
            "Every message with its status, decision trace, deliveries and timeline",
        )
        # The customers link is the customer page's (cases/web/customers.py, in cases/apps.py).
        for role in (Role.OPERATIONS, Role.SERVICE_AGENT, Role.COMPLIANCE_REVIEWER):
            register_home_link(role, communications)
        campaigns = HomeLink(
            "Campaigns",
            "campaign-list",
            "Mandatory notices to segments: audience, sign-off, progress",
        )
        for role in (Role.OPERATIONS, Role.COMPLIANCE_REVIEWER, Role.TEMPLATE_AUTHOR):
            register_home_link(role, campaigns)
        for role in (Role.OPERATIONS, Role.COMPLIANCE_REVIEWER):
            register_home_link(
                role,
                HomeLink(
                    "Statement runs",
                    "statement-runs",
                    "Bill runs from meter readings: progress, held customers, totals by tariff",
                ),
            )
        rules = HomeLink(
            "Recommendation rules",
            "rule-sets",
            "The rules that choose a statement's recommendations: versions, drafts, sign-off",
        )
        for role in (Role.TEMPLATE_AUTHOR, Role.COMPLIANCE_REVIEWER, Role.OPERATIONS):
            register_home_link(role, rules)
        register_home_link(
            Role.OPERATIONS,
            HomeLink(
                "Operations dashboard",
                "reporting-dashboard",
                "Today and the last 30 days: volumes, delivery, failures, time to send, queues, "
                "task cluster heartbeats, reconciliation",
            ),
            first=True,
        )
        for role in (Role.OPERATIONS, Role.COMPLIANCE_REVIEWER):
            register_home_link(
                role,
                HomeLink(
                    "Production reports",
                    "reporting-reports",
                    "Scheduled reports, run now, history of runs with their archived files",
                ),
            )
        register_home_link(
            Role.COMPLIANCE_REVIEWER,
            HomeLink(
                "Compliance overview",
                "reporting-compliance",
                "Reconciliation of every requested communication, complaint and bounce rates",
            ),
        )
        register_home_link(
            Role.OPERATIONS,
            HomeLink(
                "Print batches",
                "admin:notifications_printbatch_changelist",
                "Close, hand over and follow print runs; record returned mail",
            ),
        )
        register_home_link(
            Role.OPERATIONS,
            HomeLink(
                "Send a file",
                "jobs-new",
                "Send a published template to the customers of a CSV file; bad rows shown first",
            ),
        )
        for role in (Role.OPERATIONS, Role.COMPLIANCE_REVIEWER):
            register_home_link(
                role,
                HomeLink(
                    "Send jobs", "jobs-list", "Batches and files sent: progress, refused rows"
                ),
            )
