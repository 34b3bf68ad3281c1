from __future__ import annotations

from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from anymail.signals import tracking as anymail_tracking

        from ccm.tasks import register_sweep
        from notifications import services, tasks, tracking

        services.register_approvable()
        tasks.register_sweeps()
        anymail_tracking.connect(tracking.tracking_received, dispatch_uid=tracking.DISPATCH_UID)
        register_sweep(tracking.DELIVERY_EVENT_SWEEP)
