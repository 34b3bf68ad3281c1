"""The database cache's table (CACHE_URL=dbcache://ccm_cache, the default): rate limits and
throttles shared by every web process. A no-op when CACHE_URL names Redis or memory."""

from django.core.management import call_command
from django.db import migrations


def create_cache_table(apps, schema_editor):
    call_command("createcachetable", database=schema_editor.connection.alias, verbosity=0)


class Migration(migrations.Migration):
    dependencies = [("ccm", "0005_audit_checkpoints")]

    operations = [migrations.RunPython(create_cache_table, migrations.RunPython.noop)]
