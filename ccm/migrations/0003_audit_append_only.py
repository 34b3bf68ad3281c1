from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION ccm_auditevent_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'ccm_auditevent is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER ccm_auditevent_no_update_delete
    BEFORE UPDATE OR DELETE ON ccm_auditevent
    FOR EACH ROW EXECUTE FUNCTION ccm_auditevent_append_only();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS ccm_auditevent_no_update_delete ON ccm_auditevent;
DROP FUNCTION IF EXISTS ccm_auditevent_append_only();
"""


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD, params=None)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARD, params=None)


class Migration(migrations.Migration):
    dependencies = [("ccm", "0002_roles")]

    operations = [migrations.RunPython(forward, backward)]
