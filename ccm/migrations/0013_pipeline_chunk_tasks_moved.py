"""The pipeline's chunk tasks moved out of notifications.pipeline.bulk, which was split into one
module per stage (intake, compose, gate, dispatch). Queued and scheduled rows that name them are
rewritten with migration 0011's `rewrite`, so a chunk queued before the upgrade still runs."""

import importlib

from django.db import migrations

rewrite = importlib.import_module("ccm.migrations.0011_task_paths_moved").rewrite

MOVED = {
    "notifications.pipeline.bulk.compose_chunk": "notifications.pipeline.compose.compose_chunk",
    "notifications.pipeline.bulk.compose_drain": "notifications.pipeline.compose.compose_drain",
    "notifications.pipeline.bulk.gate_chunk": "notifications.pipeline.gate.gate_chunk",
    "notifications.pipeline.bulk.dispatch_chunk": "notifications.pipeline.dispatch.dispatch_chunk",
    "notifications.pipeline.bulk.deliveries_reconcile": (
        "notifications.pipeline.dispatch.deliveries_reconcile"
    ),
}


def forwards(apps, schema_editor):
    rewrite(apps, schema_editor, mapping=lambda path: MOVED.get(path, path))


def backwards(apps, schema_editor):
    back = {new: old for old, new in MOVED.items()}
    rewrite(apps, schema_editor, mapping=lambda path: back.get(path, path))


class Migration(migrations.Migration):
    dependencies = [("ccm", "0012_gmail_intake_task_moved")]

    operations = [migrations.RunPython(forwards, backwards)]
