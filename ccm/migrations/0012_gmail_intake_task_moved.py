"""The mailbox's periodic intake task moved from cases.requests.tasks to cases.inbox.tasks (the
requests no longer import the inbox that creates them). Queued and scheduled rows that name it
are rewritten with migration 0011's `rewrite`, so a run queued before the upgrade still runs."""

import importlib

from django.db import migrations

rewrite = importlib.import_module("ccm.migrations.0011_task_paths_moved").rewrite

OLD = "cases.requests.tasks.gmail_intake"
NEW = "cases.inbox.tasks.gmail_intake"


def forwards(apps, schema_editor):
    rewrite(apps, schema_editor, mapping=lambda path: NEW if path == OLD else path)


def backwards(apps, schema_editor):
    rewrite(apps, schema_editor, mapping=lambda path: OLD if path == NEW else path)


class Migration(migrations.Migration):
    dependencies = [("ccm", "0011_task_paths_moved")]

    operations = [migrations.RunPython(forwards, backwards)]
