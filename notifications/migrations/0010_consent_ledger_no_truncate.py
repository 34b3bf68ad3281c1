from django.db import migrations

from ccm.dbutils import no_truncate


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0009_communication_public_id"),
        ("ccm", "0005_audit_checkpoints"),
    ]

    operations = [no_truncate("notifications_consentrecord")]
