from django.db import migrations

from ccm.dbutils import append_only


class Migration(migrations.Migration):
    dependencies = [("notifications", "0001_initial"), ("ccm", "0003_audit_append_only")]

    operations = [append_only("notifications_consentrecord")]
