from __future__ import annotations

import uuid

from django.db import migrations, models


def fill_public_ids(apps, schema_editor):
    # One fresh UUID per existing row (a default on AddField would give all rows the same one).
    Model = apps.get_model("documents", "Document")
    for pk in Model.objects.filter(public_id__isnull=True).values_list("pk", flat=True).iterator():
        Model.objects.filter(pk=pk).update(public_id=uuid.uuid4())


class Migration(migrations.Migration):
    dependencies = [("documents", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="document",
            name="public_id",
            field=models.UUIDField(editable=False, null=True),
        ),
        migrations.RunPython(fill_public_ids, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="document",
            name="public_id",
            field=models.UUIDField(default=uuid.uuid4, editable=False, unique=True),
        ),
    ]
