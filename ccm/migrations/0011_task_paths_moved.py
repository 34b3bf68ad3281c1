"""Queued and scheduled django-q2 tasks name their function by dotted path; the modules that hold
the tasks moved into capability packages (notifications/pipeline, channels, webhooks;
cases/requests, inbox, web). This rewrites the paths stored in queued rows (OrmQ, whose payload
is a signed pickle) and in schedules, so a task queued before the upgrade runs after it.

MOVED_MODULES is the one old → new module mapping of that move.
"""

from django.db import migrations

MOVED_MODULES = {
    "notifications.assets": "notifications.customers.assets",
    "notifications.devices": "notifications.customers.devices",
    "notifications.device_api": "notifications.customers.device_api",
    "notifications.bulk": "notifications.pipeline.bulk",
    "notifications.services": "notifications.pipeline.services",
    "notifications.recovery": "notifications.pipeline.recovery",
    "notifications.selection": "notifications.pipeline.selection",
    "notifications.fallback": "notifications.pipeline.fallback",
    "notifications.followups": "notifications.pipeline.followups",
    "notifications.throttle": "notifications.pipeline.throttle",
    "notifications.transitions": "notifications.pipeline.transitions",
    "notifications.history": "notifications.pipeline.history",
    "notifications.tasks": "notifications.pipeline.tasks",
    "notifications.review": "notifications.pipeline.review",
    "notifications.gmail": "notifications.channels.gmail",
    "notifications.sms": "notifications.channels.sms_feedback",
    "notifications.postmark_batch": "notifications.channels.postmark_batch",
    "notifications.printing": "notifications.channels.printing",
    "notifications.printing_admin": "notifications.channels.printing_admin",
    "notifications.printing_api": "notifications.channels.printing_api",
    "notifications.printstream": "notifications.channels.printstream",
    "notifications.portal": "notifications.channels.portal",
    "notifications.portal_urls": "notifications.channels.portal_urls",
    "notifications.unsubscribe": "notifications.channels.unsubscribe",
    "notifications.tracking": "notifications.channels.tracking",
    "notifications.internal": "notifications.channels.internal",
    "notifications.mailauth": "notifications.channels.mailauth",
    "notifications.notices": "notifications.channels.notices",
    "notifications.webhooks": "notifications.webhooks.services",
    "notifications.webhook_send": "notifications.webhooks.send",
    "notifications.webhooks_admin": "notifications.webhooks.admin",
    "notifications.webhooks_api": "notifications.webhooks.api",
    "notifications.hooks_urls": "notifications.channels.hooks_urls",
    "cases.reprints": "cases.requests.reprints",
    "cases.correspondence": "cases.requests.correspondence",
    "cases.request_models": "cases.requests.models",
    "cases.request_admin": "cases.requests.admin",
    "cases.request_api": "cases.requests.api",
    "cases.request_selectors": "cases.requests.selectors",
    "cases.request_tasks": "cases.requests.tasks",
    "cases.request_urls": "cases.requests.urls",
    "cases.request_views": "cases.requests.views",
    "cases.approval_mail": "cases.requests.approval_mail",
    "cases.forms": "cases.requests.forms",
    "cases.intake": "cases.inbox.intake",
    "cases.web": "cases.web.views",
    "cases.web_urls": "cases.web.urls",
    "cases.web_exceptions": "cases.web.exceptions",
    "cases.web_open": "cases.web.open",
    "cases.web_forms": "cases.web.forms",
    "cases.web_data_form": "cases.requests.data_form",
    "cases.web_timeline": "cases.web.timeline",
    "cases.queues": "cases.web.queues",
    "cases.customer_views": "cases.web.customers",
    "cases.customer_urls": "cases.web.customer_urls",
    "cases.customer_selectors": "cases.web.customer_selectors",
    "notifications.assets.admin": "notifications.customers.assets.admin",
    "notifications.assets.api": "notifications.customers.assets.api",
    "notifications.assets.models": "notifications.customers.assets.models",
    "notifications.assets.selectors": "notifications.customers.assets.selectors",
    "notifications.assets.services": "notifications.customers.assets.services",
}


def moved_path(path):
    """`path` (module.function) under the module's new name; any other value unchanged."""
    if not isinstance(path, str) or "." not in path:
        return path
    module, name = path.rsplit(".", 1)
    new = MOVED_MODULES.get(module)
    return f"{new}.{name}" if new else path


def rewrite(apps, schema_editor, mapping=moved_path):
    from django.core.signing import BadSignature
    from django_q.signing import SignedPackage

    OrmQ = apps.get_model("django_q", "OrmQ")
    Schedule = apps.get_model("django_q", "Schedule")
    for row in OrmQ.objects.all().iterator():
        try:
            task = SignedPackage.loads(row.payload)
        except BadSignature:
            continue  # not ours to read (another SECRET_KEY): left as it is
        changed = {k: mapping(task.get(k)) for k in ("func", "hook") if task.get(k)}
        if any(task.get(k) != v for k, v in changed.items()):
            task.update(changed)
            OrmQ.objects.filter(pk=row.pk).update(payload=SignedPackage.dumps(task))
    for schedule in Schedule.objects.all().iterator():
        func, hook = mapping(schedule.func), mapping(schedule.hook)
        if (func, hook) != (schedule.func, schedule.hook):
            Schedule.objects.filter(pk=schedule.pk).update(func=func, hook=hook)


def rewrite_back(apps, schema_editor):
    back = {new: old for old, new in MOVED_MODULES.items()}

    def old_path(path):
        if not isinstance(path, str) or "." not in path:
            return path
        module, name = path.rsplit(".", 1)
        return f"{back[module]}.{name}" if module in back else path

    rewrite(apps, schema_editor, mapping=old_path)


class Migration(migrations.Migration):
    dependencies = [
        ("ccm", "0010_noticesettings_notice"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(rewrite, rewrite_back)]
