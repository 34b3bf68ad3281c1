from django.db import migrations

from ccm.dbutils import no_truncate


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0008_communication_address_override"),
        ("ccm", "0004_audit_checkpoints"),
    ]

    operations = [no_truncate("notifications_consentrecord")]
