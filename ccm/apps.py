from __future__ import annotations

from django.apps import AppConfig, apps
from django.db.models.signals import post_delete, post_migrate, post_save


def _after_migrate(sender, **kwargs) -> None:
    # post_migrate fires once per app; act once, after the last app's permissions exist.
    with_models = [a for a in apps.get_app_configs() if a.models_module is not None]
    if sender.name != with_models[-1].name:
        return
    from ccm.roles import roles_sync
    from ccm.tasks import schedules_sync

    roles_sync()
    schedules_sync()


class CcmConfig(AppConfig):
    default = True
    name = "ccm"
    verbose_name = "CCM kernel"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings

        from ccm import lookups
        from ccm.api import schema  # noqa: F401 - registers the OpenAPI extension
        from ccm.tasks import register_schedule

        lookups.register()
        post_migrate.connect(_after_migrate, dispatch_uid="ccm.after_migrate")

        from django.contrib.auth import get_user_model

        from ccm.api.auth import api_keys_changed
        from ccm.models import ApiKey

        # Keys kept by api_key_lookup are read again after any change to a key or a user.
        for model in (ApiKey, get_user_model()):
            post_save.connect(api_keys_changed, sender=model, dispatch_uid=f"ccm.keys.{model}")
            post_delete.connect(api_keys_changed, sender=model, dispatch_uid=f"ccm.keyd.{model}")
        register_schedule(
            "ccm.audit_checkpoint",
            "ccm.audit_checkpoints.audit_checkpoint_task",
            settings.AUDIT_CHECKPOINT_MINUTES,
        )

        from django_q.signals import post_execute_in_worker, pre_execute

        from ccm.tasks import host_task_record, task_context_enter, task_context_exit

        pre_execute.connect(task_context_enter, dispatch_uid="ccm.task_context_enter")
        post_execute_in_worker.connect(task_context_exit, dispatch_uid="ccm.task_context_exit")
        post_execute_in_worker.connect(host_task_record, dispatch_uid="ccm.host_task_record")
