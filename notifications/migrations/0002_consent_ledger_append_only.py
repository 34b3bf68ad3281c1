from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION ccm_consent_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the consent ledger is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER notifications_consentrecord_no_update_delete
    BEFORE UPDATE OR DELETE ON notifications_consentrecord
    FOR EACH ROW EXECUTE FUNCTION ccm_consent_append_only();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS notifications_consentrecord_no_update_delete
    ON notifications_consentrecord;
DROP FUNCTION IF EXISTS ccm_consent_append_only();
"""


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD, params=None)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARD, params=None)


class Migration(migrations.Migration):
    dependencies = [("notifications", "0001_initial")]

    operations = [migrations.RunPython(forward, backward)]
