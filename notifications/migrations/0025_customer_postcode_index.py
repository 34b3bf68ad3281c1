from django.db import migrations

# Segments filter on a postcode prefix as UPPER(attributes ->> 'postcode') LIKE 'N2%' (Django's
# istartswith on the JSON key). An index on that very expression, with text_pattern_ops, serves
# the prefix as a range, and its statistics give the planner a real estimate of how many
# customers a prefix selects (the GIN index answers containment only). SQLite has neither.
CREATE = (
    "CREATE INDEX IF NOT EXISTS customer_postcode_upper ON notifications_customer "
    "(UPPER(attributes ->> 'postcode') text_pattern_ops)"
)


def _create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def _drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS customer_postcode_upper")


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0024_reading_meter_index"),
    ]

    operations = [migrations.RunPython(_create, _drop)]
