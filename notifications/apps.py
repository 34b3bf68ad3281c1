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
        from notifications import services, tasks, tracking, webhook_send, webhooks
        from notifications.campaigns import services as campaign_services
        from notifications.models import Communication

        services.register_approvable()
        campaign_services.register_approvable()
        register_schedule(
            "notifications.campaigns_sweep", "notifications.campaigns.tasks.campaigns_sweep", 1
        )
        tasks.register_sweeps()
        webhook_send.register_sweeps()
        post_transition.connect(
            webhooks.communication_transitioned,
            sender=Communication,
            dispatch_uid="notifications.webhooks.communication_transitioned",
        )
        anymail_tracking.connect(tracking.tracking_received, dispatch_uid=tracking.DISPATCH_UID)
        register_sweep(tracking.DELIVERY_EVENT_SWEEP)
        demo.register_seeder(notifications_demo.seed_customers_and_communications)
        communications = HomeLink(
            "Communications",
            "admin:notifications_communication_changelist",
            "Every message with its status, decision trace, deliveries and timeline",
        )
        customers = HomeLink(
            "Customers", "admin:notifications_customer_changelist", "Contacts and consent history"
        )
        for role in (Role.OPERATIONS, Role.SERVICE_AGENT, Role.COMPLIANCE_REVIEWER):
            register_home_link(role, communications)
            register_home_link(role, customers)
        campaigns = HomeLink(
            "Campaigns",
            "campaign-list",
            "Mandatory notices to segments: audience, sign-off, progress",
        )
        for role in (Role.OPERATIONS, Role.COMPLIANCE_REVIEWER, Role.TEMPLATE_AUTHOR):
            register_home_link(role, campaigns)
        register_home_link(
            Role.OPERATIONS,
            HomeLink(
                "Print batches",
                "admin:notifications_printbatch_changelist",
                "Close, hand over and follow print runs; record returned mail",
            ),
        )
