from django.db import migrations

from ccm.dbutils import append_only


class Migration(migrations.Migration):
    dependencies = [("ccm", "0002_roles")]

    operations = [append_only("ccm_auditevent")]
